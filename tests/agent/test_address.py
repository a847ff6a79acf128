"""The agent's address: detected towards the controller unless pinned, and followed."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrify.agent import Agent, AgentSettings
from orchestrify.agent import agent as agent_module
from orchestrify.agent.address import detect_address
from orchestrify.errors import NodeUnreachable


def settings(
    tmp_path: Path, *, pinned: str | None = None, url: str = "http://127.0.0.1:1"
) -> AgentSettings:
    return AgentSettings(
        controller_url=url,
        join_token="j",
        name="n",
        advertise_address=pinned,
        state_dir=tmp_path,
        metrics_port=None,
    )


def test_detects_the_source_address_towards_the_controller() -> None:
    # Loopback routes from loopback; nothing is sent (UDP connect only picks a route).
    assert detect_address("http://127.0.0.1:18080") == "127.0.0.1"
    assert detect_address("http://127.0.0.7:18080") == "127.0.0.1"


def test_a_url_without_host_is_an_orchestrify_error() -> None:
    with pytest.raises(NodeUnreachable):
        detect_address("http:///v1")


def test_bind_address_follows_the_controller_when_not_pinned(tmp_path: Path) -> None:
    assert settings(tmp_path).bind_address == "127.0.0.1"
    assert settings(tmp_path, url="http://controller.example:18080").bind_address == "0.0.0.0"
    assert settings(tmp_path, pinned="10.0.0.5").bind_address == "0.0.0.0"
    assert settings(tmp_path, pinned="127.0.0.1").bind_address == "127.0.0.1"


def test_unpinned_heartbeat_carries_the_detected_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "detect_address", lambda url: "10.1.2.3")
    agent = Agent(settings(tmp_path))
    assert agent._heartbeat(0).address == "10.1.2.3"


def test_a_failed_detection_keeps_the_last_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_route(url: str) -> str:
        raise NodeUnreachable("no route")

    monkeypatch.setattr(agent_module, "detect_address", no_route)
    agent = Agent(settings(tmp_path))
    agent.address = "10.1.2.3"
    assert agent._heartbeat(0).address == "10.1.2.3"


def test_a_pinned_address_is_never_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(url: str) -> str:
        raise AssertionError("detected although pinned")

    monkeypatch.setattr(agent_module, "detect_address", fail)
    agent = Agent(settings(tmp_path, pinned="10.0.0.5"))
    assert agent.address == "10.0.0.5"
    assert agent._heartbeat(0).address is None  # the registration said it


def test_a_list_of_controllers_uses_the_first_with_a_route() -> None:
    # The first has no host at all, the second no usable port: the third gives the address.
    assert detect_address("http:///v1,http://127.0.0.1:99999,http://127.0.0.9:18080") == (
        "127.0.0.1"
    )
    assert detect_address(["http://127.0.0.9:18080", "http:///v1"]) == "127.0.0.1"


def test_a_list_where_no_controller_has_a_route_names_each() -> None:
    with pytest.raises(NodeUnreachable) as caught:
        detect_address("http:///a,http://127.0.0.1:99999")
    assert "no host in the controller URL 'http:///a'" in str(caught.value)
    assert "bad port in the controller URL 'http://127.0.0.1:99999'" in str(caught.value)


def test_bind_address_is_loopback_only_when_every_controller_is(tmp_path: Path) -> None:
    both = "http://127.0.0.1:18080,http://127.0.0.2:18080"
    assert settings(tmp_path, url=both).bind_address == "127.0.0.1"
    mixed = "http://127.0.0.1:18080,http://controller.example:18080"
    assert settings(tmp_path, url=mixed).bind_address == "0.0.0.0"
