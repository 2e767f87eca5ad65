"""`sas-ray distill`: MinkUNet18A distilled from the fused 2D point features on Ray Train (SPEC §3, §5.7, §5.8).

Stage 1 (superpoint distillation) then stage 2 (EMA self-distillation), each one `TorchTrainer` run:
- `ScalingConfig(num_workers=(min, max))`: elastic; a resize restarts the workers from the last checkpoint and the
  schedule continues: progress is counted in scenes consumed, the learning rate is scaled to the global batch.
- `FailureConfig(max_failures)`: a dead worker restarts the group from the last checkpoint.
- Checkpoints every `checkpoint_every` steps to {output}/distill/train/{stage}/ (local or s3://; Ray Train's
  storage). Rerunning the same command restores the run of the same name and continues at its step.
- Data: each worker reads its own scenes from storage (`scene_assignment`: an epoch's scenes are partitioned across
  workers), voxelizes and augments them in `prefetch` loader threads, as many batches ahead of the GPU.
- Stage 2 keeps the EMA history per scene under {output}/distill/history/; a scene is written only by its owner.
The final model of each stage is exported to {output}/distill/{stage}/model.safetensors (`sas-ray predict` reads
it), and its loss curve to {output}/distill/{stage}/losses.json. {output}/distill/manifest.parquet has a row per
stage with its recipe (the training settings; the sha256 of every scene, superpoint and feature file, of the text
encoder and, for stage 2, of the stage-1 model): a finished stage with the same recipe is skipped; one whose recipe
changed is trained from scratch (its old checkpoints and history are removed); an unfinished one resumes.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from jobs.console import progress_bar
from jobs.runtime import StageReport, ensure_ray
from jobs.superpoints import SUPERPOINTS, read_superpoints
from sas_ray.config import PRESETS, DistillConfig
from sas_ray.errors import ConfigError, InputError, SasError
from sas_ray.features import FEATURES
from sas_ray.lineage import Recipe, content_digest, stage_recipe
from sas_ray.manifest import Manifest, UnitResult, open_stage, output_digests
from sas_ray.prepared import SCENES
from sas_ray.storage import Storage, StoredObject, absolute_root

DISTILL = "distill"
STAGES = ("stage1", "stage2")
RECIPE_FIELDS = ("loop", "batch_size", "base_lr", "lr_reference_batch", "lr_x10_quirk", "supervision_limit",
                 "mixed_precision", "seed")  # not resources (workers, GPUs, backend, prefetch) nor checkpointing
VERSION = 1


# -- driver -------------------------------------------------------------------------------------------------------
def train_storage(output: str, options: dict) -> tuple[str, object]:
    """Ray Train's (storage_path, storage_filesystem) for {output}/distill/train: a pyarrow S3 filesystem built
    from the fsspec options (endpoint_url, key, secret, region) for s3://, else an absolute local path."""
    url = Storage(output, options).url(DISTILL, "train")
    if url.startswith("s3://"):
        import pyarrow.fs

        endpoint = options.get("endpoint_url")
        kwargs = {"access_key": options.get("key"), "secret_key": options.get("secret"),
                  "region": (options.get("client_kwargs") or {}).get("region_name")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return url[len("s3://"):], pyarrow.fs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"{url}: Ray Train checkpoints need a local path or s3://")
    return os.path.abspath(url.removeprefix("file://")), None


