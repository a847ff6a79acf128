"""The agent: runs on every worker host, keeps its assigned replicas running and healthy.

Public face: ``Agent`` (the program), ``AgentSettings``/``HealSettings`` (its knobs).
The parts: ``docker_engine`` (the only door to Docker), ``reconcile`` (desired vs actual,
healing decisions as values), ``probe`` (HTTP health checks), ``state`` (identity file),
``metrics`` (its Prometheus registry).
"""

from orchestrify.agent.agent import Agent, default_node_name
from orchestrify.agent.settings import AgentSettings, HealSettings

__all__ = ["Agent", "AgentSettings", "HealSettings", "default_node_name"]
