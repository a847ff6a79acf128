"""A service's logs from every node, merged: what ``orchestrify service logs`` reads.

The controller holds no log. It asks the agent of each node that runs (or ran) a
replica of the service for the containers it has of it, then reads each container's
Docker log stream through that agent (``GET /v1/containers/{id}/logs``, the engine's own
multiplexed bytes), authenticated with the node's agent key. Lines are parsed as they
arrive and written out as NDJSON, one object a line:

    {"ts": "2026-12-02T01:10:22.114137493Z", "replica": "web-1a2b", "node": "n1",
     "stream": "stdout", "line": "GET / 200"}

plus ``"replaced": true`` for a container its replica no longer runs. Whatever cannot
be read (a node that does not answer, a driver Docker cannot read back) becomes a
``notice`` object, and the other nodes' lines keep coming.

History is merged by timestamp with a k-way merge over the containers' streams, each
already in order, so memory holds one chunk per container, never a whole log. With
``follow`` the history is read up to the moment the request started (Docker's
``until``) and the rest is followed from that same moment (``since``), so no line is
lost or shown twice between the two, and followed lines are written as they come.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import hashlib
import heapq
import hmac
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = [
    "ContainerSource",
    "FrameParser",
    "LogLine",
    "LogRequest",
    "agent_key",
    "merge_history",
    "parse_since",
    "stream_logs",
]

LINE_MAX = 256 * 1024
"""Bytes of one log line kept; the rest of a longer line is cut and marked."""
_HEADER = struct.Struct(">BxxxI")
# ASCII-only JSON strings: U+2028, U+0085 and their kind would split the NDJSON line for
# a client that splits lines as str.splitlines() does (httpx's iter_lines).
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr"}
# What ``since`` takes, as one pattern: it is also the API parameter's OpenAPI
# ``pattern``, so the schema is exactly as narrow as the parser (no look-around: JSON
# Schema tools must draw it). A duration ago, Unix seconds, or an RFC 3339 time.
_DURATION_RE = (
    r"([0-9]{1,7})h(?:([0-9]{1,7})m)?(?:([0-9]{1,9})s)?"
    r"|([0-9]{1,7})m(?:([0-9]{1,9})s)?|([0-9]{1,9})s"
)
_UNIX_RE = r"([0-9]{1,11})(\.[0-9]{1,9})?"
_TIME_RE = (
    r"([1-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]"
    r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9])(\.[0-9]{1,9})?)?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
SINCE_PATTERN = f"^(?:{_DURATION_RE}|{_UNIX_RE}|{_TIME_RE})$"
_SINCE = re.compile(f"{_DURATION_RE}|{_UNIX_RE}|{_TIME_RE}")


def agent_key(secret: str, node_id: str) -> str:
    """The key the controllers present to one node's agent: a node's key opens only its
    own agent, and any controller of the cluster (they share ``secret``) can make it."""
    return hmac.new(secret.encode(), node_id.encode(), hashlib.sha256).hexdigest()


def parse_since(value: str, *, now: float | None = None) -> float:
    """``10m``, ``1h30m``, ``45s`` (that long ago), an RFC 3339 time (no offset: UTC),
    or Unix seconds, as Unix seconds; never before the epoch. Raises ``ValueError``
    saying what is accepted. Whatever ``SINCE_PATTERN`` matches parses: a day past the
    month's end (February 31st) counts on into the next month."""
    match = _SINCE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is neither a duration (10m, 1h30m, 45s), an RFC 3339 time "
            "(2026-12-02T10:00:00Z) nor Unix seconds"
        )
    g = match.groups()
    now = time.time() if now is None else now
    if any(g[:6]):
        h = int(g[0] or 0)
        m = int(g[1] or g[3] or 0)
        sec = int(g[2] or g[4] or g[5] or 0)
        return max(0.0, now - (h * 3600 + m * 60 + sec))
    if g[6] is not None:
        return float(g[6] + (g[7] or ""))
    year, month, day, hour, minute = (int(x) for x in g[8:13])
    second, fraction, offset = int(g[13] or 0), float(g[14] or 0), g[15] or "Z"
    seconds = calendar.timegm((year, month, 1, hour, minute, second)) + (day - 1) * 86400
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return max(0.0, seconds + fraction)


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: str  # Docker's RFC 3339 timestamp, as Docker wrote it
    key: int  # the timestamp in nanoseconds: the merge's order
    stream: str
    line: str


