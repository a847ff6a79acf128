"""The controller's side of `service logs`: Docker's frames into lines, the merge by
time, and `--since`."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from orchestrify.controller.logs import (
    LINE_MAX,
    AgentLogError,
    ContainerSource,
    FrameParser,
    LogLine,
    agent_key,
    merge_history,
    parse_since,
)


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


def stamped(ts: str, text: str, *, end: bytes = b"\n") -> bytes:
    return f"{ts} {text}".encode() + end


def test_frames_split_anywhere_give_the_same_lines() -> None:
    data = (
        frame(1, stamped("2026-12-02T01:10:22.1Z", "one"))
        + frame(2, stamped("2026-12-02T01:10:22.100000001Z", "two"))
        + frame(1, stamped("2026-12-02T01:10:23Z", "three"))
    )
    for size in (1, 3, 7, 8, 9, 64, len(data)):
        parser = FrameParser()
        lines = [ln for i in range(0, len(data), size) for ln in parser.feed(data[i : i + size])]
        assert [(ln.stream, ln.line) for ln in lines] == [
            ("stdout", "one"),
            ("stderr", "two"),
            ("stdout", "three"),
        ]
        keys = [ln.key for ln in lines]
        assert keys[1] - keys[0] == 1  # nanoseconds, whatever the digits Docker kept
        assert keys[2] - keys[0] == 900_000_000


def test_a_line_docker_split_is_joined_and_a_huge_one_is_cut() -> None:
    parser = FrameParser()
    ts = "2026-12-02T01:10:22.5Z"
    got = parser.feed(frame(1, stamped(ts, "a" * 10, end=b"")))
    got += parser.feed(frame(1, stamped("2026-12-02T01:10:22.6Z", "b" * 5)))
    assert [(ln.ts, ln.line) for ln in got] == [(ts, "a" * 10 + "b" * 5)]
    huge = b"".join(
        frame(1, stamped(ts, "x" * 16384, end=b"")) for _ in range(LINE_MAX // 16384 + 2)
    )
    cut = parser.feed(huge + frame(1, stamped(ts, "end")))
    assert len(cut) == 1 and cut[0].line.endswith(f"[line cut at {LINE_MAX} bytes]")
    assert len(cut[0].line) < LINE_MAX + 64


def test_invalid_utf8_and_binary_output_are_escaped() -> None:
    parser = FrameParser()
    lines = parser.feed(frame(1, b"2026-12-02T01:10:22Z ok \xff\xfe\x00bin\n"))
    assert lines[0].line == "ok \\xff\\xfe\x00bin"


def test_a_partial_line_at_the_end_is_flushed() -> None:
    parser = FrameParser()
    assert parser.feed(frame(1, stamped("2026-12-02T01:10:22Z", "no newline", end=b""))) == []
    assert [ln.line for ln in parser.flush()] == ["no newline"]


def _source(name: str) -> ContainerSource:
    return ContainerSource(
        container_id=name, replica=name, node="n", node_id="n", agent_url="http://x", key="k"
    )


async def _chunks(lines: list[tuple[int, str]], size: int) -> AsyncIterator[list[LogLine]]:
    out = [LogLine(ts=str(k), key=k, stream="stdout", line=t) for k, t in lines]
    for i in range(0, len(out), size):
        await asyncio.sleep(0)
        yield out[i : i + size]


async def _failing() -> AsyncIterator[list[LogLine]]:
    yield [LogLine(ts="5", key=5, stream="stdout", line="before")]
    raise AgentLogError("node c went away")


def test_history_is_merged_by_time_and_a_failure_is_reported_in_place() -> None:
    a = [(k, f"a{k}") for k in range(0, 100, 3)]
    b = [(k, f"b{k}") for k in range(1, 100, 7)]

    async def run() -> list[tuple[str, str]]:
        out = []
        async for segments in merge_history(
            [
                (_source("a"), _chunks(a, 4)),
                (_source("b"), _chunks(b, 5)),
                (_source("c"), _failing()),
            ]
        ):
            for source, item in segments:
                if isinstance(item, AgentLogError):
                    out.append((source.replica, f"error: {item}"))
                else:
                    out.extend((source.replica, line.line) for line in item)
        return out

    got = asyncio.run(run())
    lines = [t for _, t in got if not t.startswith("error")]
    want = sorted([*a, *b, (5, "before")], key=lambda kv: kv[0])
    assert sorted(lines) == sorted(t for _, t in want)
    keys = [int(t.lstrip("abefor") or 5) if t != "before" else 5 for t in lines]
    assert keys == sorted(keys)
    assert ("c", "error: node c went away") in got


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10m", 1000.0 - 600),
        ("1h30m", 0.0),  # never before the epoch
        ("45s", 955.0),
        ("2026-12-02T10:00:00Z", 1796205600.0),
        ("2026-12-02T10:00:00+01:00", 1796202000.0),
        ("1796205600.5", 1796205600.5),
    ],
)
def test_since_takes_durations_times_and_seconds(value: str, expected: float) -> None:
    assert parse_since(value, now=1000.0) == expected


@pytest.mark.parametrize("value", ["", "yesterday", "-5", "10x", "m"])
def test_a_since_that_is_none_of_them_says_what_is_accepted(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_since(value, now=1000.0)


def test_each_node_has_its_own_key() -> None:
    assert agent_key("s", "n1") != agent_key("s", "n2")
    assert agent_key("s", "n1") == agent_key("s", "n1") != agent_key("t", "n1")


def test_the_ndjson_is_valid_json_whatever_the_line_holds() -> None:
    import json

    from orchestrify.controller.logs import _dump

    src = ContainerSource(
        container_id="c",
        replica='we"b-1',
        node="n\\1",
        node_id="n",
        agent_url="http://x",
        key="k",
        replaced=True,
    )
    nasty = 'quote " backslash \\ tab \t nul \x00 é \\xff \u2028'
    out = _dump(src, [LogLine(ts="2026-12-02T01:10:22Z", key=1, stream="stderr", line=nasty)])
    assert out.endswith("\n") and len(out.splitlines()) == 1 and out.isascii()
    assert json.loads(out) == {
        "ts": "2026-12-02T01:10:22Z",
        "replica": 'we"b-1',
        "node": "n\\1",
        "stream": "stderr",
        "line": nasty,
        "replaced": True,
    }
