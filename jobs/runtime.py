"""Starting or joining Ray for a stage, and the small report every stage returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray bound to 127.0.0.1 only."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")


@dataclass
class StageReport:
    """What a stage did: counts per outcome and the errors, for the CLI summary and `sas-ray run`'s report."""

    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.stage}: {self.done} done, {self.skipped} already done (skipped), {self.failed} failed "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  {k}: {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)