class FrameParser:
    """Docker's multiplexed log stream (8-byte header: stream, 3 zero bytes, length) with
    ``timestamps=1``, fed in chunks of any size, into lines. A line Docker split into
    several frames (longer than 16 KiB) is joined back, up to ``LINE_MAX`` bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._partial: dict[int, tuple[str, int, bytearray]] = {}
        self._seconds: tuple[str, int] = ("", 0)

    def feed(self, chunk: bytes) -> list[LogLine]:
        self._buf += chunk
        out: list[LogLine] = []
        buf, pos, end = self._buf, 0, len(self._buf)
        while end - pos >= 8:
            kind, size = _HEADER.unpack_from(buf, pos)
            if end - pos - 8 < size:
                break
            payload = bytes(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size
            self._frame(kind, payload, out)
        del buf[:pos]
        return out

    def flush(self) -> list[LogLine]:
        """The partial lines left when the stream ends."""
        out = [self._line(kind, ts, key, data) for kind, (ts, key, data) in self._partial.items()]
        self._partial.clear()
        return out

    def _frame(self, kind: int, payload: bytes, out: list[LogLine]) -> None:
        stamp, _, data = payload.partition(b" ")
        complete = data.endswith(b"\n")
        if complete:
            data = data[:-1]
        pending = self._partial.pop(kind, None)
        if pending is not None:
            ts, key, joined = pending
            if len(joined) <= LINE_MAX:  # one byte more tells the line was cut
                joined += data[: LINE_MAX - len(joined) + 1]
        else:
            ts = stamp.decode("ascii", "replace")
            key = self._key(ts)
            joined = bytearray(data[: LINE_MAX + 1])
        if complete:
            out.append(self._line(kind, ts, key, joined))
        else:
            self._partial[kind] = (ts, key, joined)

    def _line(self, kind: int, ts: str, key: int, data: bytes | bytearray) -> LogLine:
        cut = len(data) > LINE_MAX
        text = bytes(data[:LINE_MAX]).decode("utf-8", "backslashreplace")
        if cut:
            text += f" [line cut at {LINE_MAX} bytes]"
        return LogLine(ts=ts, key=key, stream=_STREAMS.get(kind, str(kind)), line=text)

    def _key(self, ts: str) -> int:
        """Nanoseconds of ``2026-12-02T01:10:22.114137493Z`` (the seconds are cached:
        consecutive lines mostly share them)."""
        head, _, frac = ts.partition(".")
        if not frac:
            head = head.rstrip("Z")
        if head != self._seconds[0]:
            try:
                whole = datetime.fromisoformat(head).replace(tzinfo=UTC)
                self._seconds = (head, int(whole.timestamp()))
            except ValueError:
                self._seconds = (head, 0)
        digits = frac.rstrip("Z")[:9]
        return self._seconds[1] * 1_000_000_000 + int(digits.ljust(9, "0") or 0)


@dataclass(frozen=True, kw_only=True)
class ContainerSource:
    """One container to read: where, and how to name its lines."""

    container_id: str
    replica: str
    node: str  # the node's name, as shown
    node_id: str
    agent_url: str
    key: str
    replaced: bool = False
    running: bool = True  # only a running container is followed

    @functools.cached_property
    def fields(self) -> str:
        """``"replica":…,"node":…`` of its NDJSON lines, escaped once."""
        return f'"replica":{_json_string(self.replica)},"node":{_json_string(self.node)}'

    @functools.cached_property
    def suffix(self) -> str:
        return ',"replaced":true' if self.replaced else ""


@dataclass(frozen=True, kw_only=True)
class LogRequest:
    follow: bool = False
    since: float | None = None
    tail: int | None = None  # per container; None: all


@dataclass
class _Reader:
    source: ContainerSource
    lines: list[LogLine] = field(default_factory=list)
    done: bool = False


def _dump(source: ContainerSource, lines: Sequence[LogLine]) -> str:
    """NDJSON, a line each. Built by hand from JSON-escaped strings: ``json.dumps`` of a
    dict per line would be most of the controller's cost at 50,000 lines a second."""
    head, tail, enc = source.fields, source.suffix + "}\n", _json_string
    return "".join(
        f'{{"ts":{enc(ln.ts)},{head},"stream":"{ln.stream}","line":{enc(ln.line)}{tail}'
        for ln in lines
    )


