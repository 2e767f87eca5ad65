"""`sas-ray distill`: MinkUNet18A distilled from the fused 2D point features on Ray Train (SPEC §3, §5.7, §5.8).

Stage 1 (superpoint distillation) then stage 2 (EMA self-distillation), each one `TorchTrainer` run:
- `ScalingConfig(num_workers=(min, max))`: elastic; a resize restarts the workers from the last checkpoint and the
  schedule continues: progress is counted in scenes consumed, the stage ends after its planned scenes, the learning
  rate follows the scenes consumed and is scaled to the global batch. Stage 2 continues stage 1's schedule.
- `FailureConfig(max_failures)`: a dead worker restarts the group from the last checkpoint.
- Checkpoints every `checkpoint_every` steps to {output}/distill/train/{stage}/ (local or s3://; Ray Train's
  storage). Rerunning the same command restores the run of the same name and continues at its step.
- Data: each worker reads its own scenes from storage (`scene_assignment`: an epoch's scenes are partitioned across
  workers), `prefetch` batches ahead of the step, in `loader_processes` CPU processes (the default on a GPU) or in
  threads that augment and voxelize on its device; only the loss subset's target rows are read
  (`sas_ray.distill.loader`, `sas_ray.distill.training`).
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
from contextlib import contextmanager

import torch

from jobs.console import progress_bar
from jobs.runtime import StageReport, ensure_ray
from sas_ray.config import PRESETS, DistillConfig
from sas_ray.errors import ConfigError, SasError
from sas_ray.features import FEATURES
from sas_ray.lineage import Recipe, content_digest, stage_recipe
from sas_ray.manifest import Manifest, UnitResult, open_stage, output_digests
from sas_ray.prepared import SCENES
from sas_ray.storage import Storage, StoredObject, absolute_root
from sas_ray.superpoints import SUPERPOINTS

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
        scaling_config=ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=cfg.use_gpu,
                                     elastic_resize_monitor_interval_s=cfg.resize_interval_s),
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

        stored = {}
        for name in (MODEL_FILE, STATE_FILE):  # the state: stage 2 continues stage 1's optimizer
            with open(os.path.join(folder, name), "rb") as f:
                stored[name] = out.put(name, f.read())
        progress = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    losses = progress["losses"]  # (step, loss, learning rate, unix time, seconds the step waited for its batch)
    out.write_json("losses.json", {"stage": stage, "steps": [e[0] for e in losses], "loss": [e[1] for e in losses],
                                   "lr": [e[2] for e in losses], "time": [e[3] for e in losses],
                                   "loader_wait": [e[4] if len(e) > 4 else None for e in losses],  # older states: 4
                                   "consumed": progress["consumed"],
                                   "resumed_at": progress.get("resumed_at", []),
                                   "workers": progress.get("workers", [])})
    return progress, stored[MODEL_FILE]


def stage_recipe_of(cfg: DistillConfig, stage: str, inputs: dict, manifest: Manifest) -> Recipe:
    """What a stage's model depends on: the training settings (both stages' lengths: they share one learning-rate
    schedule), and the sha256 of every scene, superpoint and feature file it trains on (their manifest rows), of the
    text encoder and of stage 1's model."""
    options = dict(cfg.storage.options)
    extra = {}
    if stage == "stage2":
        extra = {"ema_momentum": cfg.ema_momentum, "label_set": cfg.label_set,
                 "text_encoder": cfg.text_encoder.model_dump(mode="json", include={"name", "tiny", "options"})}
    config = stage_recipe(VERSION, cfg, RECIPE_FIELDS, stage=stage, voxel_size=inputs["voxel_size"],
                          lengths={s: getattr(cfg, s).model_dump(mode="json") for s in STAGES}, **extra)
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
        for stage in STAGES[:STAGES.index(cfg.until_stage) + 1]:
            if not getattr(cfg, stage).epochs:
                continue
            recipe = stage_recipe_of(cfg, stage, inputs, manifest)
            plan = manifest.plan({stage: recipe}, verify=cfg.storage.verify)
            report.planned(plan)
            report.outputs[f"{stage} model"] = out.url(DISTILL, stage)
            if not plan.todo:  # done by an earlier run: its length is the last step of the loss curve it left
                steps = out.child(DISTILL, stage).read_json("losses.json")["steps"]
                report.outputs[f"{stage} steps"] = str(steps[-1] if steps else 0)
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
def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker of one stage (see the module docstring): the model, optimizer and progress restored from
    the run's checkpoint (or stage 2 from stage 1's model), DDP, then the library's `train_stage`."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.checkpoint import (MODEL_FILE, load_training_state, read_model, read_training_state,
                                            save_training_state)
    from sas_ray.distill.history import PredictionHistory
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.training import (SceneSource, StageRun, initialise_history, new_progress, planned_scenes,
                                          train_stage)
    from sas_ray.faults import armed_fault

    cfg = DistillConfig.model_validate(config["cfg"])
    stage, scenes, voxel_size = config["stage"], config["scenes"], config["voxel_size"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    output = Storage(cfg.output, dict(cfg.storage.options))

    model = MinkUNet18A(3, config["dim"]).to(device)
    amp = cfg.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)  # fp16 gradients: loss scaling against underflow
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr)
    progress = new_progress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress = load_training_state(folder, model, optimizer)
        progress["resumed_at"] = [*progress.get("resumed_at", []), progress["step"]]  # restarts and reruns
        if progress.get("scaler"):
            scaler.load_state_dict(progress["scaler"])  # the loss scale carries on, as the optimizer does
    elif stage == "stage2":  # one schedule: stage 2 starts from stage 1's model, optimizer state and loss scale
        stage1 = output.child(DISTILL, "stage1")
        model.load_state_dict(read_model(stage1, MODEL_FILE)[0].state_dict())
        state = read_training_state(stage1)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    model = ray.train.torch.prepare_model(model)

    source = SceneSource.of(cfg)
    backend = get_backend(cfg.backend)
    history = PredictionHistory(output.child(DISTILL, "history"))
    if stage == "stage2":
        initialise_history(source, model, backend, history, scenes[rank::world], voxel_size, device, [cfg.seed, rank])
        if dist.is_initialized():
            dist.barrier()
    metadata = {"out_channels": str(config["dim"]), "text_space": config["text_space"],
                "voxel_size": str(voxel_size), "stage": stage}

    def report(loss: float) -> None:
        """A checkpoint (rank 0 writes it; every rank reports, as Ray Train requires)."""
        metrics = {"loss": loss, "step": progress["step"], "epoch": progress["epoch"],
                   "finished": progress["finished"]}
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                progress["scaler"] = scaler.state_dict()  # {} when mixed precision is off
                save_training_state(folder, model, optimizer, progress, metadata)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)

    fault = armed_fault(f"distill-rank{rank}")  # None unless a reliability test set $SAS_RAY_FAULT
    total = planned_scenes(cfg, stage, len(scenes)) // (cfg.batch_size * world)  # at this size, for the bar
    total = min(total, getattr(cfg, stage).max_steps or total)

    def after_step(progress: dict) -> None:
        if rank == 0:
            config["steps"].update.remote(progress["step"], total, progress["losses"][-1][1])
        if fault is not None:
            fault.check(progress["step"])

    text = torch.tensor(config["text"], device=device) if config["text"] is not None else None
    train_stage(StageRun(cfg, stage, scenes, voxel_size, source, model, backend, optimizer, scaler, device, rank,
                         world, text, history, progress, report, after_step))


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Distil MinkUNet18A from the fused 2D features: stage 1 (point + superpoint cosine), stage 2 (EMA
    self-distillation), on Ray Train workers (elastic num_workers, checkpoints to {output}/distill/train).

    Rerunning the same command resumes each stage from its last checkpoint; a finished stage is skipped."""
    from jobs.cli import load_stage_config

    return run_distill(load_stage_config(config, overrides, DistillConfig), address)
