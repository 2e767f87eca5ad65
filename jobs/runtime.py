"""Starting or joining Ray for a stage, and the small report every stage returns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from jobs.console import progress_bar
from sas_ray.errors import SasError, unit_message
from sas_ray.storage import UnitResult


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
    first_output_seconds: float = 0.0  # start-up: until the first unit's result arrived (model loads, scheduling)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # input left out without failing a unit (e.g. a lost pose)
    outputs: dict[str, str] = field(default_factory=dict)

    def count(self, result) -> None:
        """Tally one unit's manifest row."""
        if result.status == "ok":
            self.done += 1
        else:
            self.failed += 1
            self.errors.append(result.error)

    def summary(self) -> str:
        lines = [f"{self.stage}: {self.done} done, {self.skipped} already done (skipped), {self.failed} failed "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  {k}: {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


def run_unit_tasks(fn: Callable, units: list[tuple[str, tuple]], manifest, report: StageReport, desc: str,
                   progress: bool, num_cpus: float = 1, num_gpus: float = 0) -> None:
    """One Ray task per unit (`fn(*args) -> UnitResult`), results recorded in `manifest` and `report` as they
    complete, with a progress bar. Each task holds `num_cpus` and `num_gpus`: an autoscaling cluster adds the nodes
    that demand asks for (a GPU node for `num_gpus` > 0), and no more tasks run on a node than it has GPUs for."""
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    pending = {remote.remote(*args): unit for unit, args in units}
    with progress_bar(len(pending), desc, "scene", not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the task died (OOM, node lost): that unit fails, not the stage
                result = UnitResult.failed(unit, f"{unit}: task failed: {err}")
            manifest.record(result)
            report.count(result)
            bar.update(1)
    manifest.flush()


UNIT_ERRORS = (SasError, OSError, ValueError)  # bad input or storage: that unit fails, the stage goes on


def scene_unit(scene_id: str, cfg_hash: str, work: Callable[[], tuple[str, str, int]],
               errors: tuple[type[BaseException], ...] = UNIT_ERRORS) -> UnitResult:
    """Run one scene's `work` (-> output path, sha256, bytes) into a manifest row; `errors` become an error row
    naming the scene."""
    start = time.perf_counter()
    try:
        path, digest, nbytes = work()
    except errors as err:
        return UnitResult.failed(scene_id, unit_message(scene_id, err), time.perf_counter() - start, cfg_hash)
    return UnitResult.ok(scene_id, path, digest, nbytes, time.perf_counter() - start, cfg_hash)