def notice(message: str, *, node: str | None = None, replica: str | None = None) -> str:
    obj: dict[str, Any] = {"notice": message}
    if node is not None:
        obj["node"] = node
    if replica is not None:
        obj["replica"] = replica
    return json.dumps(obj) + "\n"


class AgentLogError(Exception):
    """A container's logs could not be read (the message says why, for a notice)."""


async def _chunks(
    http: httpx.AsyncClient, source: ContainerSource, params: dict[str, str]
) -> AsyncIterator[list[LogLine]]:
    """The container's lines, a chunk's worth at a time."""
    url = f"{source.agent_url}/v1/containers/{source.container_id}/logs"
    headers = {"Authorization": f"Bearer {source.key}"}
    parser = FrameParser()
    try:
        async with http.stream("GET", url, params=params, headers=headers) as resp:
            if resp.status_code != 200:
                body = await resp.aread()
                raise AgentLogError(_refusal(resp.status_code, body))
            async for chunk in resp.aiter_raw():  # as it comes (a size would wait to fill it)
                lines = parser.feed(chunk)
                if lines:
                    yield lines
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise AgentLogError(
            f"the agent of node {source.node} stopped answering ({type(exc).__name__}: "
            f"{exc or 'no detail'})"
        ) from exc
    rest = parser.flush()
    if rest:
        yield rest


def _refusal(status: int, body: bytes) -> str:
    try:
        answer = json.loads(body)
        detail = answer.get("detail")
    except (ValueError, AttributeError):
        answer, detail = {}, None
    if status == 409 and answer.get("log_driver"):
        where = answer.get("log_address") or "where its log options send them"
        return (
            f"its logs go to {answer['log_driver']} ({where}) and Docker keeps no copy it "
            "can read back (cache-disabled): read them there"
        )
    detail = detail or body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    return f"the agent refused ({status}): {detail}"


def _params(req: LogRequest, *, follow: bool, until: float | None) -> dict[str, str]:
    params = {"follow": "1" if follow else "0"}
    if req.since is not None:
        params["since"] = f"{req.since:.9f}"
    if until is not None:
        params["until"] = f"{until:.9f}"
    if req.tail is not None and not follow:
        params["tail"] = str(req.tail)
    return params


Segment = tuple["ContainerSource", "Sequence[LogLine] | AgentLogError"]
"""Lines of one source in a row, or its error, as ``merge_history`` hands them out."""

_BATCH = 1024  # lines per batch handed out (and per write to the client)


