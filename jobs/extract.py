"""Extract per-scene fused point features: every frame through each 2D teacher, fused onto the scene's points.

Streaming on Ray Data, one pipeline per teacher, all running at once:
  frame groups of a scene -> CPU decode tasks (RGB, depth, K, pose) -> the teacher's actor pool (model, projection,
  depth test and sampling on its GPU) -> sparse partial sums -> merged per scene on the driver -> atomic write of
  {output}/features/{teacher}/{scene}.safetensors + a manifest row. Scenes already done (row ok, same recipe: the
  teacher, its weights, the visibility constants, the prepared scene) are skipped; a bad frame fails only its scene,
  with an error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import ray
import torch
from tqdm import tqdm

from jobs.console import progress_bar
from jobs.runtime import StageReport, ensure_ray
from sas_ray.config import PRESETS, ExtractConfig, TeacherSpec
from sas_ray.datasets.frames import lost_pose_frames
from sas_ray.errors import InputError, SasError, unit_message
from sas_ray.features import FEATURES, encode_features, feature_file
from sas_ray.geometry.accumulator import FeatureAccumulator, ScenePartial, random_chunks
from sas_ray.ids import check_id
from sas_ray.lineage import Recipe, checkpoint_digests, stage_recipe
from sas_ray.manifest import Manifest, UnitResult, open_stage, output_digests
from sas_ray.prepared import SCENES, read_frame_index, read_info
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage

TEACHER_FIELDS = ("name", "tiny", "options", "dtype")  # + its checkpoints' sha256; not resources (gpus, pool, batch)
VERSION = 1


def lost_pose_warnings(index_rows: list[dict], scene_ids: list[str]) -> list[str]:
    """One line per scene that has frames with a lost pose: they are left out of its fusion."""
    wanted = set(scene_ids)
    lost: dict[str, list[str]] = {}
    for row in lost_pose_frames([r for r in index_rows if r["scene"] in wanted]):
        lost.setdefault(row["scene"], []).append(row["frame"])
    total = {s: sum(r["scene"] == s for r in index_rows) for s in lost}
    return [f"scene {s}: {len(frames)} of {total[s]} frames left out, their camera pose is not finite (lost "
            f"tracking): frame {', '.join(frames[:5])}{' ...' if len(frames) > 5 else ''}"
            for s, frames in lost.items()]


def frame_groups(index_rows: list[dict], scene_ids: list[str], frames_per_task: int) -> list[dict]:
    """Work items: each scene's frames (index order, without lost poses) cut into groups of at most
    `frames_per_task`."""
    by_scene: dict[str, list[dict]] = {s: [] for s in scene_ids}
    lost = {id(row) for row in lost_pose_frames(index_rows)}
    for row in index_rows:
        if row["scene"] in by_scene and id(row) not in lost:
            by_scene[row["scene"]].append(row)
    groups = []
    for scene_id, rows in by_scene.items():
        chunks = [rows[i:i + frames_per_task] for i in range(0, len(rows), frames_per_task)] or [[]]
        for g, chunk in enumerate(chunks):
            groups.append({"scene": scene_id, "group": g, "num_groups": len(chunks),
                           "frames": json.dumps(chunk)})
    return groups


def decode_group(item: dict, storage_options: dict, image_size: tuple[int, int] | None, resize: str) -> dict:
    """CPU task: read and decode a group's frames into stacked arrays, resized to image_size (H, W; None = as
    stored) with `resize` interpolation and K rescaled; a bad frame becomes the group's `error`."""
    from sas_ray.datasets.frames import read_frame
    from sas_ray.geometry.resize import resize_frame

    rows = json.loads(item["frames"])
    out = {k: item[k] for k in ("scene", "group", "num_groups")}
    out["num_frames"] = len(rows)
    try:
        check_id(item["scene"], "scene id")  # a `scenes:` entry like '../x' is refused as unsafe, not just absent
        if not rows:
            raise InputError(f"scene {item['scene']} has no frames in the frame index")
        frames = [resize_frame(read_frame(row, storage_options), image_size, resize) for row in rows]
        has_depth = [f.depth is not None for f in frames]
        if any(has_depth) and not all(has_depth):
            raise InputError(f"scene {item['scene']}: some frames have depth and some do not")
        out.update(rgb=np.stack([f.rgb for f in frames]), intrinsic=np.stack([f.intrinsic for f in frames]),
                   pose=np.stack([f.pose for f in frames]),
                   depth=np.stack([f.depth for f in frames]) if all(has_depth) else np.zeros(0, np.float32),
                   error="")
    except (SasError, OSError, ValueError) as err:
        message = unit_message(item["scene"], err)
        out.update(rgb=np.zeros((0, 1, 1, 3), np.uint8), intrinsic=np.zeros((0, 3, 3)), pose=np.zeros((0, 4, 4)),
                   depth=np.zeros(0, np.float32), error=message)
    return out


