from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from bench.live import serve
from orchestrify.cli import app
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    settings = ControllerSettings(data_dir=tmp_path / "c", token="tok", join_token="j")
    with serve(create_app(settings, registry=CollectorRegistry(), run_reconciler=False)) as u:
        yield u


def cli(url: str, *args: str):
    return runner.invoke(app, ["--controller", url, "--token", "tok", *args])


def test_rules_ls_shows_the_shipped_rules(url: str) -> None:
    r = cli(url, "rules", "ls")
    assert r.exit_code == 0, r.output
    assert "latency-scale-out" in r.output and "scale_out" in r.output
    assert 'alertname="NodeDown"' in r.output and "source: default" in r.output


def test_rules_apply_validates_then_puts(url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "rules:\n"
        "  - name: web-only\n"
        "    matchers: ['alertname=\"ServiceLatencyHigh\"', 'service=~\"web-.*\"']\n"
        "    action: scale_out\n"
        "    step: 2\n"
    )
    r = cli(url, "rules", "apply", str(good))
    assert r.exit_code == 0, r.output
    assert "applied 1 rule(s)" in r.output
    listed = cli(url, "rules", "ls")
    assert (
        "web-only" in listed.output and "step=2" in listed.output and "source: api" in listed.output
    )

    bad = tmp_path / "bad.yml"
    bad.write_text("rules:\n  - name: p\n    matchers: ['a=\"b\"']\n    action: run_playbook\n")
    r = cli(url, "rules", "apply", str(bad))
    assert r.exit_code == 2
    assert "rules.0.playbook: run_playbook needs a playbook" in r.output
    assert "web-only" in cli(url, "rules", "ls").output  # nothing replaced


def test_controller_refuses_a_bad_rules_file_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yml"
    bad.write_text("rules:\n  - name: x\n    matchers: ['a=\"b\"']\n    action: scale_sideways\n")
    r = runner.invoke(app, ["controller", "--data-dir", str(tmp_path / "d"), "--rules", str(bad)])
    assert r.exit_code == 2
    assert "rules.0.action" in r.output