async def merge_history(
    readers: Sequence[tuple[ContainerSource, AsyncIterator[list[LogLine]]]],
) -> AsyncIterator[list[Segment]]:
    """Lines of finite, ordered streams, merged by timestamp, in batches of segments.
    The stream with the oldest head gives every line up to the next stream's head in
    one run, so lines printed in bursts cost a heap operation per burst, not per line.
    A reader that fails gives its error once, in place, and stops."""
    state = [_Reader(source) for source, _ in readers]
    iters = [it for _, it in readers]
    heap: list[tuple[int, int, int]] = []  # (key, reader index, position in its chunk)

    async def refill(i: int) -> AgentLogError | None:
        try:
            state[i].lines = await anext(iters[i])
        except StopAsyncIteration:
            state[i].done = True
            return None
        except AgentLogError as exc:
            state[i].done = True
            return exc
        return None

    async def start(i: int) -> AgentLogError | None:
        error = await refill(i)
        if not state[i].done:
            heapq.heappush(heap, (state[i].lines[0].key, i, 0))
        return error

    # Open every stream at once: one slow node does not delay the first read of others.
    errors = await asyncio.gather(*(start(i) for i in range(len(state))))
    out: list[Segment] = [
        (state[i].source, error) for i, error in enumerate(errors) if error is not None
    ]
    size = 0
    while heap:
        _, i, pos = heapq.heappop(heap)
        reader = state[i]
        lines = reader.lines
        end = len(lines)
        if heap:
            bound = heap[0][0]
            stop = pos + 1
            while stop < end and lines[stop].key <= bound:
                stop += 1
        else:
            stop = end
        out.append((reader.source, lines[pos:stop]))
        size += stop - pos
        if stop < end:
            heapq.heappush(heap, (lines[stop].key, i, stop))
        else:
            if size >= _BATCH:
                yield out
                out, size = [], 0
            error = await refill(i)
            if error is not None:
                out.append((reader.source, error))
            if not reader.done:
                heapq.heappush(heap, (reader.lines[0].key, i, 0))
        if size >= _BATCH:
            yield out
            out, size = [], 0
    if out:
        yield out


async def stream_logs(
    sources: Sequence[ContainerSource],
    req: LogRequest,
    *,
    http: httpx.AsyncClient,
    started: float | None = None,
    trailer: Sequence[str] = (),
) -> AsyncIterator[str]:
    """NDJSON lines of every source: the history merged, then ``trailer`` (notices of
    what could not be read), then (``follow``) what comes."""
    started = time.time() if started is None else started
    until = started if req.follow else None
    readers = [(s, _chunks(http, s, _params(req, follow=False, until=until))) for s in sources]
    failed: set[str] = set()
    last: dict[str, int] = {}
    try:
        async for segments in merge_history(readers):
            parts: list[str] = []
            for source, item in segments:
                if isinstance(item, AgentLogError):
                    failed.add(source.container_id)
                    parts.append(notice(str(item), node=source.node, replica=source.replica))
                    continue
                last[source.container_id] = item[-1].key
                parts.append(_dump(source, item))
            yield "".join(parts)
    finally:
        for _, it in readers:
            with contextlib.suppress(Exception):
                await it.aclose()  # type: ignore[attr-defined]
    if trailer:
        yield "".join(trailer)
    if not req.follow:
        return
    live = [s for s in sources if s.running and s.container_id not in failed]
    async for out in _follow(live, req, http=http, since=started, last=last):
        yield out


async def _follow(
    sources: Sequence[ContainerSource],
    req: LogRequest,
    *,
    http: httpx.AsyncClient,
    since: float,
    last: dict[str, int],
) -> AsyncIterator[str]:
    """Every source's new lines as they come, through one bounded queue (a slow client
    slows the readers; nothing piles up)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)
    follow_req = LogRequest(follow=True, since=since)

    async def pump(source: ContainerSource) -> None:
        seen = last.get(source.container_id, -1)
        params = _params(follow_req, follow=True, until=None)
        try:
            async for lines in _chunks(http, source, params):
                fresh = [line for line in lines if line.key > seen]
                if fresh:
                    await queue.put(_dump(source, fresh))
            await queue.put(
                notice(
                    f"the container of replica {source.replica} stopped",
                    node=source.node,
                    replica=source.replica,
                )
            )
        except AgentLogError as exc:
            await queue.put(notice(str(exc), node=source.node, replica=source.replica))
        await queue.put(None)  # not when cancelled: then nobody reads the queue

    tasks = [asyncio.create_task(pump(s), name=f"logs-{s.replica}") for s in sources]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
