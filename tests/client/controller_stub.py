"""A stand-in for a controller, served by uvicorn in a process of its own so that a test
can SIGKILL it in the middle of a long-poll, as a dying host would.

It answers the calls the failover tests make, in the shapes the real controller uses,
and counts what it was sent (``GET /stub/stats``), so that a test can tell which
controller a request reached and with which parameters. ``STUB_NAME`` names it in its
answers; ``POST /stub/unavailable?count=N`` makes its next N API answers 503.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

NAME = os.environ.get("STUB_NAME", "stub")
HOLD_S = float(os.environ.get("STUB_HOLD_S", "0"))  # how long a long-poll waits for news

hits: Counter[str] = Counter()
seen_versions: list[str | None] = []
unavailable = 0


async def _record(request: Request) -> Response | None:
    """Count the call; answer 503 while told to be unavailable."""
    global unavailable
    hits[f"{request.method} {request.url.path}"] += 1
    if unavailable > 0:
        unavailable -= 1
        return JSONResponse({"message": "the store cannot write now"}, status_code=503)
    return None


async def nodes(request: Request) -> Response:
    refusal = await _record(request)
    if refusal is not None:
        return refusal
    node = {"id": f"id-{NAME}", "name": NAME, "address": "127.0.0.1", "state": "Ready"}
    return JSONResponse([node])


async def node(request: Request) -> Response:
    refusal = await _record(request)
    return refusal or JSONResponse({"detail": "no node named it"}, status_code=404)


async def heartbeat(request: Request) -> Response:
    return await _record(request) or Response(status_code=204)


async def create_service(request: Request) -> Response:
    refusal = await _record(request)
    if refusal is not None:
        return refusal
    body: dict[str, Any] = await request.json()
    if body.get("exists"):
        return JSONResponse({"detail": "service web exists"}, status_code=409)
    if body.get("slow"):
        await asyncio.sleep(600)  # the test kills this controller meanwhile
    return JSONResponse({"name": body.get("name"), "served_by": NAME}, status_code=201)


async def _long_poll(request: Request, answer: dict[str, Any]) -> Response:
    refusal = await _record(request)
    if refusal is not None:
        return refusal
    version = request.query_params.get("version")
    seen_versions.append(version)
    if version is not None and int(version) == answer["version"]:
        # Nothing new: hold the poll (the test kills this controller meanwhile).
        await asyncio.sleep(min(HOLD_S, float(request.query_params.get("timeout", "30"))))
    return JSONResponse(answer)


async def assignments(request: Request) -> Response:
    version = int(os.environ.get("STUB_VERSION", "7"))
    node_id = request.path_params["node_id"]
    body = {"version": version, "node": node_id, "replicas": [], "cluster_id": "stub-cluster"}
    return await _long_poll(request, {**body, "served_by": NAME})


async def upstreams(request: Request) -> Response:
    version = int(os.environ.get("STUB_VERSION", "7"))
    body = {"version": version, "services": [], "cluster_id": "stub-cluster"}
    return await _long_poll(request, body)


async def stats(request: Request) -> Response:
    return JSONResponse({"name": NAME, "hits": dict(hits), "versions": seen_versions})


async def make_unavailable(request: Request) -> Response:
    global unavailable
    unavailable = int(request.query_params.get("count", "1"))
    return Response(status_code=204)


app = Starlette(
    routes=[
        Route("/v1/nodes", nodes),
        Route("/v1/nodes/{node_id}", node),
        Route("/v1/nodes/{node_id}/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/nodes/{node_id}/assignments", assignments),
        Route("/v1/services", create_service, methods=["POST"]),
        Route("/v1/upstreams", upstreams),
        Route("/stub/stats", stats),
        Route("/stub/unavailable", make_unavailable, methods=["POST"]),
    ]
)
