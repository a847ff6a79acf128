"""A real highly available control plane for the failover drills (issue 11), shared by
tests/integration/test_ha.py and bench/failover.py.

PostgreSQL 15 of our own (bench/postgres.py); three `orchestrify controller` processes on
it, each through a TCP proxy of this module (a drill cuts one controller off the
database while it keeps running) and each as a database role of its own (``c1``...), so
that an audit trigger can say which controller wrote every row and when, by the
database's clock; two real agents (threads of this process, on the Docker engine, their
containers labelled for clean-up) and one edge process with its Nginx, all given every
controller's URL; traffic through Nginx every 20 ms on new connections. The processes,
the agents, the load and the data-plane checks are bench/outage_lab.py's.

Runtime dependencies only (no pytest), so the benchmark can use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.net import free_port
from bench.outage_lab import (
    ControllerProcess,
    DataPlane,
    EdgeProcess,
    Load,
    Process,
    RunningAgent,
    containers,
    remove_containers,
)
from bench.postgres import PASSWORD, PG_USER, PostgresServer, running_postgres
from bench.wait import wait_for

__all__ = [
    "AUDIT_TABLE",
    "HaController",
    "HaLab",
    "TcpProxy",
    "Write",
    "containers",
    "ha_lab",
]

AUDIT_TABLE = "drill_audit"
# Tables whose writes are the lease's own (renewals, membership): every controller writes
# them whether it leads or not, and the lease guards them itself (compare-and-set).
LEASE_TABLES = re.compile(r"lease|controller|alembic|" + AUDIT_TABLE)


class TcpProxy:
    """A loopback TCP proxy to ``upstream``, on an event loop in a thread of its own.

    ``cut()`` is a partition as a real network makes one: nothing is refused or reset,
    bytes simply stop flowing both ways (connections stay open, new ones are accepted
    and wait); ``heal()`` lets everything that waited through, late. A write sent before
    the cut therefore reaches the database after it, which is what fencing is for.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def cut(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def heal(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class HaController(ControllerProcess):
    """`orchestrify controller --controller-id cN --database-url ...` on a fixed port; the
    database URL goes through its own ``TcpProxy`` and its own role."""

    def __init__(
        self,
        ident: str,
        *,
        workdir: Path,
        database_url: str,
        admin_token: str,
        join_token: str,
        lease_s: float,
        extra: Sequence[str] = (),
    ) -> None:
        self.ident = ident
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["--database-url", database_url, "--controller-id", ident]
        args += ["--advertise-url", url, "--lease-s", f"{lease_s:g}", *extra]
        super().__init__(
            workdir / ident,
            port=port,
            admin_token=admin_token,
            join_token=join_token,
            extra=args,
            log_path=workdir / f"{ident}.log",
            name=f"controller {ident}",
        )

    def cluster(self) -> dict[str, Any]:
        """GET /v1/cluster as this controller sees it."""
        with self.api(timeout=3) as api:
            resp = api.get("/v1/cluster")
            resp.raise_for_status()
            body: dict[str, Any] = resp.json()
            return body

    def metric(self, name: str) -> float | None:
        """One unlabelled sample of this controller's /metrics (None: not exposed)."""
        text = httpx.get(f"{self.url}/metrics", timeout=3).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    def said(self, text: str) -> int:
        """How often ``text`` is in this controller's log (all of it, since its first
        start)."""
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    frozen = False

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (a long GC pause, a stalled VM), not dead."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.frozen = False


@dataclass(frozen=True)
class Write:
    """One row written, as the audit trigger saw it: by whom (the controller's role), when
    (the database's clock), to which table, how, and whether under the leader's fence (a
    leader loop's write) or not (an API request's)."""

    who: str
    at: datetime
    table: str
    op: str
    fenced: bool


_AUDIT_SQL = f"""
CREATE EXTENSION IF NOT EXISTS pgrowlocks;
CREATE TABLE {AUDIT_TABLE} (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    who text NOT NULL DEFAULT session_user,
    tab text NOT NULL,
    op text NOT NULL,
    fenced boolean NOT NULL,
    lease jsonb
);
-- SECURITY DEFINER: pgrowlocks needs more than the controllers' roles may; session_user
-- (not current_user, the definer here) is the controller that wrote.
CREATE FUNCTION {AUDIT_TABLE}_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO {AUDIT_TABLE} (who, tab, op, fenced, lease) VALUES (
        session_user, TG_TABLE_NAME, TG_OP,
        -- A fenced write holds the lease row FOR SHARE in its own transaction.
        EXISTS (SELECT 1 FROM pgrowlocks('leases') WHERE pg_backend_pid() = ANY(pids)),
        CASE WHEN TG_TABLE_NAME = 'leases' THEN to_jsonb(NEW) END
    );
    RETURN NULL;
END $$;
"""


@dataclass
class HaLab(DataPlane):
    """The whole fleet; ``start()`` brings it up with ``c1`` leading, ``close()`` removes
    everything it started (processes, containers, Nginx, the PostgreSQL cluster)."""

    workdir: Path
    docker: docker.DockerClient
    controllers_n: int = 3
    lease_s: float = 3.0
    # The controllers' own defaults (a 15 s node timeout): on a busy 2-core machine an
    # agent thread can be starved for seconds, and a shorter timeout then makes the very
    # replacements the drills check never happen.
    controller_args: list[str] = field(default_factory=list)
    # PostgreSQL's idle_in_transaction_session_timeout on the fleet's database (None: the
    # server's default, none): what ends the transaction of a leader partitioned in the
    # middle of it, whose locks would otherwise keep every other controller from being
    # elected (docs/ha.md, "A partition in the middle of a write").
    idle_in_transaction_s: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        self.admin_token = "admin-" + uuid.uuid4().hex
        self.join_token = "join-" + uuid.uuid4().hex
        self.controllers: list[HaController] = []
        self.proxies: dict[str, TcpProxy] = {}
        self.agents: list[RunningAgent] = []
        self.edge: EdgeProcess | None = None
        self.loads: list[Load] = []
        self._stack = contextlib.ExitStack()
        self.pg: PostgresServer | None = None
        self.database = ""

    # --- bring-up ----------------------------------------------------------------------
    def start(self) -> HaLab:
        self.pg = self._stack.enter_context(running_postgres(free_port()))
        self.database = self.pg.new_database()
        idents = [f"c{i}" for i in range(1, self.controllers_n + 1)]
        self._prepare_database(idents)
        for ident in idents:
            proxy = TcpProxy(self.pg.port).start()
            self.proxies[ident] = proxy
            self.controllers.append(
                HaController(
                    ident,
                    workdir=self.workdir,
                    database_url=(
                        f"postgresql+psycopg://{ident}:{PASSWORD}@127.0.0.1:{proxy.port}/"
                        f"{self.database}"
                    ),
                    admin_token=self.admin_token,
                    join_token=self.join_token,
                    lease_s=self.lease_s,
                    extra=self.controller_args,
                )
            )
        # c1 first and alone: it leads, and the drills know who does.
        first, *others = self.controllers
        first.start()
        wait_for("c1 to lead", lambda: self.leader() == "c1", timeout=60)
        for c in others:  # together: a controller takes seconds to import and open
            Process.start(c)
        for c in others:
            wait_for(f"controller {c.ident} at {c.url}", c.healthy, timeout=60)
        # Agents and the edge prefer the last controller (they stick to the first URL that
        # answers): c1, the leader the drills start with, serves none of their traffic.
        urls = [c.url for c in reversed(self.controllers)]
        for name in ("a", "b"):
            agent = RunningAgent.for_fleet(
                urls,
                join_token=self.join_token,
                state_dir=self.workdir / f"agent-{name}",
                name=f"node-{name}-{self.run_id}",
                run_id=self.run_id,
            )
            self.agents.append(agent.start())
        self.edge = EdgeProcess(
            urls, token=self.admin_token, prefix=self.workdir / "nginx", name=f"edge-{self.run_id}"
        )
        self.edge.start()
        wait_for("both nodes ready", self._nodes_ready, timeout=60)
        return self

    def _prepare_database(self, idents: Sequence[str]) -> None:
        """One login role per controller (a member of the tables' owner, so it may do all
        the owner may) and the audit trigger on every table."""
        assert self.pg is not None
        with self.pg.connect("postgres") as conn:
            for ident in idents:
                # pg_signal_backend and pg_read_all_stats: a controller may see and end
                # another's session that a partition stalled mid-message, holding locks
                # (one role for all of them, as the playbooks make, would do as well).
                conn.execute(
                    f"CREATE ROLE {ident} LOGIN PASSWORD '{PASSWORD}'"
                    f" IN ROLE {PG_USER}, pg_signal_backend, pg_read_all_stats"
                )
            if self.idle_in_transaction_s is not None:
                ms = int(self.idle_in_transaction_s * 1000)
                conn.execute(
                    f"ALTER DATABASE {self.database} SET idle_in_transaction_session_timeout = {ms}"
                )
        with self.pg.connect(self.database) as conn:
            conn.execute(_AUDIT_SQL)
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename NOT IN ('alembic_version', %s)",
                    (AUDIT_TABLE,),
                )
            ]
            for table in tables:
                conn.execute(
                    f'CREATE TRIGGER {AUDIT_TABLE}_t AFTER INSERT OR UPDATE OR DELETE ON "{table}"'
                    f" FOR EACH ROW EXECUTE FUNCTION {AUDIT_TABLE}_row()"
                )

    def _nodes_ready(self) -> bool:
        with self.api() as api:
            nodes = api.get("/v1/nodes").json()
        return len(nodes) == len(self.agents) and all(n["state"] == "ready" for n in nodes)

    # --- the control plane -------------------------------------------------------------
    def controller(self, ident: str) -> HaController:
        return next(c for c in self.controllers if c.ident == ident)

    def alive(self) -> list[HaController]:
        """The controllers that run and answer (neither dead nor frozen)."""
        return [c for c in self.controllers if c.running() and not c.frozen]

    def api(self, *, avoid: Sequence[str] = ()) -> httpx.Client:
        """A client of a running controller (the last one not in ``avoid``)."""
        usable = [c for c in self.alive() if c.ident not in avoid]
        return usable[-1].api()

    def cluster(self, *, avoid: Sequence[str] = ()) -> dict[str, Any]:
        usable = [c for c in self.alive() if c.ident not in avoid]
        return usable[-1].cluster()

    def leader(self, *, avoid: Sequence[str] = ()) -> str | None:
        """Who leads, as a running controller (not one of ``avoid``) reports it."""
        leader: str | None = self.cluster(avoid=avoid)["leader"]
        return leader

    def writes(self, *, who: str, after: datetime, fenced_only: bool = False) -> list[Write]:
        """Rows ``who`` wrote (committed) to the fleet's tables after ``after``, by the
        database's clock (``fenced_only``: the leader loops' writes only, not those of
        the API requests it served); the lease's own tables are left out."""
        assert self.pg is not None
        with self.pg.connect(self.database) as conn:
            rows = conn.execute(
                f"SELECT who, at, tab, op, fenced FROM {AUDIT_TABLE}"
                " WHERE who = %s AND at > %s AND (fenced OR NOT %s) ORDER BY id",
                (who, after, fenced_only),
            ).fetchall()
        return [Write(*row) for row in rows if not LEASE_TABLES.search(row[2])]

    def lease_end(self, holder: str) -> datetime | None:
        """When the last lease ``holder`` was granted or renewed ends (the database's
        clock): from the audit's copies of the lease row."""
        assert self.pg is not None
        with self.pg.connect(self.database) as conn:
            row = conn.execute(
                f"SELECT max((lease->>'expires_at')::timestamptz) FROM {AUDIT_TABLE}"
                " WHERE tab = 'leases' AND lease->>'holder' = %s",
                (holder,),
            ).fetchone()
        end: datetime | None = row[0] if row else None
        return end

    def db_now(self) -> datetime:
        assert self.pg is not None
        with self.pg.connect(self.database) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        now: datetime = row[0]
        return now

    # --- the data plane ----------------------------------------------------------------
    def serving_edge(self) -> EdgeProcess:
        assert self.edge is not None, "the lab is not started"
        return self.edge

    def desired(self, name: str) -> int:
        with self.api() as api:
            return int(api.get(f"/v1/services/{name}").json()["replicas"])

    # --- tear-down ---------------------------------------------------------------------
    def close(self) -> None:
        for load in self.loads:
            load.finish()
        for c in self.controllers:
            c.resume()  # a drill may have left one frozen
        for proxy in self.proxies.values():
            proxy.heal()
        if self.edge is not None:
            self.edge.stop()
            self.edge.stop_nginx()
        for agent in self.agents:
            agent.kill()
        for c in self.controllers:
            c.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        remove_containers(self.docker, self.run_id)
        self._stack.close()


@contextlib.contextmanager
def ha_lab(workdir: Path, client: docker.DockerClient, **kwargs: Any) -> Iterator[HaLab]:
    """A started ``HaLab``, closed however the block ends (a failed start too)."""
    lab = HaLab(workdir, client, **kwargs)
    try:
        yield lab.start()
    finally:
        lab.close()


def seconds_since(start: float) -> float:
    return time.monotonic() - start
