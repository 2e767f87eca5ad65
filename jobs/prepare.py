"""Prepare a dataset: raw layout (or a freshly rendered synthetic one) -> scenes + frame index in `output`.

One Ray task per scene; each writes `scenes/{scene}.safetensors` atomically and returns a manifest row, so a rerun
skips finished scenes and a bad scene fails alone.
"""

from __future__ import annotations

import time

import ray

from jobs.console import progress_bar
from jobs.runtime import UNIT_ERRORS, StageReport, ensure_ray, run_unit_tasks, scene_unit
from sas_ray.config import DatasetConfig, PrepareConfig
from sas_ray.datasets import layout_module
from sas_ray.datasets.frames import frame_index_table
from sas_ray.lineage import Recipe, stage_recipe
from sas_ray.manifest import UnitResult, open_stage
from sas_ray.prepared import FRAMES, INFO, SCENES, encode_scene, frame_rows_of, scene_file
from sas_ray.storage import Storage, StoredObject, absolute_root

# A raw dataset is read as immutable: its files are named by the dataset's root (in the recipe), not hashed.
RECIPE_FIELDS = ("layout", "split", "synthetic")
VERSION = 1


def _prepare_scene(dataset: dict, scene_id: str, output: str, options: dict, recipe: Recipe) -> UnitResult:
    dataset = DatasetConfig.model_validate(dataset)
    layout = layout_module(dataset.layout)

    def work() -> tuple[str, StoredObject]:
        scene = layout.read_scene(dataset.root, dataset.split, scene_id, options)
        rows = layout.frame_rows(dataset.root, dataset.split, scene_id, options, dataset.effective_frame_skip)
        tensors, metadata = encode_scene(scene, rows)
        return scene_file(scene_id), Storage(output, options).child(SCENES).put_tensors(scene_file(scene_id),
                                                                                        tensors, metadata)

    return scene_unit(scene_id, recipe, work, errors=(*UNIT_ERRORS, KeyError))


def _generate_synthetic(dataset: DatasetConfig, options: dict, progress: bool) -> None:
    """Render the synthetic scenes the raw layout does not have yet."""
    from sas_ray.datasets.synthetic_dataset import synthetic_scene_ids

    if dataset.layout == "nuscenes":  # devkit tables span all samples: one task writes the whole set
        if not Storage(dataset.root, options).exists(f"{dataset.split}/sample.json"):
            ray.get(ray.remote(_write_synthetic_devkit_task).remote(dataset.model_dump(), options))
        return
    layout = layout_module(dataset.layout)
    have = set(layout.list_scenes(dataset.root, dataset.split, options))
    todo = [s for s in synthetic_scene_ids(dataset) if s not in have]
    task = ray.remote(_write_synthetic_task)
    refs = [task.remote(dataset.model_dump(), s, options) for s in todo]
    with progress_bar(len(refs), "render synthetic", "scene", not progress) as bar:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            ray.get(ready[0])
            bar.update(1)


def _write_synthetic_devkit_task(dataset: dict, options: dict) -> None:
    from sas_ray.datasets.synthetic_dataset import write_synthetic_devkit

    write_synthetic_devkit(DatasetConfig.model_validate(dataset), options)


def _write_synthetic_task(dataset: dict, scene_id: str, options: dict) -> None:
    from sas_ray.datasets.synthetic_dataset import write_synthetic_scene

    write_synthetic_scene(DatasetConfig.model_validate(dataset), scene_id, options)


def run_prepare(cfg: PrepareConfig, address: str | None = None) -> StageReport:
    start = time.perf_counter()
    options = dict(cfg.storage.options)
    dataset = cfg.dataset
    out = Storage(cfg.output, options)
    scenes = out.child(SCENES)
    with open_stage(scenes, wait=cfg.storage.wait) as manifest:
        ensure_ray(address)
        if dataset.synthetic is not None:
            _generate_synthetic(dataset, options, cfg.progress)
        layout = layout_module(dataset.layout)
        scene_ids = dataset.scenes or layout.list_scenes(dataset.root, dataset.split, options)
        recipe = stage_recipe(VERSION, dataset, RECIPE_FIELDS, root=absolute_root(dataset.root),
                              preset=dataset.preset_name, frame_skip=dataset.effective_frame_skip).unit()
        plan = manifest.plan({s: recipe for s in scene_ids}, verify=cfg.storage.verify)
        report = StageReport("prepare").planned(plan)
        units = [(s, (dataset.model_dump(), s, cfg.output, options, recipe)) for s in plan.todo]
        run_unit_tasks(_prepare_scene, units, manifest, report, "prepare", cfg.progress)
        ready = [s for s in scene_ids if manifest.rows.get(s) and manifest.rows[s].status == "ok"]
        size = dataset.effective_image_size
        info = {"layout": dataset.layout, "preset": dataset.preset_name, "split": dataset.split, "scenes": ready,
                "image_size": None if size is None else list(size), "resize": dataset.constants.resize,
                "frame_skip": dataset.effective_frame_skip}
        if plan.todo or not out.exists(FRAMES) or not out.exists(INFO) or out.read_json(INFO) != info:
            out.write_table(FRAMES, frame_index_table([row for s in ready for row in frame_rows_of(out, s)]))
            out.write_json(INFO, info)  # written last: a dataset.json that matches means the index is current
        frames = out.read_table(FRAMES).num_rows
    report.seconds = time.perf_counter() - start
    report.outputs.update({"scenes": scenes.url(), "frame index": out.url(FRAMES), "frames": str(frames)})
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Read a raw dataset (ScanNet / Matterport OpenScene layouts, nuScenes devkit layout, your own RGB-D scans:
    docs/datasets.md), or render a synthetic one first when the config has `dataset.synthetic`, into the prepared
    form every later stage reads: {output}/scenes/{scene}.safetensors, {output}/frames.parquet (the frame index),
    {output}/dataset.json (with the frame size the teachers see, `dataset.image_size`)."""
    from jobs.cli import load_stage_config

    return run_prepare(load_stage_config(config, overrides, PrepareConfig), address)

