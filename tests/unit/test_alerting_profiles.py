"""The alerting profiles (`orchestrify config render --profile standard|fast`).

``standard`` is what orchestrify rendered before profiles existed; ``fast`` takes every
timing from PROFILE_DEFAULTS, which must match what the templates hold (Ansible renders
them without Python). The real promtool and amtool accept the fast render, and
`promtool test rules` holds its rules to the profile's promise: a sustained breach fires
within seconds, a 2 s blip and a single slow request never do
(tests/promtool/rules_fast_test.yml).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrify.cli import app
from orchestrify.config_render import PROFILE_DEFAULTS, PROFILES, render_config
from orchestrify.errors import InvalidSpec
from tests.conftest import require_binary

URL = "http://127.0.0.1:18080"
TOKEN = "s3cret-token"
FAST_RULES_TEST = Path(__file__).resolve().parents[1] / "promtool" / "rules_fast_test.yml"


def _render(out: Path, **kwargs: Any) -> dict[str, Any]:
    render_config(out_dir=out, controller_url=URL, token=TOKEN, **kwargs)
    return {
        name: yaml.safe_load((out / name).read_text())
        for name in ("prometheus.yml", "rules.yml", "alertmanager.yml")
    }


def _timings(files: dict[str, Any]) -> dict[str, str]:
    """Every timing variable as it came out in the rendered files."""
    prom, rules, am = files["prometheus.yml"], files["rules.yml"], files["alertmanager.yml"]
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    latency_expr = alerts["ServiceLatencyHigh"]["expr"]
    rate_expr = alerts["ServiceRequestRateHigh"]["expr"]
    (sd_refresh,) = {
        sd["refresh_interval"] for job in prom["scrape_configs"] for sd in job["http_sd_configs"]
    }
    return {
        "scrape_interval": prom["global"]["scrape_interval"],
        "evaluation_interval": prom["global"]["evaluation_interval"],
        "sd_refresh_interval": sd_refresh,
        "group_wait": am["route"]["group_wait"],
        "group_interval": am["route"]["group_interval"],
        "repeat_interval": am["route"]["repeat_interval"],
        "for_latency": alerts["ServiceLatencyHigh"]["for"],
        "for_rate": alerts["ServiceRequestRateHigh"]["for"],
        "for_health": alerts["ReplicaUnhealthy"]["for"],
        "for_node": alerts["NodeDown"]["for"],
        "latency_range": latency_expr.split("_bucket[", 1)[1].split("]", 1)[0],
        "rate_range": rate_expr.split("_total[", 1)[1].split("]", 1)[0],
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_renders_the_timings_it_documents(tmp_path: Path, profile: str) -> None:
    got = _timings(_render(tmp_path, profile=profile))
    expected = {name: PROFILE_DEFAULTS[profile][name] for name in got}
    assert got == expected


def test_the_profiles_differ_where_the_speed_comes_from(tmp_path: Path) -> None:
    fast = _timings(_render(tmp_path / "fast", profile="fast"))
    standard = _timings(_render(tmp_path / "standard", profile="standard"))
    assert (fast["scrape_interval"], fast["evaluation_interval"]) == ("1s", "1s")
    assert fast["group_wait"] == "0s"
    for name in ("scrape_interval", "for_latency", "latency_range", "group_wait"):
        assert fast[name] != standard[name], name


def test_standard_is_the_default_and_renders_byte_for_byte_the_same(tmp_path: Path) -> None:
    render_config(out_dir=tmp_path / "default", controller_url=URL, token=TOKEN)
    render_config(out_dir=tmp_path / "std", controller_url=URL, token=TOKEN, profile="standard")
    for path in (tmp_path / "default").iterdir():
        assert path.read_bytes() == (tmp_path / "std" / path.name).read_bytes(), path.name


def test_an_explicit_value_wins_over_the_profile(tmp_path: Path) -> None:
    got = _timings(_render(tmp_path, profile="fast", for_latency="8s", group_wait="2s"))
    assert (got["for_latency"], got["group_wait"]) == ("8s", "2s")
    assert got["scrape_interval"] == "1s"  # the rest stays the profile's


def test_an_unknown_profile_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as info:
        render_config(out_dir=tmp_path, controller_url=URL, token=TOKEN, profile="quick")
    assert info.value.field == "profile"
    assert "standard, fast" in str(info.value)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # nothing written


def test_cli_renders_the_fast_profile(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["config", "render", "--profile", "fast", "--out", str(tmp_path), "--token", "t"]
    )
    assert result.exit_code == 0, result.output
    assert "alerting profile: fast" in result.output
    assert "scrape_interval: 1s" in (tmp_path / "prometheus.yml").read_text()
    assert "group_wait: 0s" in (tmp_path / "alertmanager.yml").read_text()


def test_cli_refuses_an_unknown_profile_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["config", "render", "--profile", "quick", "--out", str(tmp_path), "--token", "t"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: profile must be one of standard, fast")
    assert result.stderr.count("\n") == 1


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_and_amtool_accept_the_fast_profile(tmp_path: Path) -> None:
    _render(tmp_path, profile="fast")
    _run(require_binary("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    out = _run(require_binary("promtool"), "check", "rules", "rules.yml", cwd=tmp_path)
    assert "8 rules found" in out.stdout
    _run(require_binary("amtool"), "check-config", "alertmanager.yml", cwd=tmp_path)


def test_fast_rules_fire_on_a_sustained_breach_and_not_on_a_blip(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    _render(tmp_path, profile="fast")
    shutil.copy(FAST_RULES_TEST, tmp_path / "rules_fast_test.yml")
    _run(promtool, "test", "rules", "rules_fast_test.yml", cwd=tmp_path)


def test_the_fast_rules_test_fails_on_the_standard_rules(tmp_path: Path) -> None:
    # The unit test above is not vacuous: with the standard profile's 30 s `for`, the
    # sustained breach it expects at 16 s has not fired yet.
    promtool = require_binary("promtool")
    _render(tmp_path, profile="standard")
    shutil.copy(FAST_RULES_TEST, tmp_path / "rules_fast_test.yml")
    result = subprocess.run(
        [promtool, "test", "rules", "rules_fast_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
