"""The Nginx adapter against a real Nginx: a reload counts as done only when no worker
of the old config still takes new connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest

from bench.net import free_port
from orchestrify.edge.nginx import NginxProcess, accepting_workers
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

CONF = """
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location = /__orchestrify/health {{ return 200 "ok {config_id}\\n"; }}
        location / {{ return 200 "{config_id}\\n"; }}
    }}
}}
"""


def test_reload_waits_until_the_old_workers_stop_accepting(tmp_path: Path) -> None:
    binary = require_binary("nginx")
    port = free_port()
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"

    def write(config_id: str) -> None:
        conf.write_text(CONF.format(prefix=tmp_path, port=port, config_id=config_id))

    nginx = NginxProcess(
        binary=binary,
        prefix=tmp_path,
        pid_file=tmp_path / "nginx.pid",
        health_url=f"http://127.0.0.1:{port}/__orchestrify/health",
    )

    async def scenario() -> None:
        held = 0
        write("one")
        await nginx.start()
        try:
            assert await nginx.wait_serving("one", timeout_s=10)
            master = nginx.pid()
            assert master is not None
            first = accepting_workers(master)
            assert len(first) == 2, first
            for n in range(3):
                config_id = f"two-{n}"
                write(config_id)
                await nginx.reload()
                assert await nginx.wait_serving(config_id, timeout_s=10)
                # Every worker of the previous config has gone or is shutting down...
                assert not (accepting_workers(master) & first)
                # ...so every new connection meets the new config.
                async with httpx.AsyncClient() as http:
                    answers = await asyncio.gather(
                        *(http.get(f"http://127.0.0.1:{port}/") for _ in range(30))
                    )
                assert {r.text.strip() for r in answers} == {config_id}
                first = accepting_workers(master)
                assert len(first) == 2, first

            # An old worker that has not yet handled the master's QUIT still accepts:
            # hold one back (SIGSTOP) and the reload is not done until it lets go.
            held = min(first)
            os.kill(held, signal.SIGSTOP)
            try:
                write("three")
                await nginx.reload()
                waiting = asyncio.create_task(nginx.wait_serving("three", timeout_s=30))
                await asyncio.sleep(1.0)
                assert not waiting.done(), "reported done while an old worker still accepts"
            finally:
                os.kill(held, signal.SIGCONT)
            assert await waiting
            assert held not in accepting_workers(master)
        finally:
            if held:  # never left stopped, whatever failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(held, signal.SIGCONT)
            await nginx.stop()

    asyncio.run(scenario())
