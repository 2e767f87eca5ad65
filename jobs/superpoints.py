"""Superpoints for every prepared scene (SPEC §5.6, §6): the segmentator graph cut over the mesh when the scene has
faces, else over a kNN graph of the points with estimated normals (lidar, user point clouds).

One Ray task per scene (the C++ releases the GIL); writes {output}/superpoints/{scene}.safetensors
({"superpoint_ids": int64 [N]}) and a manifest, so reruns skip finished scenes.
"""

from __future__ import annotations

import time
import torch

from jobs.runtime import StageReport, ensure_ray, run_unit_tasks, scene_unit
from sas_ray.config import SuperpointsConfig
from sas_ray.errors import SasError
from sas_ray.lineage import Recipe, stage_recipe
from sas_ray.manifest import UnitResult, open_stage, output_digests
from sas_ray.prepared import SCENES, read_info, read_scene
from sas_ray.storage import Storage, StoredObject
from sas_ray.superpoints import SUPERPOINTS

RECIPE_FIELDS = ("mode", "k_thresh", "min_verts", "knn")  # inputs: the prepared scene
VERSION = 1


def superpoint_ids(scene, cfg: SuperpointsConfig):
    """int64 [N] superpoint id per point of `scene`."""
    from sas_ray.superpoints import segment_mesh, segment_points

    use_mesh = cfg.mode == "mesh" or (cfg.mode == "auto" and scene.faces is not None and len(scene.faces))
    if use_mesh:
        if scene.faces is None:
            raise SasError(f"scene {scene.scene_id}: mode 'mesh' needs mesh faces, the scene has none")
        return segment_mesh(scene.points, scene.faces, cfg.k_thresh, cfg.min_verts)
    return segment_points(scene.points, k=cfg.knn, k_thresh=cfg.k_thresh, min_verts=cfg.min_verts)


def _superpoints_task(cfg: dict, scene_id: str, recipe: Recipe) -> UnitResult:
    cfg = SuperpointsConfig.model_validate(cfg)
    options = dict(cfg.storage.options)

    def work() -> tuple[str, StoredObject]:
        ids = superpoint_ids(read_scene(Storage(cfg.prepared, options), scene_id), cfg)
        name = f"{scene_id}.safetensors"
        return name, Storage(cfg.output, options).child(SUPERPOINTS).put_tensors(
            name, {"superpoint_ids": torch.from_numpy(ids)}, {"scene": scene_id, "count": str(int(ids.max()) + 1)})

    return scene_unit(scene_id, recipe, work)


def run_superpoints(cfg: SuperpointsConfig, address: str | None = None) -> StageReport:
    start = time.perf_counter()
    options = dict(cfg.storage.options)
    prepared = Storage(cfg.prepared, options)
    stage = Storage(cfg.output, options).child(SUPERPOINTS)
    with open_stage(stage, wait=cfg.storage.wait) as manifest:
        ensure_ray(address)
        scene_ids = cfg.scenes or read_info(prepared)["scenes"]
        scenes = output_digests(prepared.child(SCENES))
        config = stage_recipe(VERSION, cfg, RECIPE_FIELDS)
        recipes = {s: config.unit({"scene": scenes.get(s, "")}) for s in scene_ids}
        plan = manifest.plan(recipes, verify=cfg.storage.verify)
        report = StageReport("superpoints").planned(plan)
        units = [(s, (cfg.model_dump(), s, recipes[s])) for s in plan.todo]
        run_unit_tasks(_superpoints_task, units, manifest, report, "superpoints", cfg.progress)
    report.seconds = time.perf_counter() - start
    report.outputs["superpoints"] = stage.url()
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Segment every prepared scene into superpoints (segmentator: k_thresh 0.01, min_verts 60 as SAS).

    Mesh scenes use the mesh graph; meshless scenes (nuScenes lidar, point clouds) a kNN graph with PCA normals."""
    from jobs.cli import load_stage_config

    return run_superpoints(load_stage_config(config, overrides, SuperpointsConfig), address)
