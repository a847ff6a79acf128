"""Values that cross a border for jobs: the request, the job as stored, its events."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrify.jobs.validation import (
    EXTRA_VAR_KEY,
    LIMIT_PATTERN,
    MAX_LIMIT_LEN,
    MAX_PLAYBOOK_LEN,
    PLAYBOOK_PATTERN,
    RESERVED_EXTRA_VAR_PREFIX,
    RESERVED_EXTRA_VARS,
)

# What check_extra_vars takes as a key, stated in the schema: an identifier that is not
# one of Ansible's own (ansible_*, in any case, and the magic variables).
EXTRA_VAR_NAMES: dict[str, Any] = {
    "pattern": EXTRA_VAR_KEY.pattern,
    "not": {
        "anyOf": [
            {"pattern": "^" + "".join(f"[{c.upper()}{c}]" for c in RESERVED_EXTRA_VAR_PREFIX)},
            {"enum": sorted(RESERVED_EXTRA_VARS)},
        ]
    },
}


# A job's id, as ``new_job_id`` makes it: 12 lowercase hex digits (48 random bits). A
# path or form naming anything else names no job, and is answered without a store read.
JOB_ID = re.compile(r"[0-9a-f]{12}")


def new_job_id() -> str:
    return secrets.token_hex(6)


class JobStatus(StrEnum):
    PENDING = "pending"  # accepted; waiting for its hosts to be free (or to be resolved)
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELED = "canceled"
    # The controller that ran it stopped leading (died, or lost the database) before it
    # recorded an outcome: what the playbook did is unknown, and it is not run again.
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self in (
            JobStatus.SUCCESSFUL,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.LOST,
        )


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``. Checked by :func:`orchestrify.jobs.validation`."""

    model_config = ConfigDict(extra="forbid")

    playbook: str = Field(
        # stated here, checked by resolve_playbook (its 422 says why in words)
        json_schema_extra={"maxLength": MAX_PLAYBOOK_LEN, "pattern": PLAYBOOK_PATTERN.pattern},
        description="Playbook file relative to the controller's playbook directory, "
        "e.g. workers.yml. A running controller's schema lists its playbooks as the enum.",
    )
    limit: str | None = Field(
        None,
        # stated here, checked by check_limit (its 422 says why in words)
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_LIMIT_LEN,
            "pattern": LIMIT_PATTERN.pattern,
        },
        description="Ansible --limit pattern: hosts and groups separated by commas, "
        "with ':', '!' and '&' (e.g. 'workers:!host3'). Omit for every host.",
    )
    extra_vars: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": EXTRA_VAR_NAMES},
        description="Variables passed to Ansible as extra vars (keys are identifiers).",
    )
    reason: str | None = Field(
        None, max_length=500, description="Why the job runs; recorded in the event trail."
    )


class HostStats(BaseModel):
    """One host's line of Ansible's PLAY RECAP."""

    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class Job(BaseModel):
    id: str
    playbook: str
    limit: str | None
    extra_vars: dict[str, Any]
    reason: str | None
    status: JobStatus
    rc: int | None = Field(None, description="ansible-playbook's exit code once finished.")
    error: str | None = Field(None, description="Why the job failed or was canceled, if known.")
    hosts: list[str] | None = Field(
        None,
        description="Hosts the job may touch, resolved from its limit; ['*'] when unknown "
        "(the job then waits for every other job). None until resolved.",
    )
    stats: dict[str, HostStats] = Field(default_factory=dict, description="Per host.")
    controller: str | None = Field(
        None,
        description="Id of the controller that ran (or runs) the job; its private data dir "
        "(ansible-runner's raw artifacts) is on that controller's disk. None until started.",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobEvent(BaseModel):
    """One ansible-runner event, trimmed to what a person reads."""

    counter: int = Field(description="ansible-runner's event counter; resume with ?after=N.")
    event: str = Field(description="e.g. playbook_on_task_start, runner_on_ok, runner_on_failed.")
    host: str | None = None
    task: str | None = None
    play: str | None = None
    changed: bool | None = None
    stdout: str = ""
    created: datetime | None = None
