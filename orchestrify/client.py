"""HTTP adapter to the controller's API, for the CLI (sync) and the agent and edge (async).

httpx errors and non-2xx answers become orchestrify errors here; nothing above sees httpx.

A client holds an ordered list of controller URLs (``--controller URL1,URL2``, the same in
``ORCHESTRIFY_URL``) and fails over between them: see ``ControllerRing``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

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
URL_SOURCES = "--controller or ORCHESTRIFY_URL"

log = logging.getLogger(__name__)

# Methods whose repetition does what one call does (RFC 9110, 9.2.2): sent again to the
# next controller after any failure. Any other (POST, PATCH) only when the caller says so.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


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


def check_controller_url(url: str) -> str:
    """``url`` without a trailing slash, after checking it is ``http(s)://HOST[:PORT][/PATH]``
    with nothing else; ``InvalidSpec`` naming it (field ``controller``) otherwise."""
    want = "want http(s)://HOST[:PORT][/PATH], e.g. http://10.0.0.10:18080"
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidSpec(f"bad controller URL {url!r}: {want} ({URL_SOURCES})", field="controller")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise InvalidSpec(
            f"bad controller URL {url!r}: the port must be a number from 1 to 65535 "
            f"({URL_SOURCES})",
            field="controller",
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise InvalidSpec(f"bad controller URL {url!r}: {want} ({URL_SOURCES})", field="controller")
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        # Credentials in a URL would end up in log lines; the token has its own option.
        raise InvalidSpec(
            f"bad controller URL {url!r}: no query, fragment or credentials in it "
            f"(the token goes in --token or ORCHESTRIFY_TOKEN) ({URL_SOURCES})",
            field="controller",
        )
    return url.rstrip("/")


def parse_controller_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The controller URLs of ``URL1,URL2`` (or of a list of them), in order, each checked
    by ``check_controller_url``; blanks around commas are ignored, a repeated URL is kept
    once. ``InvalidSpec`` names the first bad one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        url = check_controller_url(item.strip())
        if url not in urls:
            urls.append(url)
    if not urls:
        raise InvalidSpec(f"no controller URL given ({URL_SOURCES})", field="controller")
    return tuple(urls)


def _transport_failure(exc: httpx.HTTPError) -> bool:
    """The URL did not answer (refused, reset, timed out, TLS refused): worth trying the
    next controller. A malformed request of ours would fail the same everywhere."""
    return isinstance(exc, httpx.TransportError) and not isinstance(
        exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError
    )


def _surely_not_sent(exc: httpx.HTTPError) -> bool:
    """No byte of the request can have reached a controller: the connection (TCP and TLS)
    was never made, or no pooled connection was free."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class ControllerRing:
    """The ordered controller URLs of one client, and the one it uses now.

    Every request starts at the controller in use. When that one does not answer (a
    connection error, a timeout, or a 503) the request goes to the next one, round-robin
    (after the last comes the first), and the one that answers is used from then on: a
    healthy client stays where it is instead of bouncing between controllers, and a
    dead one costs one failed attempt per request until the next answers. An answer
    (2xx, 4xx, any status but 503) is never tried elsewhere: another controller of the
    same store would answer the same.

    One instance serves one client's requests, which run on one thread (the CLI) or one
    event loop (the agent, the edge): it is not shared across threads.
    """

    def __init__(self, urls: Sequence[str], *, announce_first: bool = True) -> None:
        """``announce_first``: log the first controller that answers at INFO (the agent and
        the edge say which controller they use); False logs it at DEBUG (the CLI, which
        logs only a failover)."""
        self.urls: tuple[str, ...] = tuple(u.rstrip("/") for u in urls)
        if not self.urls:
            raise InvalidSpec(f"no controller URL given ({URL_SOURCES})", field="controller")
        self._index = 0
        self._in_use: str | None = None  # the last one that answered, once logged
        self._announce_first = announce_first

    @property
    def current(self) -> str:
        """The controller the next request goes to first."""
        return self.urls[self._index]

    def preferred(self) -> tuple[str, ...]:
        """Every URL, the one in use first, then the others in round-robin order."""
        n = len(self.urls)
        return tuple(self.urls[(self._index + k) % n] for k in range(n))

    def attempts(self) -> Iterator[str]:
        """The URLs one request tries, each at most once: always the controller in use
        now (which a concurrent request may have moved), else the next untried one."""
        tried: set[str] = set()
        while len(tried) < len(self.urls):
            url = next(u for u in self.preferred() if u not in tried)
            tried.add(url)
            yield url

    def answered(self, url: str) -> None:
        """``url`` answered: use it from now on (one log line when that is a change)."""
        self._index = self.urls.index(url)
        if url == self._in_use:
            return
        first = self._in_use is None
        self._in_use = url
        level = logging.INFO if (self._announce_first or not first) else logging.DEBUG
        if len(self.urls) > 1 or self._announce_first:
            log.log(level, "controller in use", extra={"controller": url})

    def failed(self, url: str, why: str) -> None:
        """``url`` did not answer: the next request (and this one, if it may be retried)
        goes to the next controller. One log line per failover, only by the request that
        moved off ``url``: a dozen requests failing on one dead controller say it once."""
        if len(self.urls) == 1 or self.current != url:
            return
        self._index = (self._index + 1) % len(self.urls)
        if self._in_use == url:
            self._in_use = None  # the one that answers next is logged as in use
        log.warning(
            "controller failed; failing over",
            extra={"controller": url, "next": self.current, "error": why},
        )


