"""Payment providers: one protocol, one adapter per provider (no database and no FastAPI in here)."""
