"""The agent's --log-collector: which containers ship to the fleet's collector, how the
address is checked, and that the choice leaves the services' spec hashes alone."""

from __future__ import annotations

import importlib
from collections.abc import Coroutine
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from orchestrify.agent.docker_engine import ContainerSpec
from orchestrify.agent.log_collector import (
    ContainerLogging,
    container_logging,
    parse_log_collector,
)
from orchestrify.agent.reconcile import LocalReplica, Nothing, decide
from orchestrify.agent.settings import AgentSettings
from orchestrify.cli import app
from orchestrify.errors import InvalidSpec
from orchestrify.models import Assignment
from tests.agent.test_reconcile import (
    HEAL,
    Clock,
    FakeEngine,
    FakeProber,
    assignment,
    container,
    make,
    sync,
)

COLLECTOR = "udp://10.0.0.10:514"


def logging_of(
    driver: str = "json-file", opts: dict[str, str] | None = None, collector: str | None = COLLECTOR
) -> ContainerLogging:
    return container_logging(
        service="web",
        log_driver=driver,
        log_opts=opts or {},
        collector=collector,
        local_max_size="10m",
        local_max_file=3,
    )


# --- container_logging: pure -------------------------------------------------------------
def test_a_service_without_a_driver_of_its_own_ships_to_the_collector() -> None:
    assert logging_of() == ContainerLogging(
        driver="syslog",
        opts={
            "syslog-address": COLLECTOR,
            "syslog-format": "rfc5424",
            "tag": "web",  # the collector files it as web.log
            "cache-max-size": "10m",  # Docker's local copy, bounded like json-file
            "cache-max-file": "3",
        },
    )


@pytest.mark.parametrize(
    ("driver", "opts"),
    [
        ("json-file", {"max-size": "1g"}),  # options of its own are a choice
        ("local", {}),
        ("journald", {}),
        ("syslog", {"syslog-address": "tcp://elsewhere:514", "tag": "mine"}),
        ("gelf", {"gelf-address": "udp://graylog:12201"}),
    ],
)
def test_a_service_that_chose_keeps_its_driver(driver: str, opts: dict[str, str]) -> None:
    assert logging_of(driver, opts) == ContainerLogging(driver=driver, opts=opts)


def test_without_a_collector_nothing_changes() -> None:
    assert logging_of(collector=None) == ContainerLogging(driver="json-file", opts={})


def test_the_service_options_are_copied_not_shared() -> None:
    opts = {"max-size": "1g"}
    logging_of("json-file", opts).opts["max-size"] = "2g"
    assert opts == {"max-size": "1g"}


# --- parse_log_collector -----------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    ["udp://10.0.0.10:514", "udp://logs.example:6514", "udp://[fd00::10]:514", " udp://h:1 "],
)
def test_collector_addresses_accepted(address: str) -> None:
    assert parse_log_collector(address) == address.strip()


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.10:514", "scheme must be udp://"),
        ("tcp://h:514", "would keep replicas from starting"),
        ("tcp+tls://h:514", "scheme must be udp://"),
        ("http://h:514", "scheme must be udp://"),
        ("udp://:514", "a host is required"),
        ("udp://h_x:514", "a host is required"),
        ("udp://10.0.0.10", "a port from 1 to 65535 is required"),
        ("udp://10.0.0.10:0", "a port from 1 to 65535 is required"),
        ("udp://10.0.0.10:70000", "not udp://HOST:PORT"),
        ("udp://10.0.0.10:x", "not udp://HOST:PORT"),
        ("udp://10.0.0.10:514/x", "only a scheme, a host and a port"),
        ("udp://u@10.0.0.10:514", "only a scheme, a host and a port"),
    ],
)
def test_bad_collector_addresses_say_why(address: str, problem: str) -> None:
    with pytest.raises(InvalidSpec, match=problem) as caught:
        parse_log_collector(address)
    assert caught.value.field == "log_collector"
    assert "e.g. udp://10.0.0.10:514" in str(caught.value)


# --- the reconciler ------------------------------------------------------------------------
def shipped_assignment(**changes: Any) -> Assignment:
    return assignment().model_copy(update={"spec_hash": "hash-1", **changes})


@sync
async def test_new_containers_ship_and_keep_the_service_spec_hash() -> None:
    engine, prober, clock = FakeEngine(), FakeProber(), Clock()
    rec = make(engine, prober, clock)
    rec.log_collector = COLLECTOR
    gelf = {"gelf-address": "udp://graylog:12201"}
    rec.set_assignments(
        [shipped_assignment(), shipped_assignment(replica="r2", log_driver="gelf", log_opts=gelf)]
    )
    rec.step()
    await rec.settle()
    by_replica: dict[str, ContainerSpec] = {
        s.labels["orchestrify.replica"]: s for s in engine.specs
    }
    shipped, own = by_replica["r1"], by_replica["r2"]
    assert shipped.log_config().type == "syslog"
    assert shipped.log_config().config["syslog-address"] == COLLECTOR
    assert shipped.log_config().config["tag"] == "web"
    assert shipped.labels["orchestrify.spec"] == "hash-1"  # the controller's, untouched
    assert (own.log_config().type, own.log_config().config) == ("gelf", gelf)


def test_a_running_container_is_not_replaced_for_the_collector() -> None:
    """The spec hash decides replacement, and the collector is not part of it: a
    json-file container started before the collector was set keeps running."""
    rep = LocalReplica(assignment=shipped_assignment(), container=container(spec="hash-1"))
    assert decide(rep, now=0, heal=HEAL) == Nothing()


# --- the agent's command line --------------------------------------------------------------
class FakeAgent:
    started: ClassVar[list[AgentSettings]] = []

    def __init__(self, settings: AgentSettings) -> None:
        FakeAgent.started.append(settings)

    async def run(self) -> None:
        return None


async def run_nothing(coros: list[Coroutine[Any, Any, None]]) -> None:
    for coro in coros:
        await coro


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> list[AgentSettings]:
    FakeAgent.started = []
    # The module, not the `agent` command that orchestrify.cli exports under that name.
    module = importlib.import_module("orchestrify.cli.agent")
    monkeypatch.setattr(module, "Agent", FakeAgent)
    monkeypatch.setattr(module, "run_until_signalled", run_nothing)
    return FakeAgent.started


BASE = ["agent", "--controller", "http://127.0.0.1:18080", "--join-token", "j", "--name", "n"]


def test_the_cli_takes_the_collector_from_the_flag_or_the_env(
    fake_agent: list[AgentSettings],
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, [*BASE, "--log-collector", "udp://10.0.0.11:514"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, BASE, env={"ORCHESTRIFY_LOG_COLLECTOR": COLLECTOR})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, BASE, env={"ORCHESTRIFY_LOG_COLLECTOR": ""})  # the role's unset
    assert result.exit_code == 0, result.output
    assert [s.log_collector for s in fake_agent] == ["udp://10.0.0.11:514", COLLECTOR, None]


def test_a_bad_collector_is_one_line_and_exit_2(fake_agent: list[AgentSettings]) -> None:
    result = CliRunner().invoke(app, [*BASE, "--log-collector", "http://10.0.0.10:514"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: log collector 'http://10.0.0.10:514'")
    assert fake_agent == []  # nothing started


def test_the_help_explains_the_collector() -> None:
    result = CliRunner().invoke(app, ["agent", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--log-collector" in result.output and "ORCHESTRIFY_LOG_COLLECTOR" in result.output
