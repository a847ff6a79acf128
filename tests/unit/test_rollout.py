"""The shared rollout figures: what `service ls` and the status page both show."""

from __future__ import annotations

from orchestrify.rollout import healthy_counts, rollout_text


def test_only_healthy_replicas_meant_to_run_count() -> None:
    counts = healthy_counts(
        [
            ("web", "healthy", "run"),
            ("web", "healthy", "run"),
            ("web", "healthy", "stop"),  # draining: on its way out
            ("web", "starting", "run"),
            ("api", "unhealthy", "run"),
        ]
    )
    assert counts == {"web": 2}


def test_the_rollout_text_names_an_update_under_way() -> None:
    assert rollout_text(updated=3, desired=3, state="completed") == "3/3"
    assert rollout_text(updated=0, desired=2, state=None) == "0/2"
    assert rollout_text(updated=1, desired=3, state="updating") == "1/3 (updating)"
    assert rollout_text(updated=1, desired=3, state="paused") == "1/3 (paused)"
