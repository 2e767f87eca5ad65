"""Fault injection for the reliability tests: a worker process dies abruptly at a chosen point, once.

Off unless the environment variable `SAS_RAY_FAULT` is set, as `<point>:<count>:<marker file>`; then the process
running `point` calls `os._exit(1)` when its count reaches `count`, creating the marker file first. While the marker
exists the fault is disarmed everywhere, so the restarted worker runs on. Points (docs/reliability.md):

    extract-actor   an extraction actor, after fusing `count` frames (before returning that group's partial)
    distill-rank<r> Ray Train rank r, after optimizer step `count` (before that step's checkpoint)

Workers read the variable from their own environment: set it where the workers start (the environment of a local
`sas-ray` run, or a job's runtime_env `env_vars` on a cluster).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "SAS_RAY_FAULT"


@dataclass
class Fault:
    """An armed fault: exit when the count reaches `at`, unless `marker` exists (then it already fired)."""

    at: float
    marker: str

    def check(self, count: int) -> None:
        if count < self.at:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # one process wins, once
        except FileExistsError:
            self.at = float("inf")
            return
        os._exit(1)


def armed_fault(point: str) -> Fault | None:
    """The fault armed for `point` by $SAS_RAY_FAULT, or None (the normal case: callers skip the check)."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, count, marker = spec.split(":", 2)
    if name != point or os.path.exists(marker):
        return None
    return Fault(int(count), marker)
