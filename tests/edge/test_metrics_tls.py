"""The edge's /metrics over HTTPS (--tls-cert/--tls-key): served with the certificate,
verifiable with the CA, and told to the controller as an https URL; a fake controller and
a fake Nginx, the real metrics server."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bench.net import free_port
from orchestrify.edge import Edge, EdgeSettings
from tests.edge.test_saved_view import FakeController, StoppableNginx, _until
from tests.tls import make_ca, make_server_pair


def test_the_edge_serves_its_metrics_over_https_only(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    pair = make_server_pair(ca, tmp_path / "pki", name="edge")
    port = free_port()
    settings = EdgeSettings(
        controller_url="http://127.0.0.1:1",
        token="t",
        nginx_conf_dir=tmp_path / "nginx",
        metrics_port=port,
        name="edge-1",
        tls_cert=pair.cert_file,
        tls_key=pair.key_file,
    )
    controller = FakeController()
    edge = Edge(settings, client=controller, registry=CollectorRegistry())  # type: ignore[arg-type]
    nginx = StoppableNginx(live=False)
    edge.nginx = nginx  # type: ignore[assignment]
    edge.applier.nginx = nginx

    async def scenario() -> None:
        run = asyncio.create_task(edge.run())
        try:
            await _until("the edge registered", lambda: controller.registrations)
            verify = ssl.create_default_context(cafile=str(ca.cert_file))
            async with httpx.AsyncClient(verify=verify, timeout=10) as http:
                resp = await http.get(f"https://127.0.0.1:{port}/metrics")
            assert resp.status_code == 200 and "orchestrify_edge" in resp.text
            with pytest.raises(httpx.HTTPError):  # no plain HTTP beside it
                async with httpx.AsyncClient(timeout=5) as http:
                    await http.get(f"http://127.0.0.1:{port}/metrics")
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    asyncio.run(scenario())
    assert controller.registrations[0]["metrics_url"] == f"https://127.0.0.1:{port}/metrics"
