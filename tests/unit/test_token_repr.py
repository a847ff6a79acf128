"""Objects that hold a token never show it in their repr, which is what a log line, an
``extra=`` field, an f-string or a traceback prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrify.agent import AgentSettings
from orchestrify.agent.state import NodeIdentity
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.settings import ControllerSettings
from orchestrify.edge import EdgeSettings

SECRET = "s3cret-token-that-must-not-show"


def test_controller_settings_hide_both_tokens(tmp_path: Path) -> None:
    settings = ControllerSettings(data_dir=tmp_path, token=SECRET, join_token=SECRET + "-join")
    assert settings.token == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)


def test_controller_state_hides_both_tokens() -> None:
    hidden = {f.name for f in dataclasses.fields(ControllerState) if not f.repr}
    assert {"admin_token", "join_token"} <= hidden


def test_agent_settings_and_identity_hide_their_tokens(tmp_path: Path) -> None:
    settings = AgentSettings(
        controller_url="http://127.0.0.1:18080", join_token=SECRET, name="n1", state_dir=tmp_path
    )
    identity = NodeIdentity(node_id="abc", node_token=SECRET)
    for obj in (settings, identity):
        assert SECRET not in repr(obj), obj


def test_edge_settings_hide_the_token(tmp_path: Path) -> None:
    settings = EdgeSettings(
        controller_url="http://127.0.0.1:18080", token=SECRET, nginx_conf_dir=tmp_path
    )
    assert settings.token == SECRET
    assert SECRET not in repr(settings)
