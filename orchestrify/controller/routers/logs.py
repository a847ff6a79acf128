"""/v1/services/{name}/logs and /v1/replicas/{id}/logs: the replicas' output, from
every node, as NDJSON (``orchestrify service logs``; see controller/logs.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Query
from fastapi.responses import StreamingResponse

from orchestrify.controller.border import api_router, errors
from orchestrify.controller.deps import Admin, State
from orchestrify.controller.logs import (
    SINCE_PATTERN,
    ContainerSource,
    LogRequest,
    agent_key,
    notice,
    parse_since,
    stream_logs,
)
from orchestrify.errors import InvalidSpec
from orchestrify.logdrivers import READABLE
from orchestrify.models import JSON_INT_MAX, Node, Replica

router = api_router(prefix="/v1", tags=["logs"], dependencies=[Admin])

AGENT_TIMEOUT = httpx.Timeout(10.0, read=None)  # a followed stream may stay quiet
NDJSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/x-ndjson": {}}}}
_FOLLOW = Query(False, description="Keep streaming new lines until the client goes away.")
_SINCE = Query(
    None,
    max_length=64,
    pattern=SINCE_PATTERN,
    description="Only lines since: a duration ago (10m, 1h30m, 45s), an RFC 3339 time, or "
    "Unix seconds.",
)
_TAIL = Query(None, ge=0, le=JSON_INT_MAX, description="Only the last N lines of each container.")


@router.get(
    "/services/{name}/logs",
    response_class=StreamingResponse,
    responses={**NDJSON, **errors(404)},
)
async def service_logs(
    name: str,
    state: State,
    follow: bool = _FOLLOW,
    since: str | None = _SINCE,
    tail: int | None = _TAIL,
) -> StreamingResponse:
    """Every replica's stdout and stderr, on every node, merged by time as NDJSON: one
    ``{"ts", "replica", "node", "stream", "line"}`` a line (``"replaced": true`` for a
    container its replica no longer runs, while Docker keeps it). What cannot be read
    (a node that does not answer, a driver Docker cannot read back) is a ``{"notice"}``
    line, and the rest still comes."""
    req = _request(follow, since, tail)
    await asyncio.to_thread(state.store.get_service, name)  # 404 before the stream
    reps = await asyncio.to_thread(state.store.list_replicas, service=name)
    return _respond(state, name, reps, req, only=None)


@router.get(
    "/replicas/{replica_id}/logs",
    response_class=StreamingResponse,
    responses={**NDJSON, **errors(404)},
)
async def replica_logs(
    replica_id: str,
    state: State,
    follow: bool = _FOLLOW,
    since: str | None = _SINCE,
    tail: int | None = _TAIL,
) -> StreamingResponse:
    """One replica's lines, as ``/v1/services/{name}/logs`` gives them."""
    req = _request(follow, since, tail)
    rep = await asyncio.to_thread(state.store.get_replica, replica_id)
    return _respond(state, rep.service, [rep], req, only=rep.id)


def _request(follow: bool, since: str | None, tail: int | None) -> LogRequest:
    try:
        moment = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise InvalidSpec(f"since: {exc}", field="since") from None
    return LogRequest(follow=follow, since=moment, tail=tail)


def _respond(
    state: State, service: str, reps: list[Replica], req: LogRequest, *, only: str | None
) -> StreamingResponse:
    started = time.time()
    return StreamingResponse(
        _stream(state, service, reps, req, only=only, started=started),
        media_type="application/x-ndjson",
    )


async def _stream(
    state: State,
    service: str,
    reps: list[Replica],
    req: LogRequest,
    *,
    only: str | None,
    started: float,
) -> AsyncIterator[str]:
    secret = state.store.agent_secret
    nodes = {n.id: n for n in await asyncio.to_thread(state.store.list_nodes)}
    current = {r.container_id for r in reps if r.container_id}
    async with httpx.AsyncClient(timeout=AGENT_TIMEOUT, trust_env=False) as http:
        sources: list[ContainerSource] = []
        # The nodes that cannot be read are named after the lines of the others (with
        # follow: after the history, before what follows).
        trailer: list[str] = []
        for node_id in sorted({r.node for r in reps}):
            node = nodes.get(node_id)
            if node is None:
                continue
            found, problem = await _containers(http, node, service, agent_key(secret, node_id))
            if problem is not None:
                trailer.append(notice(problem, node=node.name))
                continue
            for c in found:
                if only is not None and c.get("replica") != only:
                    continue
                replica = str(c.get("replica") or c["id"][:12])
                if c.get("log_driver") not in READABLE:
                    # Docker 20.10 keeps a local copy of what it ships ("dual logging")
                    # unless cache-disabled: read that, and say where the rest went.
                    where = c.get("log_address") or "where its log options send them"
                    yield notice(
                        f"the logs of replica {replica} go to {c.get('log_driver')} "
                        f"({where}); what follows is Docker's local copy on {node.name}",
                        node=node.name,
                        replica=replica,
                    )
                sources.append(
                    ContainerSource(
                        container_id=c["id"],
                        replica=replica,
                        node=node.name,
                        node_id=node_id,
                        agent_url=str(node.agent_url).rstrip("/"),
                        key=agent_key(secret, node_id),
                        replaced=c["id"] not in current,
                        running=c.get("state") == "running",
                    )
                )
        async for out in stream_logs(sources, req, http=http, started=started, trailer=trailer):
            yield out


async def _containers(
    http: httpx.AsyncClient, node: Node, service: str, key: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The node's containers of ``service`` (running or not), or why there are none."""
    if not node.agent_url:
        return [], (
            f"node {node.name} serves no logs: its agent runs without --metrics-port, or "
            "predates logs (upgrade it)"
        )
    if not _plain_agent_url(node.agent_url):
        return [], f"node {node.name} registered an agent URL that is not http://HOST:PORT"
    try:
        resp = await http.get(
            f"{node.agent_url}/v1/containers",
            params={"service": service},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10.0,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        why = str(exc) or type(exc).__name__
        return [], f"node {node.name} is not reachable at {node.agent_url}: {why}"
    if resp.status_code == 404:
        return [], f"node {node.name}'s agent predates logs (upgrade it)"
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            detail = resp.text[:200]
        return [], f"node {node.name}'s agent refused ({resp.status_code}): {detail}"
    try:
        found = resp.json()
    except json.JSONDecodeError:
        return [], f"node {node.name}'s agent answered something that is not JSON"
    if not isinstance(found, list):
        return [], f"node {node.name}'s agent answered something that is not a list"
    # What an agent says is data from another host: only well-formed entries, as strings.
    return [
        {k: str(v) if v is not None else None for k, v in c.items()}
        for c in found
        if isinstance(c, dict) and isinstance(c.get("id"), str) and _CONTAINER_ID.fullmatch(c["id"])
    ], None


_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


def _plain_agent_url(url: str) -> bool:
    """``http(s)://HOST:PORT``, nothing else: the controller sends a node's key there."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return (
        parsed.scheme in ("http", "https")
        and bool(parsed.host)
        and not parsed.userinfo
        and parsed.path in ("", "/")
        and not parsed.query
    )
