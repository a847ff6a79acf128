"""The labels on every container a lab starts, so that they can be found and removed.

``TEST_LABEL=1`` marks anything a test or a benchmark started (a clean-up may remove all
of it); ``RUN_LABEL=<id>`` marks one run's, so a run removes only its own.
"""

from __future__ import annotations

__all__ = ["RUN_LABEL", "TEST_LABEL"]

TEST_LABEL = "orchestrify.test"
RUN_LABEL = "orchestrify.test.run"
