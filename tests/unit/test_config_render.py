"""Rendering the shipped monitoring config: it parses, carries the token, refuses bad input."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrify.cli import app
from orchestrify.config_render import TEMPLATE_DEFAULTS, render_config, templates_dir
from orchestrify.controller.settings import ControllerSettings
from orchestrify.errors import InvalidSpec

URL = "http://127.0.0.1:18080"
TOKEN = "s3cret-token"


def _render(tmp_path: Path, **overrides: object) -> dict[str, Path]:
    paths = render_config(out_dir=tmp_path, controller_url=URL, token=TOKEN, **overrides)
    return {p.name: p for p in paths}


def test_renders_four_files_that_parse(tmp_path: Path) -> None:
    files = _render(tmp_path)
    assert set(files) == {
        "prometheus.yml",
        "rules.yml",
        "alertmanager.yml",
        "grafana-dashboard.json",
    }
    prometheus = yaml.safe_load(files["prometheus.yml"].read_text())
    rules = yaml.safe_load(files["rules.yml"].read_text())
    alertmanager = yaml.safe_load(files["alertmanager.yml"].read_text())
    dashboard = json.loads(files["grafana-dashboard.json"].read_text())

    jobs = {c["job_name"]: c for c in prometheus["scrape_configs"]}
    assert set(jobs) == {
        "orchestrify-controller",
        "orchestrify-agent",
        "orchestrify-edge",
        "orchestrify-node-exporter",
    }
    for config in jobs.values():
        (sd,) = config["http_sd_configs"]
        assert sd["url"] == f"{URL}/v1/discovery/prometheus"
        assert sd["authorization"] == {"type": "Bearer", "credentials": TOKEN}
    assert jobs["orchestrify-controller"]["static_configs"] == [{"targets": ["127.0.0.1:18080"]}]
    assert prometheus["rule_files"] == ["rules.yml"]
    assert prometheus["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}

    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ServiceLatencyHigh",
        "ServiceRequestRateHigh",
        "ServiceRequestRateLow",
        "ReplicaUnhealthy",
        "NodeDown",
        "ControllerLeaderMissing",
        "NodeDiskFull",
        "NodeMemoryPressure",
    }
    for rule in alerts.values():
        assert rule["labels"]["severity"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # Prometheus' own {{ }} survive the Jinja render.
    assert "{{ $labels.service }}" in alerts["ServiceLatencyHigh"]["annotations"]["summary"]

    assert [p["title"] for p in dashboard["panels"]][2:4] == ["Replicas by state", "Nodes by state"]
    assert alertmanager["route"]["group_by"] == ["alertname", "service"]


def test_alertmanager_posts_to_the_webhook_with_the_token(tmp_path: Path) -> None:
    files = _render(tmp_path)
    assert TOKEN in files["alertmanager.yml"].read_text()
    config = yaml.safe_load(files["alertmanager.yml"].read_text())
    (receiver,) = config["receivers"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == f"{URL}/v1/alerts"
    assert webhook["send_resolved"] is True
    # Alertmanager sends no more alerts per notification than the controller takes.
    assert webhook["max_alerts"] == ControllerSettings().max_alerts_per_batch
    assert webhook["http_config"]["authorization"] == {"type": "Bearer", "credentials": TOKEN}
    route = config["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "5s",
        "10s",
        "1m",
    )


def test_files_holding_the_token_are_private(tmp_path: Path) -> None:
    files = _render(tmp_path)
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in files.items()}
    assert modes == {
        "prometheus.yml": 0o600,
        "alertmanager.yml": 0o600,
        "rules.yml": 0o644,
        "grafana-dashboard.json": 0o644,
    }
    assert TOKEN not in files["rules.yml"].read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_overrides_reach_the_files(tmp_path: Path) -> None:
    files = _render(
        tmp_path,
        scrape_interval="15s",
        for_latency="2m",
        alertmanager_targets=["10.1.0.5:9093", "10.1.0.6:9093"],
        repeat_interval="5m",
    )
    prometheus = yaml.safe_load(files["prometheus.yml"].read_text())
    assert prometheus["global"]["scrape_interval"] == "15s"
    (am,) = prometheus["alerting"]["alertmanagers"]
    assert am["static_configs"] == [{"targets": ["10.1.0.5:9093", "10.1.0.6:9093"]}]
    rules = yaml.safe_load(files["rules.yml"].read_text())
    latency = rules["groups"][0]["rules"][0]
    assert (latency["alert"], latency["for"]) == ("ServiceLatencyHigh", "2m")
    alertmanager = yaml.safe_load(files["alertmanager.yml"].read_text())
    assert alertmanager["route"]["repeat_interval"] == "5m"


def test_node_exporter_job_rules_and_panels(tmp_path: Path) -> None:
    """node_exporter's own job (its own interval), the node alerts with their overrides
    (given as text, as `--set` gives them), and the dashboard's node panels."""
    files = _render(
        tmp_path,
        node_scrape_interval="30s",
        for_disk="10m",
        node_disk_free_ratio="0.05",
        node_memory_free_ratio=0.2,
    )
    prometheus = yaml.safe_load(files["prometheus.yml"].read_text())
    jobs = {c["job_name"]: c for c in prometheus["scrape_configs"]}
    job = jobs["orchestrify-node-exporter"]
    assert job["scrape_interval"] == "30s"
    assert job["relabel_configs"] == [
        {"source_labels": ["job"], "regex": "orchestrify-node-exporter", "action": "keep"}
    ]
    rules = yaml.safe_load(files["rules.yml"].read_text())
    (nodes,) = [g for g in rules["groups"] if g["name"] == "orchestrify-nodes"]
    alerts = {r["alert"]: r for r in nodes["rules"]}
    assert alerts["NodeDiskFull"]["for"] == "10m"
    assert ") < 0.05\n" in alerts["NodeDiskFull"]["expr"]
    assert alerts["NodeMemoryPressure"]["for"] == "5m"
    assert ") < 0.2\n" in alerts["NodeMemoryPressure"]["expr"]
    assert "(alert under 20%)" in alerts["NodeMemoryPressure"]["annotations"]["description"]
    dashboard = json.loads(files["grafana-dashboard.json"].read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    for title in ("CPU busy per node", "Memory used per node", "Disk used per node and mount"):
        assert title in titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "node"]


