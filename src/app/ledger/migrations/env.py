from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import app.ledger.artifact_schema
import app.ledger.webhook_tables  # noqa: F401  (the webhook tables join the metadata)
from app.ledger.event_schema import job_events  # noqa: F401  (on the metadata)
from app.ledger.schema import metadata
from app.settings import get_settings


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            # Several replicas may start at once; only one migrates at a time.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7305112)")
            context.run_migrations()
    engine.dispose()


run_migrations_online()