def training_inputs(cfg: DistillConfig) -> dict:
    """What every worker needs, computed once on the driver: scenes, voxel size, feature dim, text space, text."""
    from jobs.evaluate import vocabulary_prompts
    from sas_ray.features import read_full_features
    from sas_ray.prepared import read_info

    options = dict(cfg.storage.options)
    info = read_info(Storage(cfg.prepared, options))
    preset = PRESETS[info["preset"]]
    scenes = cfg.scenes or info["scenes"]
    features, text_space = read_full_features(Storage(cfg.output, options), cfg.features, scenes[0])
    inputs = {"scenes": scenes, "voxel_size": cfg.voxel_size or preset.voxel_size, "dim": features.dim,
              "text_space": text_space, "text": None}
    if cfg.stage2.epochs:
        from sas_ray.models import build_text_encoder

        spec = cfg.text_encoder
        encoder = build_text_encoder(spec.name, spec.weights, tiny=spec.tiny, storage_options=options,
                                     **spec.options)
        if encoder.text_space != text_space:
            raise ConfigError(f"text_encoder is in text space {encoder.text_space!r} but features/{cfg.features} in "
                              f"{text_space!r}: use the teachers' CLIP checkpoint")
        _, vocabulary, _ = vocabulary_prompts(cfg.label_set or preset.label_set, nuscenes_details=False)
        inputs["text"] = encoder.encode(vocabulary).tolist()
    return inputs


def run_stage(cfg: DistillConfig, stage: str, inputs: dict):
    """One TorchTrainer run, with a progress bar of its steps; returns Ray Train's Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.progress import StepProgress

    storage_path, filesystem = train_storage(cfg.output, dict(cfg.storage.options))
    low, high = cfg.num_workers
    steps = StepProgress.remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage": stage, "steps": steps, **inputs},
        scaling_config=ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=stage, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    with following_steps(steps, f"distill {stage}", cfg.progress):
        return trainer.fit()


@contextmanager
def following_steps(steps, desc: str, show: bool) -> Iterator[None]:
    """While the block runs, a thread draws the steps rank 0 reports to `steps` (a StepProgress actor) as a bar:
    steps, steps/s, ETA, loss; "starting" until the first step (workers, data, first batch)."""
    import ray

    finished = threading.Event()

    def follow(bar) -> None:
        first = None
        bar.set_postfix_str("starting workers")
        while not finished.wait(0.5):
            try:
                last = ray.get(steps.read.remote(), timeout=10)
            except ray.exceptions.RayError:  # the bar is not worth failing a training run
                return
            if last is not None:
                step, total, loss = last
                if first is None:  # a resumed run: count this invocation's steps for the rate and ETA
                    first = step - 1
                    bar.reset(total)
                    bar.initial = bar.n = first
                bar.update(step - bar.n)
                bar.set_postfix_str(f"loss {loss:.4f}")

    with progress_bar(None, desc, "step", not show) as bar:
        thread = threading.Thread(target=follow, args=(bar,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            finished.set()
            thread.join(timeout=15)
            ray.kill(steps)


def export_stage(cfg: DistillConfig, stage: str, result) -> tuple[dict, StoredObject]:
    """Copy the final checkpoint's model and loss curve to {output}/distill/{stage}/; returns its progress and the
    model object written."""
    if result.checkpoint is None:
        raise SasError(f"distill {stage}: the run ended without a checkpoint ({result.error})")
    out = Storage(cfg.output, dict(cfg.storage.options)).child(DISTILL, stage)
    with result.checkpoint.as_directory() as folder:
        from sas_ray.distill.checkpoint import MODEL_FILE, STATE_FILE

        with open(os.path.join(folder, MODEL_FILE), "rb") as f:
            model = out.put(MODEL_FILE, f.read())
        progress = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    out.write_json("losses.json", {"stage": stage, "steps": [s for s, _ in progress["losses"]],
                                   "loss": [v for _, v in progress["losses"]],
                                   "resumed_at": progress.get("resumed_at", [])})
    return progress, model


def stage_recipe_of(cfg: DistillConfig, stage: str, inputs: dict, manifest: Manifest) -> Recipe:
    """What a stage's model depends on: the training settings of the stage, and the sha256 of every scene,
    superpoint and feature file it trains on (their manifest rows), of the text encoder and of stage 1's model."""
    options = dict(cfg.storage.options)
    extra = {}
    if stage == "stage2":
        extra = {"ema_momentum": cfg.ema_momentum, "label_set": cfg.label_set,
                 "text_encoder": cfg.text_encoder.model_dump(mode="json", include={"name", "tiny", "options"})}
    config = stage_recipe(VERSION, cfg, RECIPE_FIELDS, stage=stage, length=getattr(cfg, stage).model_dump(mode="json"),
                          voxel_size=inputs["voxel_size"], **extra)
    read = {"scene": output_digests(Storage(cfg.prepared, options).child(SCENES)),
            "superpoints": output_digests(Storage(cfg.superpoints or cfg.output, options).child(SUPERPOINTS)),
            "features": output_digests(Storage(cfg.output, options).child(FEATURES, cfg.features))}
    digests = {f"{kind}/{s}": rows.get(s, "") for s in inputs["scenes"] for kind, rows in read.items()}
    if stage == "stage2":
        digests["text_encoder"] = content_digest(cfg.text_encoder.weights, options)
        digests["stage1"] = manifest.rows["stage1"].sha256 if "stage1" in manifest.rows else ""
    return config.unit(digests)