@dataclass
class _PendingScene:
    groups_left: int
    partial: ScenePartial | None = None  # the first group's partial: most scenes have one group
    accumulator: FeatureAccumulator | None = None  # created when a second group arrives
    frames: int = 0
    text_space: str = ""
    error: str = ""
    seconds: float = 0.0


@dataclass
class SceneMerger:
    """Driver-side merge of a teacher's partials into whole scenes (order-independent additions)."""

    expected_groups: dict[str, int]
    pending: dict[str, _PendingScene] = field(default_factory=dict)

    def add(self, row: dict) -> tuple[str, _PendingScene] | None:
        """Add one actor output row; returns (scene, state) once the scene's last group has arrived."""
        scene = row["scene"]
        state = self.pending.setdefault(scene, _PendingScene(self.expected_groups[scene]))
        state.groups_left -= 1
        state.frames += int(row["num_frames"])
        state.seconds += float(row["seconds"])
        state.text_space = str(row["text_space"])
        if row["error"]:
            state.error = state.error or str(row["error"])
            state.partial = state.accumulator = None
        elif not state.error:
            partial = ScenePartial(int(row["num_points"]), *(_tensor(row[k]) for k in ("point_ids", "feat_sum", "count")))
            if state.partial is None and state.accumulator is None:
                state.partial = partial
            else:
                if state.accumulator is None:
                    state.accumulator = FeatureAccumulator(partial.num_points, partial.feat_sum.shape[1])
                    state.accumulator.add_partial(state.partial)
                    state.partial = None
                state.accumulator.add_partial(partial)
        if state.groups_left:
            return None
        return scene, self.pending.pop(scene)

    @staticmethod
    def features(state: _PendingScene) -> PointFeatures:
        """The fused features of a completed scene."""
        return state.partial.finish() if state.partial is not None else state.accumulator.finish()


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A read-only view of a Ray block column as a tensor (no copy; the merge only reads it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class _TeacherRun:
    """One teacher's pipeline, merger, writer and manifest."""

    def __init__(self, cfg: ExtractConfig, spec: TeacherSpec, manifest: Manifest, info: dict, index_rows: list[dict],
                 scene_ids: list[str], scene_digests: dict[str, str]):
        self.cfg, self.spec = cfg, spec
        self.manifest = manifest
        self.stage = manifest.stage
        preset = PRESETS[info["preset"]]
        size = cfg.image_size or info.get("image_size")
        self.image_size = None if size in (None, "stored") else tuple(size)
        self.resize = info.get("resize", preset.resize)
        self.visibility = {"cut_bound": cfg.cut_bound if cfg.cut_bound is not None else preset.cut_bound,
                           "vis_thres": cfg.vis_thres if cfg.vis_thres is not None else preset.vis_thres}
        self.labelled_only = cfg.labelled_only if cfg.labelled_only is not None else not preset.has_depth
        self.recipes = self.unit_recipes(scene_ids, scene_digests)
        plan = manifest.plan(self.recipes, verify=cfg.storage.verify)
        self.todo = plan.todo
        self.groups = frame_groups(index_rows, self.todo, cfg.frames_per_task)
        self.merger = SceneMerger({g["scene"]: g["num_groups"] for g in self.groups})
        self.frames = sum(len(json.loads(g["frames"])) for g in self.groups)
        self.progress: tqdm | None = None  # the stage's bar, shared by the teachers
        self.report = StageReport(f"extract[{spec.folder}]", warnings=lost_pose_warnings(index_rows, self.todo))
        self.report.planned(plan)

    def unit_recipes(self, scene_ids: list[str], scene_digests: dict[str, str]) -> dict[str, Recipe]:
        """What each scene's features depend on: the teacher (model and weights), the resolved visibility
        constants and frame size, the stored form; and the prepared scene (points, frame rows, poses)."""
        cfg = self.cfg
        chunks = cfg.model_dump(include={"num_chunks", "n_split_points", "seed"}) if cfg.split == "chunks" else None
        config = stage_recipe(VERSION, cfg, ("split", "export_openscene"), chunks=chunks,
                              teacher=self.spec.model_dump(mode="json", include=set(TEACHER_FIELDS)),
                              labelled_only=self.labelled_only, image_size=self.image_size, resize=self.resize,
                              **self.visibility)
        weights = checkpoint_digests(self.spec.checkpoints, dict(cfg.storage.options))
        return {s: config.unit({"scene": scene_digests.get(s, ""), **weights}) for s in scene_ids}

    def dataset(self) -> ray.data.Dataset:
        spec = self.spec
        options = dict(self.cfg.storage.options)
        ds = ray.data.from_items(self.groups, override_num_blocks=max(1, len(self.groups)))
        limits = ds.context.execution_options.resource_limits  # bounded memory, whatever the number of scenes
        ds.context.execution_options.resource_limits = limits.copy(object_store_memory=self.cfg.object_store_gb * 1e9)
        ds = ds.map(decode_group, fn_kwargs={"storage_options": options, "image_size": self.image_size,
                                             "resize": self.resize},
                    num_cpus=self.cfg.decode_cpus, compute=ray.data.TaskPoolStrategy(size=self.cfg.decode_tasks))
        return ds.map_batches(
            _actor_class(), batch_size=1, batch_format="numpy", num_gpus=spec.gpus, num_cpus=spec.actor_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=spec.pool[0], max_size=spec.pool[1]),
            max_concurrency=2,  # the next group's input and this group's output are batched while the UDF runs
            fn_constructor_kwargs={"teacher": spec.model_dump(), "prepared": self.cfg.prepared,
                                   "storage_options": options, "visibility": self.visibility,
                                   "labelled_only": self.labelled_only})

    def write(self, scene_id: str, state: _PendingScene) -> UnitResult:
        start = time.perf_counter()
        recipe = self.recipes[scene_id]
        if state.error:
            return UnitResult.failed(scene_id, state.error, state.seconds, recipe)
        features = SceneMerger.features(state)
        if not features.mask_full.any():
            return UnitResult.failed(scene_id, f"scene {scene_id}: no point is visible in any of its "
                                               f"{state.frames} frames", state.seconds, recipe)
        stored = features if self.cfg.split == "full" else random_chunks(
            features, self.cfg.num_chunks, self.cfg.n_split_points, self.cfg.seed)
        metadata = {"teacher": self.spec.name, "text_space": state.text_space, "dim": str(features.dim),
                    "frames": str(state.frames),
                    "split": self.cfg.split, **{k: str(v) for k, v in self.visibility.items()}}
        if self.cfg.export_openscene:
            from sas_ray.datasets.openscene import write_fused_features

            chunks = stored if isinstance(stored, list) else [stored]
            for k, chunk in enumerate(chunks):
                write_fused_features(self.stage.url("openscene", f"{scene_id}_{k}.pt"), chunk,
                                     dict(self.cfg.storage.options))
        written = self.stage.put_tensors(feature_file(scene_id), encode_features(stored), metadata)  # last: a
        return UnitResult.ok(scene_id, feature_file(scene_id), written,  # scene whose file exists has its export
                             state.seconds + time.perf_counter() - start, recipe)

    def run(self) -> StageReport:
        start = time.perf_counter()
        if self.groups:
            with ThreadPoolExecutor(max_workers=2) as writer:
                writes: list[Future] = []
                for row in self.dataset().iter_rows():
                    if not self.report.first_output_seconds:
                        self.report.first_output_seconds = time.perf_counter() - start
                        self.report.first_work_seconds = self.report.first_output_seconds - float(row["seconds"])
                    self.report.load_seconds = max(self.report.load_seconds, float(row["load_seconds"]))
                    self.progress.update(int(row["num_frames"]))
                    finished = self.merger.add(row)
                    if finished:
                        writes.append(writer.submit(self.write, *finished))
                    writes = self._collect(writes, block=len(writes) > 4)
                self._collect(writes, block=True)
        self.manifest.flush()
        self.report.seconds = time.perf_counter() - start
        self.report.outputs["features"] = self.stage.url()
        return self.report

    def _collect(self, writes: list[Future], block: bool) -> list[Future]:
        left = []
        for future in writes:
            if block or future.done():
                result = future.result()
                self.manifest.record(result)
                self.report.count(result)
            else:
                left.append(future)
        return left


