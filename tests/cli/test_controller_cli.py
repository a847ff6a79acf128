"""`orchestrify controller`'s options reach its settings; bad ones exit 2 before listening."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrify.cli import app
from orchestrify.controller.settings import ControllerSettings

runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ControllerSettings]:
    """What `orchestrify controller` would serve with, instead of serving."""
    seen: list[ControllerSettings] = []
    monkeypatch.setattr("orchestrify.controller.app.serve_controller", seen.append)
    monkeypatch.delenv("ORCHESTRIFY_HISTORY_RETENTION_DAYS", raising=False)
    return seen


def controller(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    base = ["controller", "--data-dir", str(tmp_path), "--token", "t", "--join-token", "j"]
    return runner.invoke(app, [*base, *args], env=env)


def test_history_retention_days_defaults_to_14(
    tmp_path: Path, served: list[ControllerSettings]
) -> None:
    assert controller(tmp_path).exit_code == 0
    assert [s.history_retention_days for s in served] == [14]


@pytest.mark.parametrize(
    ("args", "env", "days"),
    [
        (["--history-retention-days", "0"], None, 0),
        (["--history-retention-days", "30"], None, 30),
        ([], {"ORCHESTRIFY_HISTORY_RETENTION_DAYS": "7"}, 7),
    ],
)
def test_history_retention_days_from_the_flag_or_the_environment(
    tmp_path: Path,
    served: list[ControllerSettings],
    args: list[str],
    env: dict[str, str] | None,
    days: int,
) -> None:
    result = controller(tmp_path, *args, env=env)
    assert result.exit_code == 0, result.output
    assert [s.history_retention_days for s in served] == [days]


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_history_retention_days_exits_2_naming_the_option(
    tmp_path: Path, served: list[ControllerSettings], value: str
) -> None:
    result = controller(tmp_path, "--history-retention-days", value)
    assert result.exit_code == 2
    assert "--history-retention-days" in result.output
    assert served == []


@pytest.mark.parametrize("command", [["controller"], ["up", "--no-edge"]])
def test_a_bad_setting_from_the_environment_is_one_line_and_exit_2(
    tmp_path: Path, served: list[ControllerSettings], command: list[str]
) -> None:
    """Settings without an option of their own come from ORCHESTRIFY_* variables only;
    a bad one is named with its variable, not shown as a traceback."""
    env = {"ORCHESTRIFY_RECONCILE_INTERVAL_S": "-1", "ORCHESTRIFY_ALERT_STALE_AFTER_S": "soon"}
    result = runner.invoke(app, [*command, "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: invalid setting "), line
    assert "ORCHESTRIFY_RECONCILE_INTERVAL_S" in line
    assert "ORCHESTRIFY_ALERT_STALE_AFTER_S" in line
    assert served == []


def test_liveness_settings_default_to_the_documented_values(
    tmp_path: Path, served: list[ControllerSettings]
) -> None:
    result = controller(tmp_path, "--node-timeout", "7")
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert settings.resolved_node_startup_grace_s == 14  # 2 x --node-timeout
    assert settings.mass_silence_threshold == 0.5
    assert settings.reschedule_nodes_per_minute == 6


def test_liveness_settings_from_the_flags_or_the_environment(
    tmp_path: Path, served: list[ControllerSettings]
) -> None:
    flags = controller(
        tmp_path,
        "--node-startup-grace",
        "90",
        "--mass-silence-threshold",
        "0.3",
        "--reschedule-nodes-per-minute",
        "2",
    )
    assert flags.exit_code == 0, flags.output
    env = {
        "ORCHESTRIFY_NODE_STARTUP_GRACE_S": "45",
        "ORCHESTRIFY_MASS_SILENCE_THRESHOLD": "1",
        "ORCHESTRIFY_RESCHEDULE_NODES_PER_MINUTE": "12",
    }
    from_env = controller(tmp_path, env=env)
    assert from_env.exit_code == 0, from_env.output
    got = [
        (s.resolved_node_startup_grace_s, s.mass_silence_threshold, s.reschedule_nodes_per_minute)
        for s in served
    ]
    assert got == [(90, 0.3, 2), (45, 1, 12)]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--mass-silence-threshold", "0"), ("--mass-silence-threshold", "1.5"),
     ("--reschedule-nodes-per-minute", "0"), ("--node-startup-grace", "-1")],
)  # fmt: skip
def test_a_bad_liveness_setting_exits_2_naming_it(
    tmp_path: Path, served: list[ControllerSettings], flag: str, value: str
) -> None:
    result = controller(tmp_path, flag, value)
    assert result.exit_code == 2, result.output
    name = flag.removeprefix("--").replace("-", "_")
    assert name in result.output.replace("\n", "")
    assert served == []


def test_up_reads_the_liveness_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ControllerSettings] = []

    async def run_up(settings: ControllerSettings, *_: object) -> None:
        seen.append(settings)

    # (``orchestrify.cli.up`` as a dotted name is the command function, not the module.)
    monkeypatch.setattr(importlib.import_module("orchestrify.cli.up"), "run_up", run_up)
    env = {"ORCHESTRIFY_NODE_STARTUP_GRACE_S": "120", "ORCHESTRIFY_MASS_SILENCE_THRESHOLD": "0.8"}
    result = runner.invoke(app, ["up", "--no-edge", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.resolved_node_startup_grace_s == 120
    assert settings.mass_silence_threshold == 0.8


@pytest.mark.parametrize(
    ("args", "env", "port"),
    [
        ([], None, 9100),  # node_exporter's own default
        (["--node-exporter-port", "9200"], None, 9200),
        (["--node-exporter-port", "0"], None, 0),  # no node_exporter listed
        ([], {"ORCHESTRIFY_NODE_EXPORTER_PORT": "9300"}, 9300),
    ],
)
def test_node_exporter_port_from_the_flag_or_the_environment(
    tmp_path: Path,
    served: list[ControllerSettings],
    args: list[str],
    env: dict[str, str] | None,
    port: int,
) -> None:
    result = controller(tmp_path, *args, env=env)
    assert result.exit_code == 0, result.output
    assert [s.node_exporter_port for s in served] == [port]


@pytest.mark.parametrize("value", ["-1", "65536", "nine"])
def test_a_bad_node_exporter_port_exits_2_naming_the_option(
    tmp_path: Path, served: list[ControllerSettings], value: str
) -> None:
    result = controller(tmp_path, "--node-exporter-port", value)
    assert result.exit_code == 2
    assert "--node-exporter-port" in result.output
    assert served == []


# --- the status page's Prometheus ----------------------------------------------------------
def test_no_prometheus_by_default(tmp_path: Path, served: list[ControllerSettings]) -> None:
    result = controller(tmp_path, env={"ORCHESTRIFY_PROMETHEUS_URL": ""})
    assert result.exit_code == 0, result.output
    assert [(s.prometheus_url, s.alerting_profile) for s in served] == [(None, "standard")]


@pytest.mark.parametrize(
    ("args", "env", "url"),
    [
        (["--prometheus-url", "http://127.0.0.1:9090/"], None, "http://127.0.0.1:9090"),
        (
            ["--prometheus-url", "https://mon.example:443/prom"],
            None,
            "https://mon.example:443/prom",
        ),
        ([], {"ORCHESTRIFY_PROMETHEUS_URL": "http://[::1]:9090"}, "http://[::1]:9090"),
    ],
)
def test_the_prometheus_url_from_the_flag_or_the_environment(
    tmp_path: Path,
    served: list[ControllerSettings],
    args: list[str],
    env: dict[str, str] | None,
    url: str,
) -> None:
    result = controller(tmp_path, *args, "--alerting-profile", "fast", env=env)
    assert result.exit_code == 0, result.output
    assert [(s.prometheus_url, s.alerting_profile) for s in served] == [(url, "fast")]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("ftp://127.0.0.1:9090", "got 'ftp://127.0.0.1:9090'"),
        ("127.0.0.1:9090", "got '127.0.0.1:9090'"),
        ("http://", "got 'http://'"),
        ("http://127.0.0.1:99999", "host or port cannot be read"),
        ("http://127.0.0.1:9090/?x=1", "no query, fragment or space"),
        ("http://admin:s3cret@127.0.0.1:9090", "must not hold a user or password"),
        ("admin:s3cret@127.0.0.1:9090", "must not hold a user or password"),
    ],
)
def test_a_bad_prometheus_url_is_one_line_and_exit_2(
    tmp_path: Path, served: list[ControllerSettings], value: str, said: str
) -> None:
    result = controller(tmp_path, "--prometheus-url", value)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line, line
    assert line.startswith(
        "error: invalid setting prometheus_url (or env ORCHESTRIFY_PROMETHEUS_URL): "
    ), line
    assert said in line
    assert "s3cret" not in line  # a password is never repeated
    assert served == []


def test_a_bad_alerting_profile_exits_2(tmp_path: Path, served: list[ControllerSettings]) -> None:
    result = controller(tmp_path, "--alerting-profile", "quick")
    assert result.exit_code == 2, result.output
    assert "alerting_profile" in result.output and "'standard' or 'fast'" in result.output
    assert served == []


def test_up_takes_the_prometheus_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ControllerSettings] = []

    async def run_up(settings: ControllerSettings, *_: object) -> None:
        seen.append(settings)

    monkeypatch.setattr(importlib.import_module("orchestrify.cli.up"), "run_up", run_up)
    args = ["up", "--no-edge", "--data-dir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--prometheus-url", "http://127.0.0.1:9090"])
    assert result.exit_code == 0, result.output
    assert [s.prometheus_url for s in seen] == ["http://127.0.0.1:9090"]
    bad = runner.invoke(app, [*args, "--prometheus-url", "gopher://x"])
    assert bad.exit_code == 2 and "ORCHESTRIFY_PROMETHEUS_URL" in bad.output


# --- the status page's sessions -------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "seconds"),
    [
        ([], None, 28_800),
        (["--ui-session-s", "3600"], None, 3600),
        ([], {"ORCHESTRIFY_UI_SESSION_S": "900"}, 900),
    ],
)
def test_the_ui_session_from_the_flag_or_the_environment(
    tmp_path: Path,
    served: list[ControllerSettings],
    args: list[str],
    env: dict[str, str] | None,
    seconds: int,
) -> None:
    result = controller(tmp_path, *args, env=env)
    assert result.exit_code == 0, result.output
    assert [s.ui_session_s for s in served] == [seconds]


@pytest.mark.parametrize("value", ["60", "2592001", "an hour"])
def test_a_bad_ui_session_is_one_line_and_exit_2(
    tmp_path: Path, served: list[ControllerSettings], value: str
) -> None:
    result = controller(tmp_path, "--ui-session-s", value)
    assert result.exit_code == 2, result.output
    assert "ui_session_s" in result.output or "--ui-session-s" in result.output
    assert served == []
