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
from sas_ray.config import PRESETS, PredictConfig, config_hash
from sas_ray.errors import ConfigError
from sas_ray.features import FEATURES, encode_features, feature_file
from sas_ray.storage import Manifest, Storage, UnitResult


def _predict_task(cfg: dict, scene_id: str, weights: dict, out_channels: int, text_space: str, voxel_size: float,
                  cfg_hash: str) -> UnitResult:
    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.steps import predict_points
    from sas_ray.distill.training import SceneSource, step_generator
    from sas_ray.scene import PointFeatures

    cfg = PredictConfig.model_validate(cfg)
    options = dict(cfg.storage.options)

    def work() -> tuple[str, str, int]:
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
        digest = stage.write_tensors(name, encode_features(features),
                                     {"teacher": cfg.name, "text_space": text_space, "dim": str(out_channels)})
        return name, digest, feat.numel() * 2

    return scene_unit(scene_id, cfg_hash, work)


def run_predict(cfg: PredictConfig, address: str | None = None) -> StageReport:
    import ray

    from sas_ray.distill.checkpoint import read_model
    from sas_ray.prepared import read_info

    start = time.perf_counter()
    ensure_ray(address)
    options = dict(cfg.storage.options)
    if cfg.checkpoint:
        folder, _, name = cfg.checkpoint.rpartition("/")
        model, metadata = read_model(Storage(folder or ".", options), name)
    else:
        distill = Storage(cfg.output, options).child("distill")
        stage = next((s for s in ("stage2", "stage1") if distill.exists(f"{s}/model.safetensors")), None)
        if stage is None:
            raise ConfigError(f"{distill.url()}: no distilled model; run `sas-ray distill` or set checkpoint")
        model, metadata = read_model(distill.child(stage), "model.safetensors")
    text_space = cfg.text_space or metadata.get("text_space")
    if not text_space:
        raise ConfigError("the checkpoint records no text space (an OpenScene file?): set text_space")
    info = read_info(Storage(cfg.prepared, options))
    voxel_size = cfg.voxel_size or float(metadata.get("voxel_size") or PRESETS[info["preset"]].voxel_size)
    scene_ids = cfg.scenes or info["scenes"]
    stage = Storage(cfg.output, options).child(FEATURES, cfg.name)
    manifest = Manifest(stage)
    todo = manifest.pending(scene_ids)
    report = StageReport("predict", skipped=len(scene_ids) - len(todo))
    weights = ray.put(model.state_dict())
    cfg_hash = config_hash(cfg)
    units = [(s, (cfg.model_dump(), s, weights, model.out_channels, text_space, voxel_size, cfg_hash)) for s in todo]
    run_unit_tasks(_predict_task, units, manifest, report, "predict", cfg.progress, num_gpus=1 if cfg.use_gpu else 0)
    report.seconds = time.perf_counter() - start
    report.outputs["features"] = stage.url()
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Run a distilled checkpoint over every prepared scene with test-time repeats -> features/{name}/ per point.

    Evaluate them with `sas-ray evaluate` (features: {name}). The default checkpoint is the last finished distill
    stage under {output}/distill/."""
    from jobs.cli import load_stage_config

    return run_predict(load_stage_config(config, overrides, PredictConfig), address)
