"""Organizations: members and roles (service), their routes (api) and documents (schemas)."""
