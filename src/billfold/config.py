"""Settings from the environment (prefix ``BILLFOLD_``) or a ``.env`` file in the working folder."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///billfold.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLFOLD_", env_file=".env", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the database. Unset: billfold.db in the working folder (SQLite).",
    )
    host: str = Field("127.0.0.1", description="Address `billfold serve` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `billfold serve` listens on.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
