"""Alembic environment: migrates the engine handed over by ``billfold.migrations.alembic_config``,
or, when run through the ``alembic`` command, the database at ``BILLFOLD_DATABASE_URL``."""

from __future__ import annotations

from alembic import context

import billfold.models  # noqa: F401  (registers every table)
from billfold.kit.db import create_engine
from billfold.kit.db.base import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    from billfold.config import get_settings

    engine = create_engine(get_settings().database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