def discard_stage(out: Storage, stage: str) -> None:
    """Remove a stage's training run made by another recipe (checkpoints; stage 2's EMA history), so the stage
    starts from scratch instead of resuming it."""
    out.delete_tree(f"{DISTILL}/train/{stage}")
    if stage == "stage2":
        out.delete_tree(f"{DISTILL}/history")


def run_distill(cfg: DistillConfig, address: str | None = None) -> StageReport:
    start = time.perf_counter()
    roots = {key: absolute_root(getattr(cfg, key)) for key in ("prepared", "output", "superpoints") if getattr(cfg, key)}
    cfg = cfg.model_copy(update=roots)
    out = Storage(cfg.output, dict(cfg.storage.options))
    report = StageReport(DISTILL)
    with open_stage(out.child(DISTILL), wait=cfg.storage.wait) as manifest:
        ensure_ray(address)
        inputs = training_inputs(cfg)
        for stage in STAGES:
            if not getattr(cfg, stage).epochs:
                continue
            recipe = stage_recipe_of(cfg, stage, inputs, manifest)
            plan = manifest.plan({stage: recipe}, verify=cfg.storage.verify)
            report.planned(plan)
            report.outputs[f"{stage} model"] = out.url(DISTILL, stage)
            if not plan.todo:
                continue
            earlier = manifest.rows.get(stage)
            if earlier is not None and earlier.recipe and earlier.recipe != recipe.digest:
                discard_stage(out, stage)
            stage_start = time.perf_counter()
            result = run_stage(cfg, stage, inputs)
            if result.error is not None:
                raise SasError(f"distill {stage} failed: {result.error}")
            progress, model = export_stage(cfg, stage, result)
            report.outputs[f"{stage} steps"] = str(progress["step"])
            seconds = time.perf_counter() - stage_start
            if not progress["finished"]:
                manifest.record(UnitResult.failed(stage, f"{stage} stopped at step {progress['step']}; rerun to "
                                                         "continue", seconds, recipe))
                report.outputs["stopped early"] = f"{stage} at step {progress['step']}; rerun to continue"
                break
            manifest.record(UnitResult.ok(stage, f"{stage}/model.safetensors", model, seconds, recipe))
            manifest.flush()
            report.done += 1
    report.seconds = time.perf_counter() - start
    return report


# -- workers ------------------------------------------------------------------------------------------------------
def load_sample(cfg: DistillConfig, scene_id: str, with_features: bool):
    """A scene's points, superpoints and (stage 1) fused features, read from storage."""
    from sas_ray.distill.batch import SceneSample
    from sas_ray.features import read_features
    from sas_ray.prepared import read_scene

    options = dict(cfg.storage.options)
    scene = read_scene(Storage(cfg.prepared, options), scene_id)
    superpoints = read_superpoints(Storage(cfg.superpoints or cfg.output, options), scene_id).numpy()
    features = read_features(Storage(cfg.output, options), cfg.features, scene_id) if with_features else None
    return SceneSample(scene_id, scene.points, superpoints, features, scene.labels)


