"""`orchestrify demo-image`: its help reads well and its errors are one clean line."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import orchestrify.cli.demo as demo_cli
from orchestrify.cli import app
from orchestrify.errors import DockerFailure

runner = CliRunner()


def test_demo_image_is_registered() -> None:
    assert "demo-image" in [command.name for command in app.registered_commands]


def test_help_explains_the_image_and_its_endpoints() -> None:
    result = runner.invoke(app, ["demo-image", "--help"])

    assert result.exit_code == 0, result.output
    for expected in (
        "without any registry",
        "busybox-static",
        "/health",
        "/admin/health?ok=0",
        "/admin/latency?ms=N",
        "ORCHESTRIFY_REPLICA",
        "--tag",
        "--docker-url",
        "orchestrify/demo:latest",
    ):
        assert expected in result.output


def _single_command_app() -> typer.Typer:
    # The command alone, so these tests do not depend on what else the CLI registers.
    alone = typer.Typer()
    alone.command()(demo_cli.demo_image)
    return alone


def test_prints_the_image_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_build(**kwargs: object) -> str:
        calls.append(kwargs)
        return "sha256:abc"

    monkeypatch.setattr(demo_cli, "build_demo_image", fake_build)
    result = runner.invoke(_single_command_app(), ["--tag", "x/demo:1"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "sha256:abc"
    assert calls == [{"tag": "x/demo:1", "docker_url": None}]


def test_failure_is_one_error_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_build(**_kwargs: object) -> str:
        raise DockerFailure("no busybox found; apt-get install busybox-static")

    monkeypatch.setattr(demo_cli, "build_demo_image", failing_build)
    result = runner.invoke(_single_command_app(), [])

    assert result.exit_code == 1
    assert result.stderr == "error: no busybox found; apt-get install busybox-static\n"
    assert result.stdout == ""