def test_controller_url_with_path_prefix_and_default_port(tmp_path: Path) -> None:
    paths = render_config(out_dir=tmp_path, controller_url="https://ctl.example/orch/", token="t")
    prometheus = yaml.safe_load(paths[0].read_text())
    controller = prometheus["scrape_configs"][0]
    assert controller["scheme"] == "https"
    assert controller["metrics_path"] == "/orch/metrics"
    assert controller["static_configs"] == [{"targets": ["ctl.example:443"]}]
    assert (
        controller["http_sd_configs"][0]["url"]
        == "https://ctl.example/orch/v1/discovery/prometheus"
    )


def test_a_token_with_quotes_stays_one_yaml_string(tmp_path: Path) -> None:
    token = "a\"b'c:#{d}"
    paths = render_config(out_dir=tmp_path, controller_url=URL, token=token)
    alertmanager = yaml.safe_load(paths[2].read_text())
    webhook = alertmanager["receivers"][0]["webhook_configs"][0]
    assert webhook["http_config"]["authorization"]["credentials"] == token


def test_rerender_with_same_input_keeps_the_files(tmp_path: Path) -> None:
    first = _render(tmp_path)
    before = {name: path.stat().st_ino for name, path in first.items()}
    second = _render(tmp_path)
    assert {name: path.stat().st_ino for name, path in second.items()} == before


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host:21",
        "127.0.0.1:18080",
        "",
        "http://",
        "http://host:99999",
        "http://h x",
        "http://u:p@h",
    ],
)
def test_bad_controller_url_names_the_field(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        render_config(out_dir=tmp_path, controller_url=url, token=TOKEN)
    assert info.value.field == "controller_url"
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token", ""),
        ("token", "two words"),
        ("scrape_interval", "5 seconds"),
        ("scrape_interval", "0s"),
        ("for_latency", 30),
        ("alertmanager_targets", "127.0.0.1:9093"),
        ("alertmanager_targets", ["no-port"]),
        ("rule_files", []),
        ("scale_in_ratio", 1.5),
        ("node_disk_free_ratio", 0),
        ("node_memory_free_ratio", True),
        ("node_memory_stall_ratio", "lots"),
        ("node_scrape_interval", "0s"),
        ("for_disk", "5 minutes"),
        ("for_latncy", "30s"),  # a typo is refused, not silently ignored
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, field: str, value: object) -> None:
    kwargs: dict[str, object] = {"controller_url": URL, "token": TOKEN, field: value}
    with pytest.raises(InvalidSpec) as info:
        render_config(out_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_templates_are_found_inside_the_package() -> None:
    folder = templates_dir()
    assert folder.name == "_templates"
    assert (folder / "prometheus" / "rules.yml.j2").is_file()
    # In a checkout it is the repository's templates/ folder, not a copy.
    repo_templates = Path(__file__).resolve().parents[2] / "templates"
    if repo_templates.is_dir():
        assert folder.resolve() == repo_templates.resolve()


# ------------------------------------------------------------------ CLI


def test_cli_render_writes_and_lists_the_files(tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    result = CliRunner().invoke(
        app,
        ["config", "render", "--out", str(out), "--token", TOKEN, "--set", "for_rate=1m"],
    )
    assert result.exit_code == 0, result.output
    for name in ("prometheus.yml", "rules.yml", "alertmanager.yml", "grafana-dashboard.json"):
        assert (out / name).is_file()
        assert name in result.output
    assert "for: 1m" in (out / "rules.yml").read_text()


def test_cli_takes_the_token_from_the_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["config", "render", "--out", str(tmp_path), "--alertmanager", "127.0.0.1:19093"],
        env={"ORCHESTRIFY_TOKEN": "from-env"},
    )
    assert result.exit_code == 0, result.output
    assert "from-env" in (tmp_path / "alertmanager.yml").read_text()
    assert "127.0.0.1:19093" in (tmp_path / "prometheus.yml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--controller-url", "ftp://x", "--token", "t"], "error: controller_url"),
        (["--token", "t", "--set", "nonsense"], "error: --set takes NAME=VALUE"),
        (["--token", "t", "--set", "for_rate=soon"], "error: for_rate must be"),
        ([], "error: no token"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app, ["config", "render", "--out", str(tmp_path), *args], env={"ORCHESTRIFY_TOKEN": ""}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_one_controller_renders_as_before_a_list_of_one(tmp_path: Path) -> None:
    # A list of one and a string of one give the same bytes (the roles pass either).
    render_config(out_dir=tmp_path / "s", controller_url="http://10.0.0.1:18080", token=TOKEN)
    render_config(out_dir=tmp_path / "l", controller_url=["http://10.0.0.1:18080"], token=TOKEN)
    for name in ("prometheus.yml", "alertmanager.yml"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "l" / name).read_bytes()


@pytest.mark.parametrize(
    "urls", ["http://10.0.0.1:18080, http://10.0.0.2:18080", ["http://10.0.0.1:18080", "http://10.0.0.2:18080"]]
)  # fmt: skip
def test_several_controllers_get_a_webhook_and_a_scrape_target_each(
    tmp_path: Path, urls: str | list[str]
) -> None:
    render_config(out_dir=tmp_path, controller_url=urls, token=TOKEN)
    am = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    hooks = am["receivers"][0]["webhook_configs"]
    assert [h["url"] for h in hooks] == [
        "http://10.0.0.1:18080/v1/alerts",
        "http://10.0.0.2:18080/v1/alerts",
    ]
    assert all(h["http_config"]["authorization"]["credentials"] == TOKEN for h in hooks)
    prom = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    controller = jobs["orchestrify-controller"]
    assert controller["static_configs"] == [{"targets": ["10.0.0.1:18080", "10.0.0.2:18080"]}]
    for job in jobs.values():  # discovery from either controller keeps the targets known
        assert [sd["url"] for sd in job["http_sd_configs"]] == [
            "http://10.0.0.1:18080/v1/discovery/prometheus",
            "http://10.0.0.2:18080/v1/discovery/prometheus",
        ]


@pytest.mark.parametrize(
    "urls",
    ["http://10.0.0.1:18080,ftp://10.0.0.2:18080", "http://a:1,https://b:1", "http://a:1,http://b:1/x"],
)  # fmt: skip
def test_a_bad_or_mismatched_controller_in_a_list_names_the_field(
    tmp_path: Path, urls: str
) -> None:
    with pytest.raises(InvalidSpec) as info:
        render_config(out_dir=tmp_path, controller_url=urls, token=TOKEN)
    assert info.value.field == "controller_url"


# Chosen by ``--profile``, not by ``--set``.
NOT_OVERRIDABLE = {"alerting_profile"}


def test_every_default_the_templates_carry_can_be_overridden_and_matches() -> None:
    """A template variable with a default is overridable by name, and TEMPLATE_DEFAULTS
    says the same default (``for_leader`` was missing: refused as unknown)."""
    found: dict[str, str] = {}
    for path in templates_dir().rglob("*.j2"):
        for name, value in re.findall(
            r"set (\w+) = \1 \| default\(([^)]*?)\)(?: \| float)? ?-?[%]", path.read_text()
        ):
            found.setdefault(name, value)
    assert "for_leader" in found
    for name, value in sorted(found.items()):
        if name in NOT_OVERRIDABLE:
            continue
        assert name in TEMPLATE_DEFAULTS, name
        standard = value.split(" else ")[-1]  # a profile's choice: the standard side
        assert json.loads(standard) == TEMPLATE_DEFAULTS[name], name


def test_a_tls_controller_and_a_lower_batch_cap_render_without_ansible(tmp_path: Path) -> None:
    """What the roles set for TLS and for the controller's max_alerts_per_batch, the CLI
    can set too (they were refused as unknown)."""
    files = _render(
        tmp_path, ca_file="/etc/orchestrify/ca.pem", edge_scheme="https", max_alerts="200"
    )
    prometheus = yaml.safe_load(files["prometheus.yml"].read_text())
    ca_files = [
        job.get("tls_config", {}).get("ca_file")
        for job in prometheus["scrape_configs"]
        for job in [job, *job.get("http_sd_configs", [])]
    ]
    assert "/etc/orchestrify/ca.pem" in ca_files
    assert "https" in {job.get("scheme") for job in prometheus["scrape_configs"]}
    alertmanager = yaml.safe_load(files["alertmanager.yml"].read_text())
    (receiver,) = [r for r in alertmanager["receivers"] if r.get("webhook_configs")]
    assert {w["max_alerts"] for w in receiver["webhook_configs"]} == {200}


@pytest.mark.parametrize(
    ("field", "value"),
    [("edge_scheme", "ftp"), ("max_alerts", "0"), ("max_alerts", "1e9"), ("ca_file", "a\nb")],
)
def test_bad_tls_or_batch_values_name_the_field(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        _render(tmp_path, **{field: value})
    assert err.value.field == field


def test_for_leader_reaches_the_rules(tmp_path: Path) -> None:
    files = _render(tmp_path, for_leader="3m")
    rules = yaml.safe_load(files["rules.yml"].read_text())
    leader = [
        r for g in rules["groups"] for r in g["rules"] if r["alert"] == "ControllerLeaderMissing"
    ]
    assert [r["for"] for r in leader] == ["3m"]