def _actor_class():
    from actors.extraction import TeacherFusionActor

    return TeacherFusionActor


def run_extract(cfg: ExtractConfig, address: str | None = None) -> list[StageReport]:
    options = dict(cfg.storage.options)
    out = Storage(cfg.output, options)
    with contextlib.ExitStack() as held:  # every teacher's folder, before any work starts
        manifests = [held.enter_context(open_stage(out.child(FEATURES, spec.folder), wait=cfg.storage.wait))
                     for spec in cfg.teachers]
        ensure_ray(address)
        prepared = Storage(cfg.prepared, options)
        info = read_info(prepared)
        index_rows = read_frame_index(prepared).to_pylist()
        scene_ids = cfg.scenes or sorted({r["scene"] for r in index_rows})
        scene_digests = output_digests(prepared.child(SCENES))
        runs = [_TeacherRun(cfg, spec, manifest, info, index_rows, scene_ids, scene_digests)
                for spec, manifest in zip(cfg.teachers, manifests)]
        teachers = f"{len(runs)} teachers" if len(runs) > 1 else cfg.teachers[0].folder
        bar = held.enter_context(progress_bar(sum(r.frames for r in runs), f"extract ({teachers})", "frame",
                                              not cfg.progress))
        for r in runs:
            r.progress = bar
        if len(runs) == 1:
            return [runs[0].run()]
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:  # teachers stream concurrently on their own pools
            return list(pool.map(lambda r: r.run(), runs))


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Fuse every frame's 2D teacher features onto the 3D points of each prepared scene (docs/method.md §2).

    Writes {output}/features/{teacher}/{scene}.safetensors ({feat fp16 [M,C], mask_full bool [N]}, OpenScene
    semantics) and a manifest per teacher; `export_openscene: true` also writes OpenScene `.pt` files."""
    from jobs.cli import load_stage_config

    reports = run_extract(load_stage_config(config, overrides, ExtractConfig), address)
    combined = StageReport("extract", seconds=max(r.seconds for r in reports))
    for r in reports:
        combined.done += r.done
        combined.skipped += r.skipped
        combined.failed += r.failed
        combined.errors += r.errors
        combined.warnings += [w for w in r.warnings if w not in combined.warnings]  # each teacher saw the same
        combined.reran.update({f"{why} ({r.stage})": n for why, n in r.reran.items()})
        combined.outputs.update({r.stage: r.outputs.get("features", "")})
    return combined
