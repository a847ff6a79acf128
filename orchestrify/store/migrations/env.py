"""Alembic's environment for the store: runs on the connection the store hands it
(``config.attributes["connection"]``, see :func:`orchestrify.store.migrate.upgrade`),
or, for a developer making a revision with the alembic CLI, on ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from orchestrify.store import alert_tables  # noqa: F401  (its tables join Base.metadata)
from orchestrify.store.tables import Base

# Any 64-bit number: the advisory lock controllers starting together on one PostgreSQL
# database take, so that one of them migrates and the others then find the schema done.
MIGRATION_LOCK_ID = 0x6F72636865737472  # "orchestr"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters a table by copying it; batch mode lets later revisions do that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/to/orchestrify.db ...")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
