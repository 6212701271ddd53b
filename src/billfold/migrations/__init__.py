"""Alembic migrations. ``alembic_config()`` points Alembic at them without an ini file."""

from __future__ import annotations

from alembic.config import Config
from sqlalchemy.engine import Engine


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration that migrates the database behind ``engine``."""
    config = Config()
    config.set_main_option("script_location", "billfold:migrations")
    config.attributes["engine"] = engine
    return config
