"""HTTP adapter to the controller's API, for the CLI (sync) and the agent and edge (async).

httpx errors and non-2xx answers become orchestrify errors here; nothing above sees httpx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from orchestrify.errors import (
    Conflict,
    ControllerError,
    InvalidSpec,
    NodeUnreachable,
    NotFound,
    OrchestrifyError,
    Unauthorized,
    VersionMismatch,
)
from orchestrify.protocol import (
    HEADER_VERSION,
    UNANNOUNCED_PROTOCOL,
    announce,
    peer_protocol,
    refusal,
)
from orchestrify.tls import certificate_rejected, client_verify

DEFAULT_URL = "http://127.0.0.1:18080"


def _message(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase, None
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            detail = body.get("detail")
            field = None
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                field = ".".join(
                    str(p) for p in detail[0].get("loc", []) if p not in ("body", "query")
                )
            return body["message"], field or None
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail, None
        if isinstance(detail, list) and detail:
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc", []) if p not in ("body", "query"))
            return f"{loc}: {first.get('msg')}", loc or None
    return str(body), None


def raise_for_status(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    msg, field = _message(resp)
    if resp.status_code == 401:
        hint = "" if "ORCHESTRIFY_TOKEN" in msg else " (check --token or ORCHESTRIFY_TOKEN)"
        raise Unauthorized(msg + hint)
    if resp.status_code == 404:
        raise NotFound(msg)
    if resp.status_code == 409:
        raise Conflict(msg)
    if resp.status_code == 422:
        raise InvalidSpec(msg, field=field)
    if resp.status_code == 426:
        raise VersionMismatch(msg)
    raise ControllerError(f"controller answered {resp.status_code}: {msg}", status=resp.status_code)


def _unreachable(url: str, exc: httpx.HTTPError, *, ca: Path | None = None) -> NodeUnreachable:
    rejected = certificate_rejected(exc, url=url, ca=ca)
    if rejected is not None:
        return rejected
    if url.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError):
        # What a plain-HTTP request to an HTTPS-only controller gets: a closed connection.
        return NodeUnreachable(
            f"the controller at {url} closed the connection without answering "
            f"({exc}); if it serves HTTPS (--tls-cert), use an https:// URL"
        )
    return NodeUnreachable(
        f"cannot reach the controller at {url} ({type(exc).__name__}: {exc}); "
        "is `orchestrify controller` (or `orchestrify up`) running? "
        "Set --controller or ORCHESTRIFY_URL."
    )


def check_controller_protocol(resp: httpx.Response, *, minimum: int | None) -> None:
    """Refuse an answer from a controller whose protocol is older than ``minimum`` (one
    that sends no protocol header is from before headers: protocol 1)."""
    if minimum is None:
        return
    proto = peer_protocol(resp.headers)
    why = refusal(
        peer="controller",
        peer_version=resp.headers.get(HEADER_VERSION),
        peer_protocol=UNANNOUNCED_PROTOCOL if proto is None else proto,
        minimum=minimum,
    )
    if why is not None:
        raise VersionMismatch(why)


class ControllerClient:
    """Blocking client, one method per API call the CLI makes."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        component: str = "cli",
        ca: Path | None = None,
    ):
        """``ca``: verify an https controller against the CA certificates in this file
        only; None: against the system's trust store."""
        self.url = url.rstrip("/")
        self.ca = ca
        headers = announce(component)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, verify=client_verify(ca)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc, ca=self.ca) from exc
        raise_for_status(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def stream_ndjson(self, path: str, **params: Any) -> Iterator[Any]:
        """GET a newline-delimited JSON stream, yielding one decoded object per line.

        No read timeout: a followed stream may stay quiet while a task runs.
        """
        query = {k: v for k, v in params.items() if v is not None}
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        try:
            with self._http.stream("GET", path, params=query, timeout=timeout) as resp:
                if not resp.is_success:
                    resp.read()
                    raise_for_status(resp)
                for line in resp.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc, ca=self.ca) from exc


class AsyncControllerClient:
    """Non-blocking client for the agent and the edge (long-polls, reports).

    ``component`` is announced with the package and protocol versions on every request;
    with ``min_protocol``, an answer from a controller of an older protocol raises
    ``VersionMismatch`` instead of being handed to the caller.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        component: str = "edge",  # the edge builds its client with defaults; the agent says so
        min_protocol: int | None = None,
        ca: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.min_protocol = min_protocol
        self.ca = ca
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            headers=announce(component),
            verify=client_verify(ca),
        )

    def set_token(self, token: str) -> None:
        self.token = token

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            resp = await self._http.request(method, path, headers=headers, **kwargs, **extra)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc, ca=self.ca) from exc
        if resp.status_code != 426:  # a refusal says why itself, naming both versions
            check_controller_protocol(resp, minimum=self.min_protocol)
        raise_for_status(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()


__all__ = [
    "DEFAULT_URL",
    "AsyncControllerClient",
    "ControllerClient",
    "OrchestrifyError",
    "check_controller_protocol",
    "raise_for_status",
]
