"""How far each service is: its healthy replicas against the desired count, and its
rolling update (``UP-TO-DATE``). One place for what ``orchestrify service ls`` and the
status page's services both show, so the two never disagree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["healthy_counts", "rollout_text"]


def healthy_counts(replicas: Iterable[tuple[str, str, str]]) -> dict[str, int]:
    """Per service, its replicas that are healthy and meant to run, from ``(service,
    state, desired)`` triples (a draining replica still answers, but is on its way out:
    it does not count)."""
    found: Counter[str] = Counter(
        service for service, state, desired in replicas if state == "healthy" and desired == "run"
    )
    return dict(found)


def rollout_text(*, updated: int, desired: int, state: str | None) -> str:
    """Updated/desired replicas ("2/3"), with the rolling update's state when one is
    under way ("2/3 (updating)", "1/3 (paused)")."""
    text = f"{updated}/{desired}"
    state = state or "completed"
    return text if state == "completed" else f"{text} ({state})"
