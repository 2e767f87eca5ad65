"""The distillation training loop as a library (docs/method.md §3, §5.7, §5.8): where a run's scenes come from
(`SceneSource`), a step's batch (`load_batch`: read, augmented, voxelized; built ahead of the step by
`sas_ray.distill.loader`), the per-step random generator, stage 2's history initialisation, and `train_stage`, the
loop over epochs and steps.

`jobs/distill.py` wraps `train_stage` in a Ray Train worker (the DDP model, checkpoints through `ray.train.report`);
tests and the study's oracle call it in-process. Every random draw is a function of (seed, rank, step), so a run
resumed from a checkpoint continues exactly as an uninterrupted one would, whatever its loader threads or processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from sas_ray.config import DistillConfig
from sas_ray.distill.batch import Batch, SceneSample, collate, voxelize_scene
from sas_ray.distill.history import PredictionHistory, scene_assignment, steps_per_epoch, superpoint_average
from sas_ray.distill.loader import GPU_LOADER_PROCESSES, Plan, process_batches, thread_batches
from sas_ray.distill.sparse import SparseBackend
from sas_ray.distill.steps import learning_rate, optimizer_step, predict_points, stage1_step, stage2_step
from sas_ray.errors import InputError
from sas_ray.storage import Storage

@dataclass(frozen=True)
class SceneSource:
    """Where a run reads its scenes: the prepared scenes, the superpoints' root (None: each point its own
    superpoint, enough for prediction), and the root and folder of the fused features (features/{features}/;
    stage 1's targets)."""

    prepared: Storage
    superpoints: Storage | None
    output: Storage | None = None
    features: str | None = None

    @classmethod
    def of(cls, cfg: DistillConfig) -> SceneSource:
        options = dict(cfg.storage.options)
        return cls(Storage(cfg.prepared, options), Storage(cfg.superpoints or cfg.output, options),
                   Storage(cfg.output, options), cfg.features)

    def load(self, scene_id: str, with_features: bool) -> SceneSample:
        """A scene's points, superpoints, labels and (stage 1) fused features (left in storage, read by row)."""
        from sas_ray.distill.stored_features import open_features
        from sas_ray.prepared import read_scene
        from sas_ray.superpoints import read_superpoints

        scene = read_scene(self.prepared, scene_id)
        superpoints = np.arange(scene.num_points) if self.superpoints is None else \
            read_superpoints(self.superpoints, scene_id).numpy()
        features = open_features(self.output, self.features, scene_id) if with_features else None
        return SceneSample(scene_id, scene.points, superpoints, features, scene.labels)


AUGMENTATION = 1  # the augmentation's random stream: step_generator([*seed, AUGMENTATION], step)


def step_generator(seed: list[int], step: int) -> torch.Generator:
    """The CPU torch generator of a training step's draws (the loss's voxel subset): a function of (seed, rank,
    step) only, so a resumed run and the loader threads draw what the uninterrupted run draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([*seed, step]).generate_state(1)[0]))


def load_batch(source: SceneSource, cfg: DistillConfig, stage: str, voxel_size: float, seed: list[int], step: int,
               scene_ids: list[str], device: torch.device) -> Batch:
    """Step `step`'s batch on `device`: the scenes read, then augmented, voxelized and collated there with the
    step's random stream; for stage 1 the loss's voxel subset is drawn here, as the step would draw it, and only
    its targets are gathered."""
    generator = step_generator([*seed, AUGMENTATION], step)
    with loader_stream(device) as hand_over:
        scenes = [voxelize_scene(source.load(s, stage == "stage1"), voxel_size, generator, train=True, device=device)
                  for s in scene_ids]
        if stage != "stage1":
            return hand_over(collate(scenes, generator))
        return hand_over(collate(scenes, generator, cfg.supervision_limit, step_generator(seed, step)))


@contextmanager
def loader_stream(device: torch.device):
    """On CUDA, a loader thread's kernels run on a stream of their own, so they overlap the training step; yields
    `hand_over(batch)`, which waits for them and tells the allocator the batch is used on the default stream."""
    if device.type != "cuda":
        yield lambda batch: batch
        return
    stream = torch.cuda.Stream(device)

    def hand_over(batch: Batch) -> Batch:
        stream.synchronize()
        for value in vars(batch).values():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(torch.cuda.default_stream(device))
        return batch

    with torch.cuda.stream(stream):
        yield hand_over


def initialise_history(source: SceneSource, model, backend: SparseBackend, history: PredictionHistory,
                       scene_ids: list[str], voxel_size: float, device: torch.device, seed: list[int]) -> None:
    """SAS `initialize_pred`: the stage-1 model's superpoint-averaged prediction per point, for scenes without one."""
    for scene_id in scene_ids:
        if history.exists(scene_id):
            continue
        sample = source.load(scene_id, with_features=False)
        pred = predict_points(getattr(model, "module", model), backend, sample, voxel_size, 1,
                              step_generator(seed, len(scene_id)), device)
        history.write(scene_id, superpoint_average(pred, torch.from_numpy(sample.superpoints).to(device)))


def new_progress() -> dict:
    """The counters a checkpoint carries: optimizer steps, epoch, steps and scenes consumed in it, scenes consumed
    in all, whether the stage finished, the loss curve [(step, loss, learning rate, unix time)], the worker count
    of each start [(first step, workers)]."""
    return {"step": 0, "epoch": 0, "epoch_step": 0, "epoch_consumed": 0, "consumed": 0, "finished": False,
            "losses": [], "workers": []}


@dataclass
class StageRun:
    """One worker's share of a stage: what `train_stage` trains and where it reports.

    `model` may be DDP-wrapped; `report(loss)` is called at every checkpoint (every `checkpoint_every` steps, at the
    end, and when `stop_after_steps` ends the invocation); `after_step(progress)` after each optimizer step (the
    progress bar, fault injection in the reliability tests)."""

    cfg: DistillConfig
    stage: str
    scenes: list[str]
    voxel_size: float
    source: SceneSource
    model: torch.nn.Module
    backend: SparseBackend
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    rank: int = 0
    world: int = 1
    text: torch.Tensor | None = None
    history: PredictionHistory | None = None
    progress: dict = field(default_factory=new_progress)
    report: Callable[[float], None] = lambda loss: None
    after_step: Callable[[dict], None] = lambda progress: None

    @property
    def seed(self) -> list[int]:
        return [self.cfg.seed, self.rank]

    @property
    def amp(self) -> bool:
        return self.cfg.mixed_precision and self.device.type == "cuda"


def planned_scenes(cfg: DistillConfig, stage: str, num_scenes: int) -> int:
    """The scene visits a stage consumes: epochs x scenes x loop, whatever the number of workers."""
    return getattr(cfg, stage).epochs * num_scenes * cfg.loop


def schedule(cfg: DistillConfig, stage: str, num_scenes: int) -> tuple[int, int]:
    """(scenes consumed before `stage`, scenes of the whole schedule). Stage 1 and stage 2 are one poly schedule, as
    the SAS paper trains them (100 epochs: 70 of superpoint distillation, then 30 with self-distillation): stage 2
    continues stage 1's learning rate and optimizer state rather than restarting them."""
    stage1, stage2 = (planned_scenes(cfg, s, num_scenes) for s in ("stage1", "stage2"))
    return (0 if stage == "stage1" else stage1), stage1 + stage2


def train_stage(run: StageRun) -> None:
    """Train `run.stage` from `run.progress` until it has consumed its planned scenes (`planned_scenes`, to within
    one global batch: no partial step), or `max_steps`, or `stop_after_steps` steps of this invocation; updates
    `run.progress` in place.

    Elastic: progress is counted in scenes, so a run restored at another worker count continues the same schedule
    (the learning rate follows the scenes consumed) and ends after the same scenes. An epoch deals its scenes to the
    workers (`scene_assignment`, each scene one owner) and runs while every worker has a full batch; a restore in
    the middle of an epoch continues it after the scenes already consumed in it."""
    cfg, progress = run.cfg, run.progress
    global_batch = cfg.batch_size * run.world
    per_epoch = steps_per_epoch(len(run.scenes), run.world, cfg.loop, cfg.batch_size)
    if per_epoch == 0:
        raise InputError(f"{len(run.scenes)} scenes x loop {cfg.loop} give no full batch of {cfg.batch_size} on "
                         f"each of {run.world} workers")
    planned = planned_scenes(cfg, run.stage, len(run.scenes))
    before, total = schedule(cfg, run.stage, len(run.scenes))
    progress["epoch_step"] = progress.get("epoch_consumed", 0) // global_batch
    progress.setdefault("workers", []).append((progress["step"], run.world))  # (first step, workers) per start
    stop = getattr(cfg, run.stage).max_steps or float("inf")

    def more() -> bool:
        return progress["consumed"] + global_batch <= planned and progress["step"] < stop

    if progress["epoch_step"] >= per_epoch:  # restored at more workers: what was left of the epoch is no full batch
        progress["epoch"], progress["epoch_step"], progress["epoch_consumed"] = progress["epoch"] + 1, 0, 0
    steps = min((planned - progress["consumed"]) // global_batch, stop - progress["step"],
                cfg.stop_after_steps or stop)  # the invocation's steps: no batch is loaded that no step takes
    run.model.train()
    with closing(stage_batches(run, stage_plan(run, per_epoch, max(0, int(steps))))) as batches:
        for done_here, (batch, waited) in enumerate(batches, start=1):
            lr, loss = _step(run, batch, before + progress["consumed"], total, global_batch)
            progress["step"] += 1
            progress["consumed"] += global_batch
            progress["epoch_step"] += 1
            progress["epoch_consumed"] += global_batch
            progress["losses"].append((progress["step"], loss, lr, time.time(), waited))  # waited > 0: loader-bound
            run.after_step(progress)
            if progress["epoch_step"] == per_epoch:
                progress["epoch"], progress["epoch_step"], progress["epoch_consumed"] = progress["epoch"] + 1, 0, 0
            progress["finished"] = not more()
            interrupted = cfg.stop_after_steps is not None and done_here >= cfg.stop_after_steps
            if progress["finished"] or interrupted or progress["step"] % cfg.checkpoint_every == 0:
                run.report(loss)
            if progress["finished"] or interrupted:
                return
    progress["finished"] = True
    run.report(float("nan"))  # nothing left to do (a rerun of a finished stage): keep its checkpoint current


def stage_plan(run: StageRun, per_epoch: int, steps: int) -> Plan:
    """(step, scene ids) of the next `steps` batches, epoch after epoch from `run.progress`: each epoch's scenes
    dealt to this worker (`scene_assignment`), cut into full batches (its last, partial one dropped)."""
    cfg, progress = run.cfg, run.progress
    plan, epoch, first = [], progress["epoch"], progress["epoch_step"]
    while len(plan) < steps:
        order = scene_assignment(run.scenes, epoch, run.rank, run.world, cfg.loop, cfg.seed)
        for i in range(first, per_epoch)[:steps - len(plan)]:
            plan.append((progress["step"] + len(plan), order[i * cfg.batch_size:(i + 1) * cfg.batch_size]))
        epoch, first = epoch + 1, 0
    return plan


def stage_batches(run: StageRun, plan: Plan) -> Iterator[tuple[Batch, float]]:
    """The planned batches on `run.device` with the seconds the step waited for each, from the loader `run.cfg`
    chooses (`sas_ray.distill.loader`)."""
    cfg, processes = run.cfg, run.cfg.loader_processes
    if processes is None:
        processes = GPU_LOADER_PROCESSES if run.device.type == "cuda" else 0
    load = partial(load_batch, run.source, cfg, run.stage, run.voxel_size, run.seed,
                   device=torch.device("cpu") if processes else run.device)
    if processes:
        return process_batches(load, plan, processes, cfg.prefetch, run.device)
    return thread_batches(load, plan, cfg.prefetch)


def _step(run: StageRun, batch: Batch, consumed: int, total: int, global_batch: int) -> tuple[float, float]:
    """One optimizer step after `consumed` of the schedule's `total` scenes; returns (learning rate, loss)."""
    cfg = run.cfg
    lr = learning_rate(cfg.base_lr, consumed / total, consumed == 0, global_batch, cfg.lr_reference_batch,
                       cfg.lr_x10_quirk)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    generator = step_generator(run.seed, run.progress["step"])
    if run.stage == "stage1":
        loss, _ = stage1_step(run.model, run.backend, batch, run.device, generator, cfg.supervision_limit, run.amp)
    else:
        loss, _ = stage2_step(run.model, run.backend, batch, run.device, run.history, cfg.ema_momentum, run.text,
                              generator, cfg.supervision_limit, run.amp, run.progress["step"] + 1)
    optimizer_step(run.optimizer, run.scaler, loss)
    return lr, float(loss.item())
