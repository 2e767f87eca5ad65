"""`sas-ray predict`: a distilled MinkUNet18A over scenes -> per-point 3D features for `sas-ray evaluate`.

One Ray task per scene (the model's weights travel once through the object store); each voxelizes its scene
`repeats` times with OpenScene's random rotation/scale (test-time repeats, SPEC §4), averages the per-point
features, and writes {output}/features/{name}/{scene}.safetensors ({"feat": fp16 [N,C], "mask_full": all True},
metadata text_space) with a manifest, so reruns skip finished scenes.
"""

from __future__ import annotations

import time

import torch

from jobs.runtime import StageReport, ensure_ray, run_unit_tasks, scene_unit
from sas_ray.config import PRESETS, PredictConfig
from sas_ray.errors import ConfigError
from sas_ray.features import FEATURES, encode_features, feature_file
from sas_ray.lineage import Recipe, content_digest, stage_recipe
from sas_ray.manifest import UnitResult, open_stage, output_digests
from sas_ray.prepared import SCENES
from sas_ray.storage import Storage, StoredObject

RECIPE_FIELDS = ("repeats", "seed")  # + the resolved voxel size and text space; inputs: the model, the scene
VERSION = 1


def _predict_task(cfg: dict, scene_id: str, weights: dict, out_channels: int, text_space: str, voxel_size: float,
                  recipe: Recipe) -> UnitResult:
    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.steps import predict_points
    from sas_ray.distill.training import SceneSource, step_generator
    from sas_ray.scene import PointFeatures

    cfg = PredictConfig.model_validate(cfg)
    options = dict(cfg.storage.options)

    def work() -> tuple[str, StoredObject]:
        device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
        model = MinkUNet18A(3, out_channels)
        model.load_state_dict(weights)
        model.to(device)
        sample = SceneSource(Storage(cfg.prepared, options), superpoints=None).load(scene_id, with_features=False)
        generator = step_generator([cfg.seed], int.from_bytes(scene_id.encode()[-8:], "little"))
        feat = predict_points(model, get_backend(cfg.backend), sample, voxel_size, cfg.repeats, generator, device)
        features = PointFeatures(feat.half().cpu(), torch.ones(feat.shape[0], dtype=torch.bool))
        stage = Storage(cfg.output, options).child(FEATURES, cfg.name)
        name = feature_file(scene_id)
        return name, stage.put_tensors(name, encode_features(features),
                                       {"teacher": cfg.name, "text_space": text_space, "dim": str(out_channels)})

    return scene_unit(scene_id, recipe, work)


def run_predict(cfg: PredictConfig, address: str | None = None) -> StageReport:
    import ray

    from sas_ray.distill.checkpoint import read_model
    from sas_ray.prepared import read_info

    start = time.perf_counter()
    options = dict(cfg.storage.options)
    stage = Storage(cfg.output, options).child(FEATURES, cfg.name)
    with open_stage(stage, wait=cfg.storage.wait) as manifest:
        ensure_ray(address)
        if cfg.checkpoint:
            folder, _, name = cfg.checkpoint.rpartition("/")
            source = Storage(folder or ".", options)
        else:
            distill = Storage(cfg.output, options).child("distill")
            found = next((s for s in ("stage2", "stage1") if distill.exists(f"{s}/model.safetensors")), None)
            if found is None:
                raise ConfigError(f"{distill.url()}: no distilled model; run `sas-ray distill` or set checkpoint")
            source, name = distill.child(found), "model.safetensors"
        model, metadata = read_model(source, name)
        text_space = cfg.text_space or metadata.get("text_space")
        if not text_space:
            raise ConfigError("the checkpoint records no text space (an OpenScene file?): set text_space")
        prepared = Storage(cfg.prepared, options)
        info = read_info(prepared)
        voxel_size = cfg.voxel_size or float(metadata.get("voxel_size") or PRESETS[info["preset"]].voxel_size)
        scene_ids = cfg.scenes or info["scenes"]
        config = stage_recipe(VERSION, cfg, RECIPE_FIELDS, voxel_size=voxel_size, text_space=text_space)
        model_sha, scenes = content_digest(source.url(name), options), output_digests(prepared.child(SCENES))
        recipes = {s: config.unit({"model": model_sha, "scene": scenes.get(s, "")}) for s in scene_ids}
        plan = manifest.plan(recipes, verify=cfg.storage.verify)
        report = StageReport("predict").planned(plan)
        weights = ray.put(model.state_dict())
        units = [(s, (cfg.model_dump(), s, weights, model.out_channels, text_space, voxel_size, recipes[s]))
                 for s in plan.todo]
        run_unit_tasks(_predict_task, units, manifest, report, "predict", cfg.progress,
                       num_gpus=1 if cfg.use_gpu else 0)
    report.seconds = time.perf_counter() - start
    report.outputs["features"] = stage.url()
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Run a distilled checkpoint over every prepared scene with test-time repeats -> features/{name}/ per point.

    Evaluate them with `sas-ray evaluate` (features: {name}). The default checkpoint is the last finished distill
    stage under {output}/distill/."""
    from jobs.cli import load_stage_config

    return run_predict(load_stage_config(config, overrides, PredictConfig), address)