def step_generator(seed: list[int], step: int) -> torch.Generator:
    """The torch generator of a training step's draws (the loss's voxel subset): a function of (seed, rank, step)
    only, so a resumed run and the loader threads draw what the uninterrupted run draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([*seed, step]).generate_state(1)[0]))


def _batch_loader(cfg: DistillConfig, stage: str, voxel_size: float, seed: list[int]):
    """A function scene ids -> collated Batch, with its own random stream per call."""
    from sas_ray.distill.batch import collate, voxelize_scene

    def load(step: int, scene_ids: list[str]):
        rng = np.random.default_rng([*seed, step])
        scenes = [voxelize_scene(load_sample(cfg, s, stage == "stage1"), voxel_size, rng, train=True)
                  for s in scene_ids]
        if stage != "stage1":
            return collate(scenes, rng)
        # the loss's voxel subset, drawn as the training step would draw it: only its targets are gathered
        return collate(scenes, rng, cfg.supervision_limit, step_generator(seed, step))

    return load


def initialise_history(cfg: DistillConfig, model, backend, history, scene_ids: list[str], voxel_size: float,
                       device, seed: list[int]) -> None:
    """SAS `initialize_pred`: the stage-1 model's superpoint-averaged prediction per point, for scenes without one."""
    from sas_ray.distill.history import superpoint_average
    from sas_ray.distill.steps import predict_points

    for scene_id in scene_ids:
        if history.exists(scene_id):
            continue
        sample = load_sample(cfg, scene_id, with_features=False)
        pred = predict_points(getattr(model, "module", model), backend, sample, voxel_size, 1,
                              np.random.default_rng([*seed, len(scene_id)]), device)
        history.write(scene_id, superpoint_average(pred, torch.from_numpy(sample.superpoints).to(device)))


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker of one stage (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.checkpoint import load_training_state, read_model, save_training_state
    from sas_ray.distill.history import PredictionHistory, scene_assignment, steps_per_epoch
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.steps import learning_rate, optimizer_step, stage1_step, stage2_step
    from sas_ray.faults import armed_fault

    cfg = DistillConfig.model_validate(config["cfg"])
    stage, scenes, voxel_size = config["stage"], config["scenes"], config["voxel_size"]
    stage_cfg = getattr(cfg, stage)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    backend = get_backend(cfg.backend)
    options = dict(cfg.storage.options)
    output = Storage(cfg.output, options)

    model = MinkUNet18A(3, config["dim"]).to(device)
    amp = cfg.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)  # fp16 gradients: loss scaling against underflow
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr)
    progress = {"step": 0, "epoch": 0, "epoch_step": 0, "consumed": 0, "finished": False, "losses": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress = load_training_state(folder, model, optimizer)
        progress["resumed_at"] = [*progress.get("resumed_at", []), progress["step"]]  # restarts and reruns
        if progress.get("scaler"):
            scaler.load_state_dict(progress["scaler"])  # the loss scale carries on, as the optimizer does
    elif stage == "stage2":
        stage1, _ = read_model(output.child(DISTILL, "stage1"), "model.safetensors")
        model.load_state_dict(stage1.state_dict())
    model = ray.train.torch.prepare_model(model)

    global_batch = cfg.batch_size * world
    per_epoch = steps_per_epoch(len(scenes), world, cfg.loop, cfg.batch_size)
    if per_epoch == 0:
        raise InputError(f"{len(scenes)} scenes x loop {cfg.loop} give no full batch of {cfg.batch_size} on each of "
                         f"{world} workers")
    planned = stage_cfg.epochs * per_epoch * global_batch  # scenes the whole stage consumes at this size
    if progress["epoch_step"]:  # a resize: continue the epoch after the scenes already consumed in it
        progress["epoch_step"] = progress.get("epoch_consumed", 0) // global_batch
    text = torch.tensor(config["text"], device=device) if config["text"] is not None else None
    history = PredictionHistory(output.child(DISTILL, "history"))
    if stage == "stage2":
        initialise_history(cfg, model, backend, history, scenes[rank::world], voxel_size, device, [cfg.seed, rank])
        if dist.is_initialized():
            dist.barrier()
    model.train()

    metadata = {"out_channels": str(config["dim"]), "text_space": config["text_space"],
                "voxel_size": str(voxel_size), "stage": stage}
    # Every random draw is a function of (seed, rank, step): a run resumed from a checkpoint continues exactly as
    # an uninterrupted one would.
    seed = [cfg.seed, rank]
    loader = _batch_loader(cfg, stage, voxel_size, seed)
    done_here = 0
    fault = armed_fault(f"distill-rank{rank}")  # None unless a reliability test set $SAS_RAY_FAULT
    stop = stage_cfg.max_steps or float("inf")
    total_steps = int(min(stage_cfg.epochs * per_epoch, stop))  # at this world size, for the progress bar

    def report(loss: float) -> None:
        """A checkpoint (rank 0 writes it; every rank reports, as Ray Train requires)."""
        metrics = {"loss": loss, "step": progress["step"], "epoch": progress["epoch"],
                   "finished": progress["finished"]}
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                progress["scaler"] = scaler.state_dict()  # {} when mixed precision is off
                save_training_state(folder, model, optimizer, progress, metadata)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)

    # each batch's draws depend on its step only, so loading `prefetch` of them at once changes no result
    with ThreadPoolExecutor(max_workers=max(1, cfg.prefetch)) as pool:
        while progress["epoch"] < stage_cfg.epochs and progress["step"] < stop and not progress["finished"]:
            order = scene_assignment(scenes, progress["epoch"], rank, world, cfg.loop, cfg.seed)
            batches = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                       for i in range(progress["epoch_step"], per_epoch)]
            first = progress["step"]
            ahead = cfg.prefetch + 1
            pending = [pool.submit(loader, first + i, b) for i, b in enumerate(batches[:ahead])]
            for i in range(len(batches)):
                batch = pending.pop(0).result()
                if i + ahead < len(batches):
                    pending.append(pool.submit(loader, first + i + ahead, batches[i + ahead]))
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg.base_lr, progress["consumed"] / planned, progress["step"] == 0,
                                                global_batch, cfg.lr_reference_batch, cfg.lr_x10_quirk)
                generator = step_generator(seed, progress["step"])
                if stage == "stage1":
                    loss, _ = stage1_step(model, backend, batch, device, generator, cfg.supervision_limit, amp)
                else:
                    loss, _ = stage2_step(model, backend, batch, device, history, cfg.ema_momentum, text, generator,
                                          cfg.supervision_limit, amp)
                optimizer_step(optimizer, scaler, loss)
                progress["step"] += 1
                progress["consumed"] += global_batch
                progress["epoch_step"] += 1
                progress["epoch_consumed"] = progress["epoch_step"] * global_batch
                progress["losses"].append((progress["step"], float(loss.item())))
                if rank == 0:
                    config["steps"].update.remote(progress["step"], total_steps, progress["losses"][-1][1])
                done_here += 1
                if fault is not None:
                    fault.check(progress["step"])
                if progress["epoch_step"] == per_epoch:
                    progress["epoch"], progress["epoch_step"], progress["epoch_consumed"] = progress["epoch"] + 1, 0, 0
                at_end = progress["epoch"] >= stage_cfg.epochs or progress["step"] >= stop
                progress["finished"] = at_end
                interrupted = cfg.stop_after_steps is not None and done_here >= cfg.stop_after_steps
                if at_end or interrupted or progress["step"] % cfg.checkpoint_every == 0:
                    report(float(loss.item()))
                if at_end or interrupted:
                    for future in pending:
                        future.cancel()
                    return
    report(float("nan"))  # nothing left to do (a rerun of a finished stage): keep its checkpoint current


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Distil MinkUNet18A from the fused 2D features: stage 1 (point + superpoint cosine), stage 2 (EMA
    self-distillation), on Ray Train workers (elastic num_workers, checkpoints to {output}/distill/train).

    Rerunning the same command resumes each stage from its last checkpoint; a finished stage is skipped."""
    from jobs.cli import load_stage_config

    return run_distill(load_stage_config(config, overrides, DistillConfig), address)
