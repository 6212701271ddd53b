"""Two-factor authentication: authenticator apps and recovery codes (service), routes (api), documents (schemas)."""
