"""`orchestrify edge`: bad input is one line and exit 2, before anything starts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrify.cli import app
from tests.conftest import require_binary

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--listen", "99999"], "listen '99999'"),
        (["--listen", "eighty"], "listen 'eighty'"),
        (["--metrics-port", "70000"], "metrics_port"),
        (["--telemetry", "maybe"], "--telemetry must be on or off"),
        (["--access-log", "access.log"], "access_log: access log 'access.log': want an absolute"),
        (["--access-log", "/tmp/a b.log"], "access_log: access log '/tmp/a b.log' has ' '"),
        (["--access-log", '/tmp/x";evil'], "has '\"', ';', which cannot go into nginx.conf"),
        (["--access-log", "/tmp/x\n}\x01"], "has '\\x01', '\\n', '}'"),
        (["--access-log", "/no/such/dir/a.log"], "directory '/no/such/dir' does not exist"),
    ],
)
def test_bad_edge_settings_exit_2_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    require_binary("nginx")  # checked first: without it the edge says so instead
    started: list[object] = []
    monkeypatch.setattr("orchestrify.edge.run_edge", lambda settings: started.append(settings))
    base = ["edge", "--token", "t", "--nginx-conf-dir", str(tmp_path / "nginx")]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ") and named in line, line
    assert started == []


def test_up_with_a_bad_listen_exits_2_before_starting_anything(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--data-dir", str(tmp_path), "--listen", "99999"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line == "error: --listen '99999': want PORT or HOST:PORT, PORT from 1 to 65535"
    assert not (tmp_path / "orchestrify.db").exists()  # the controller never opened its store


def test_telemetry_off_reaches_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("nginx")
    started: list[object] = []

    async def fake_run_edge(settings: object) -> None:
        started.append(settings)

    monkeypatch.setattr("orchestrify.edge.run_edge", fake_run_edge)
    # The edge command's module (the package's attribute of that name is the command).
    module = importlib.import_module("orchestrify.cli.edge")
    # Not for the test process itself.
    monkeypatch.setattr(module, "forbid_same_user_inspection", lambda: None)
    base = ["edge", "--token", "t", "--nginx-conf-dir", str(tmp_path / "nginx")]
    result = runner.invoke(app, [*base, "--controller", "http://127.0.0.1:1", "--telemetry", "off"])
    assert result.exit_code == 0, result.output
    assert [getattr(s, "telemetry", None) for s in started] == [False]


def test_the_access_log_comes_from_the_option_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("nginx")
    started: list[object] = []

    async def fake_run_edge(settings: object) -> None:
        started.append(settings)

    monkeypatch.setattr("orchestrify.edge.run_edge", fake_run_edge)
    module = importlib.import_module("orchestrify.cli.edge")
    monkeypatch.setattr(module, "forbid_same_user_inspection", lambda: None)
    base = ["edge", "--token", "t", "--nginx-conf-dir", str(tmp_path / "nginx")]
    base += ["--controller", "http://127.0.0.1:1"]
    result = runner.invoke(app, base)  # off by default
    assert result.exit_code == 0, result.output
    path = tmp_path / "access.json"
    result = runner.invoke(app, base, env={"ORCHESTRIFY_ACCESS_LOG": str(path)})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "--access-log", str(path)])
    assert result.exit_code == 0, result.output
    assert [getattr(s, "access_log", None) for s in started] == [None, path, path]
    result = runner.invoke(app, base, env={"ORCHESTRIFY_ACCESS_LOG": "/tmp/a;b"})
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--access-log" in runner.invoke(app, ["edge", "--help"]).output
