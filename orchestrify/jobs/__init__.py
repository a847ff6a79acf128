"""Ansible jobs run by the controller: validation, host resolution, the runner.

``JobRunner`` (in :mod:`orchestrify.jobs.runner`) is the only part that talks to
ansible-runner; it is imported from there so that the store can use these models
without importing the runner.
"""

from orchestrify.jobs.models import HostStats, Job, JobEvent, JobRequest, JobStatus
from orchestrify.jobs.validation import check_extra_vars, check_limit, resolve_playbook

__all__ = [
    "HostStats",
    "Job",
    "JobEvent",
    "JobRequest",
    "JobStatus",
    "check_extra_vars",
    "check_limit",
    "resolve_playbook",
]