def _why(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Round:
    """The attempts of one request over a ``ControllerRing``: which outcome is an answer,
    which one is tried on the next controller, and what is raised when none answered.

    Retrying on another controller is safe for an idempotent request (``IDEMPOTENT_METHODS``,
    or a POST the caller marks so: a heartbeat, a report, a registration that upserts)
    whatever happened. A request that creates something (``POST /v1/services``,
    ``POST /v1/jobs``) may have been carried out by a controller that died, timed out
    or answered 503 before its answer came back: sent again elsewhere, it would be done
    twice (a second job run) or fail misleadingly (409: the service exists). So it is
    retried only after a connection error, when it surely never reached the first
    controller; otherwise the error goes to the caller, who knows whether to ask again.
    """

    def __init__(
        self, ring: ControllerRing, *, method: str, idempotent: bool | None, ca: Path | None
    ) -> None:
        self.ring = ring
        self.ca = ca
        self.retry_any = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        self.errors: list[NodeUnreachable] = []
        self._left = len(ring.urls)

    def urls(self) -> Iterator[str]:
        for url in self.ring.attempts():
            self._left -= 1
            yield url

    def error(self, url: str, exc: httpx.HTTPError) -> None:
        """``url`` failed with ``exc``: return to try the next one, or raise."""
        err = _unreachable(url, exc, ca=self.ca)
        if not _transport_failure(exc):
            raise err from exc
        self.ring.failed(url, _why(exc))
        if not (self.retry_any or _surely_not_sent(exc)) and self._left:
            raise NodeUnreachable(
                f"{err}; not sent to another controller: the request may have been "
                "carried out before the connection broke, check before sending it again"
            ) from exc
        self.errors.append(err)
        if not self._left:
            raise self._exhausted() from exc

    def response(self, url: str, resp: httpx.Response) -> bool:
        """True: ``resp`` is the answer. False: a 503 to try on the next controller."""
        if resp.status_code == 503:
            self.ring.failed(url, "503 Service Unavailable")
            if self.retry_any and self._left:
                self.errors.append(NodeUnreachable(f"the controller at {url} answered 503"))
                return False
            return True
        self.ring.answered(url)
        return True

    def _exhausted(self) -> NodeUnreachable:
        if len(self.errors) == 1:
            return self.errors[0]
        return NodeUnreachable("no controller answered: " + " | ".join(str(e) for e in self.errors))


class ControllerClient:
    """Blocking client, one method per API call the CLI makes."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        component: str = "cli",
        ca: Path | None = None,
    ):
        """``url``: one controller URL, or several (``URL1,URL2`` or a list) to fail over
        between (``InvalidSpec`` names a bad one). ``ca``: verify an https controller
        against the CA certificates in this file only (every URL of the list); None:
        against the system's trust store."""
        self.ring = ControllerRing(parse_controller_urls(url), announce_first=False)
        self.ca = ca
        headers = announce(component)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(headers=headers, timeout=timeout, verify=client_verify(ca))

    @property
    def url(self) -> str:
        """The controller in use (the first of the list until one fails)."""
        return self.ring.current

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> Any:
        """Send to the controller in use, failing over as ``_Round`` allows; ``idempotent``
        overrides the method's default (True: a POST that may safely be sent twice)."""
        attempt = _Round(self.ring, method=method, idempotent=idempotent, ca=self.ca)
        for url in attempt.urls():
            try:
                resp = self._http.request(method, url + path, **kwargs)
            except httpx.HTTPError as exc:
                attempt.error(url, exc)
                continue
            if attempt.response(url, resp):
                return _decoded(resp)
        _never()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def stream_ndjson(self, path: str, **params: Any) -> Iterator[Any]:
        """GET a newline-delimited JSON stream, yielding one decoded object per line.

        No read timeout: a followed stream may stay quiet while a task runs. It fails over
        while nothing has been yielded; a stream cut after that raises ``NodeUnreachable``
        (the next call starts at the next controller), so that the caller resumes after
        the last object it got instead of seeing the first ones twice.
        """
        query = {k: v for k, v in params.items() if v is not None}
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        attempt = _Round(self.ring, method="GET", idempotent=None, ca=self.ca)
        for url in attempt.urls():
            yielded = False
            try:
                with self._http.stream("GET", url + path, params=query, timeout=timeout) as resp:
                    if not attempt.response(url, resp):
                        continue
                    if not resp.is_success:
                        resp.read()
                        raise_for_status(resp)
                    for line in resp.iter_lines():
                        if line.strip():
                            yielded = True
                            yield json.loads(line)
                return
            except httpx.HTTPError as exc:
                if yielded:
                    if _transport_failure(exc):
                        self.ring.failed(url, _why(exc))
                    raise _unreachable(url, exc, ca=self.ca) from exc
                attempt.error(url, exc)


def _decoded(resp: httpx.Response) -> Any:
    raise_for_status(resp)
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


class AsyncControllerClient:
    """Non-blocking client for the agent and the edge (long-polls, reports).

    ``component`` is announced with the package and protocol versions on every request;
    with ``min_protocol``, an answer from a controller of an older protocol raises
    ``VersionMismatch`` instead of being handed to the caller. ``url`` is one controller
    URL or several to fail over between (see ``ControllerRing``): a long-poll cut by a
    dying controller is sent again, with the same parameters (the version it watches
    from), to the next one.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 10.0,
        component: str = "edge",  # the edge builds its client with defaults; the agent says so
        min_protocol: int | None = None,
        ca: Path | None = None,
    ) -> None:
        self.ring = ControllerRing(parse_controller_urls(url))
        self.token = token
        self.min_protocol = min_protocol
        self.ca = ca
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers=announce(component),
            verify=client_verify(ca),
        )

    @property
    def url(self) -> str:
        """The controller in use (the first of the list until one fails)."""
        return self.ring.current

    def set_token(self, token: str) -> None:
        self.token = token

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send to the controller in use, failing over as ``_Round`` allows; ``idempotent``
        overrides the method's default (True: a POST that may safely be sent twice)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        attempt = _Round(self.ring, method=method, idempotent=idempotent, ca=self.ca)
        for url in attempt.urls():
            try:
                resp = await self._http.request(
                    method, url + path, headers=headers, **kwargs, **extra
                )
            except httpx.HTTPError as exc:
                attempt.error(url, exc)
                continue
            if attempt.response(url, resp):
                if resp.status_code != 426:  # a refusal says why itself, naming both versions
                    check_controller_protocol(resp, minimum=self.min_protocol)
                return _decoded(resp)
        _never()


def _never() -> NoReturn:
    raise AssertionError("a round ends with an answer or an error")  # pragma: no cover


__all__ = [
    "DEFAULT_URL",
    "AsyncControllerClient",
    "ControllerClient",
    "ControllerRing",
    "OrchestrifyError",
    "check_controller_protocol",
    "check_controller_url",
    "parse_controller_urls",
    "raise_for_status",
]
