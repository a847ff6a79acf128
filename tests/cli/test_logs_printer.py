"""How `service logs` prints: prefixes, a stable colour per replica on a terminal only,
notices on stderr."""

from __future__ import annotations

import io

from orchestrify.cli.logs import LogPrinter


def _printer(*, colour: bool = False, **kw: object) -> tuple[LogPrinter, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    options = {"service": "web", "timestamps": False, "prefix": True, **kw}
    return LogPrinter(colour=colour, out=out, err=err, **options), out, err  # type: ignore[arg-type]


LINE = {"ts": "2026-12-02T01:00:00Z", "replica": "web-1a2b", "node": "n1", "line": "GET / 200"}


def test_a_line_is_prefixed_service_replica_at_node() -> None:
    printer, out, err = _printer()
    printer.show(LINE)
    assert out.getvalue() == "web.1a2b@n1 | GET / 200\n" and err.getvalue() == ""
    bare, out, _ = _printer(prefix=False, timestamps=True)
    bare.show(LINE)
    assert out.getvalue() == "2026-12-02T01:00:00Z GET / 200\n"


def test_a_replaced_containers_lines_are_marked_and_said_once() -> None:
    printer, out, err = _printer()
    for _ in range(3):
        printer.show({**LINE, "replaced": True})
    assert out.getvalue().splitlines() == ["web.1a2b@n1 (replaced) | GET / 200"] * 3
    assert err.getvalue().count("no longer runs") == 1


def test_each_replica_keeps_its_colour_and_a_pipe_gets_none() -> None:
    first, out1, _ = _printer(colour=True)
    again, out2, _ = _printer(colour=True)
    for printer in (first, again):
        printer.show(LINE)
        printer.show({**LINE, "replica": "web-9f8e"})
    assert out1.getvalue() == out2.getvalue()  # the same colours from one run to the next
    lines = out1.getvalue().splitlines()
    assert lines[0].startswith("\x1b[") and lines[0] != lines[1].replace("9f8e", "1a2b")
    plain, out, _ = _printer(colour=False)
    plain.show(LINE)
    assert "\x1b[" not in out.getvalue()


def test_notices_go_to_stderr() -> None:
    printer, out, err = _printer()
    printer.show({"notice": "node n2 is not reachable", "node": "n2"})
    assert out.getvalue() == "" and err.getvalue() == "orchestrify: node n2 is not reachable\n"
