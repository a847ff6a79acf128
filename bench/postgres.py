"""A throwaway PostgreSQL 15 cluster for the tests and the benchmarks: ``initdb`` and
``pg_ctl`` from Debian's packages, run as the ``postgres`` user on a temp dir and a free
loopback port, stopped (and its dir removed) at the end. Never touches a cluster it did
not start. Runtime dependencies only (no pytest): bench/failover.py runs on it too.

Each test gets a fresh database copied from a template that is migrated once
(``CREATE DATABASE ... TEMPLATE``: tens of milliseconds, where migrating a new database
every time would cost far more)."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
PASSWORD = "orchestrify-test-secret"  # the role's password: tests check it never leaks
TEMPLATE = "orchestrify_template"


def postgres_available() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    if not (PG_BIN / "initdb").exists():
        return (
            f"PostgreSQL 15 in {PG_BIN} "
            "(Debian package postgresql; scripts/ensure-packages.sh --test)"
        )
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"the {PG_USER!r} system user (made by Debian's postgresql package)"
    if os.geteuid() != 0:
        return "root, to run the cluster as the postgres user"
    return None


class PostgresServer:
    """One cluster of our own; ``url(db)`` is the SQLAlchemy URL of a database in it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="orchestrify-pg-"))
        self.data = self.dir / "data"
        self._names = itertools.count(1)
        self._shared: str | None = None
        self._run_as = ["runuser", "-u", PG_USER, "--"]

    def start(self) -> None:
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        self.start_server()
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")

    def start_server(self) -> None:
        """``pg_ctl start`` on the cluster made by ``start`` (again, after ``stop_server``)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = str(self.dir / "log")
        self._pg("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop_server(self) -> None:
        """``pg_ctl stop`` (fast: connections are cut), keeping the cluster's files."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*self._run_as, str(PG_BIN / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {proc.stderr.strip()} {tail}")

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_USER,
            password=PASSWORD,
            dbname=database,
            autocommit=True,
        )

    def prepare_template(self) -> None:
        """Migrate the template once: every database copied from it starts at head."""
        from orchestrify.store import migrate
        from orchestrify.store.engine import create_store_engine

        engine = create_store_engine(self.url(TEMPLATE))
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()

    def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database (copied from the migrated template, or empty); its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect("postgres") as conn:
            if migrated:
                # FILE_COPY: for a database this small, faster than the WAL_LOG default.
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
            else:
                conn.execute(f"CREATE DATABASE {name}")
        return name

    def emptied_database(self) -> str:
        """The session's shared test database with every table emptied (the schema stays
        at head): a few milliseconds, where a new database takes a few hundred. A fresh
        copy when the old one cannot be emptied (a leftover lock)."""
        name = self._shared
        if name is not None:
            try:
                with self.connect(name) as conn:
                    conn.execute("SET lock_timeout = '5s'")
                    tables = [
                        row[0]
                        for row in conn.execute(
                            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                            " AND tablename <> 'alembic_version'"
                        )
                    ]
                    conn.execute(
                        "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY"
                    )
                return name
            except psycopg.Error:
                self.drop_database(name)
        self._shared = self.new_database()
        return self._shared

    def drop_database(self, name: str) -> None:
        with self.connect("postgres") as conn:
            for _ in range(3):
                try:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    return
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.2)


@contextlib.contextmanager
def running_postgres(port: int) -> Iterator[PostgresServer]:
    """A cluster started on ``port`` with its template database ready; stopped at the end."""
    server = PostgresServer(port)
    server.start()
    try:
        server.prepare_template()
        yield server
    finally:
        server.stop()
