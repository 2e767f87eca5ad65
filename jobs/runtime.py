"""Starting or joining Ray for a stage, and the small report every stage returns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from jobs.console import progress_bar
from sas_ray.errors import SasError, unit_message
from sas_ray.lineage import Recipe
from sas_ray.manifest import Plan, UnitResult
from sas_ray.storage import StoredObject, WriteError


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
    first_work_seconds: float = 0.0  # until the work of that first result began (its arrival less its compute)
    load_seconds: float = 0.0  # the slowest actor's construction (imports, model loads) of this stage's pool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # input left out without failing a unit (e.g. a lost pose)
    outputs: dict[str, str] = field(default_factory=dict)
    reran: dict[str, int] = field(default_factory=dict)  # why units that were not skipped ran -> how many

    def planned(self, plan: Plan) -> StageReport:
        """Take a manifest plan's counts: units skipped, and why the others run."""
        self.skipped += plan.skipped
        self.ran_because(plan.reasons)
        return self

    def ran_because(self, reasons: dict[str, int]) -> None:
        for reason, count in reasons.items():
            if count > 0:
                self.reran[reason] = self.reran.get(reason, 0) + count

    def why(self) -> str:
        """'2 config changed: k_thresh 0.01 -> 0.05; 1 new', most frequent reason first."""
        return "; ".join(f"{n} {why}" for why, n in sorted(self.reran.items(), key=lambda kv: (-kv[1], kv[0])))

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
        if self.reran:
            lines.append(f"  ran because: {self.why()}")
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  {k}: {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


def run_unit_tasks(fn: Callable, units: list[tuple[str, tuple]], manifest, report: StageReport, desc: str,
                   progress: bool, num_cpus: float = 1, num_gpus: float = 0) -> None:
    """One Ray task per unit (`fn(*args) -> UnitResult`), results recorded in `manifest` and `report` as they
    complete, with a progress bar. Each task holds `num_cpus` and `num_gpus`: an autoscaling cluster adds the nodes
    that demand asks for (a GPU node for `num_gpus` > 0), and no more tasks run on a node than it has GPUs for. An
    output that cannot be written (WriteError: disk full, permission denied, S3 down after every retry) stops the
    stage at once: the units in flight are cancelled, what finished is recorded, and the error is raised naming the
    object."""
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    pending = {remote.remote(*args): unit for unit, args in units}
    with progress_bar(len(pending), desc, "scene", not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except WriteError as err:  # Ray re-raises a task's error as a subclass of its type
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(err, "cause", None) or err  # without Ray's traceback
                manifest.record(UnitResult.failed(unit, unit_message(unit, cause)))
                raise WriteError(f"{report.stage} stopped: {cause}") from None
            except ray.exceptions.RayError as err:  # the task died (OOM, node lost): that unit fails, not the stage
                result = UnitResult.failed(unit, f"{unit}: task failed: {err}")
            manifest.record(result)
            report.count(result)
            bar.update(1)
    manifest.flush()


UNIT_ERRORS = (SasError, OSError, ValueError)  # bad input or storage: that unit fails, the stage goes on


def scene_unit(scene_id: str, recipe: Recipe, work: Callable[[], tuple[str, StoredObject]],
               errors: tuple[type[BaseException], ...] = UNIT_ERRORS) -> UnitResult:
    """Run one scene's `work` (-> output path, the object written) into a manifest row made with `recipe`; `errors`
    become an error row naming the scene, except a WriteError, which stops the stage."""
    start = time.perf_counter()
    try:
        path, stored = work()
    except WriteError:
        raise
    except errors as err:
        return UnitResult.failed(scene_id, unit_message(scene_id, err), time.perf_counter() - start, recipe)
    return UnitResult.ok(scene_id, path, stored, time.perf_counter() - start, recipe)
