"""Schema migrations (Alembic), run by the store when it opens: the schema is brought
to the newest revision in ``orchestrify/store/migrations/versions``, on SQLite and on
PostgreSQL alike.

A store made before migrations existed (no ``alembic_version`` table) is recognised by
the first revision, which creates only the tables that are missing and adds the columns
an older build lacked, so every row stays.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from orchestrify.errors import StoreUnavailable

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)


def alembic_config() -> Config:
    """The Alembic configuration of the store's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision (nothing to do when
    it is there already), in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        before = current_revision(connection)
        head = head_revision()
        if before == head:
            return
        if before is not None and before not in _known_revisions():
            raise StoreUnavailable(
                f"the store's schema is at revision {before}, which this build of "
                f"orchestrify does not know (it knows up to {head}): a newer build made "
                "or upgraded it; run that build (or newer) on this store"
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.info(
        "store schema upgraded",
        extra={
            "from_revision": before or "(none: a new store, or one from before migrations)",
            "to_revision": head,
        },
    )
