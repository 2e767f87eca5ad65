"""A tiny labelled dataset for the distillation jobs, written straight into the prepare/extract/superpoints layouts:
box-shaped objects on a floor, superpoints = the objects' faces, fused features = the tiny CLIP text embedding of
each point's class plus noise (so a 3D student can learn them and evaluation has a known answer)."""

import numpy as np
import torch

from sas_ray.distill.batch import SceneSample
from sas_ray.features import FEATURES, encode_features, feature_file
from sas_ray.labels import LABEL_SETS, OPENSCENE_OTHER_INDEX, prompts
from sas_ray.prepared import INFO, SCENES, encode_scene, scene_file
from sas_ray.scene import PointFeatures, Scene
from sas_ray.storage import Storage
from sas_ray.superpoints import SUPERPOINTS

TINY_TEXT = {"name": "openclip-text", "tiny": True}
CLASSES = (1, 4, 6, 2)  # floor, chair, table, cabinet (ScanNet-20 indices)


def _box_surface(rng, lo, hi, n):
    """n points on the faces of an axis-aligned box; face id per point."""
    face = rng.integers(0, 6, n)
    p = rng.uniform(lo, hi, (n, 3))
    axis, side = face // 2, face % 2
    p[np.arange(n), axis] = np.where(side == 0, np.asarray(lo)[axis], np.asarray(hi)[axis])
    return p, face


def write_samples(root: Storage, samples: list[SceneSample], text_space: str, features: str = "fused") -> None:
    """Scenes with fused features into the prepare / superpoints / extract layouts under `root`."""
    for sample in samples:
        scene = Scene(sample.scene_id, sample.points, None, sample.labels, None)
        tensors, metadata = encode_scene(scene, [])
        root.write_tensors(f"{SCENES}/{scene_file(sample.scene_id)}", tensors, metadata)
        root.child(SUPERPOINTS).write_tensors(f"{sample.scene_id}.safetensors",
                                              {"superpoint_ids": torch.from_numpy(sample.superpoints)})
        root.child(FEATURES, features).write_tensors(
            feature_file(sample.scene_id), encode_features(sample.features),
            {"text_space": text_space, "teacher": features, "dim": str(sample.features.dim)})
    root.write_json(INFO, {"layout": "scannet", "preset": "scannet", "split": "train",
                           "scenes": [s.scene_id for s in samples]})


def write_dataset(root: Storage, num_scenes: int, points: int = 900, seed: int = 0) -> list[str]:
    from sas_ray.models import build_text_encoder

    encoder = build_text_encoder("openclip-text", tiny=True)
    text = encoder.encode(prompts(LABEL_SETS["scannet20"], OPENSCENE_OTHER_INDEX.get("scannet20")))
    rng = np.random.default_rng(seed)
    samples = []
    for scene_id in [f"scene{i:04d}_00" for i in range(num_scenes)]:
        parts, labels, superpoints = [], [], []
        floor = np.c_[rng.uniform(0, 2, (points // 3, 2)), np.zeros(points // 3)]
        parts.append(floor), labels.append(np.full(len(floor), CLASSES[0])), superpoints.append(np.zeros(len(floor)))
        for k, cls in enumerate(CLASSES[1:]):
            corner = rng.uniform(0.1, 1.2, 2)
            size = rng.uniform(0.3, 0.6, 3)
            box, face = _box_surface(rng, [*corner, 0.0], [*(corner + size[:2]), size[2]], points // 5)
            parts.append(box), labels.append(np.full(len(box), cls)), superpoints.append(1 + 6 * k + face)
        lab = np.concatenate(labels).astype(np.int64)
        feat = text[torch.from_numpy(lab)] + 0.3 * torch.randn(len(lab), text.shape[1],
                                                                generator=torch.Generator().manual_seed(len(lab)))
        mask = torch.from_numpy(rng.random(len(lab)) < 0.8)
        samples.append(SceneSample(scene_id, np.concatenate(parts).astype(np.float32),
                                   np.concatenate(superpoints).astype(np.int64), PointFeatures(feat[mask].half(), mask),
                                   lab))
    write_samples(root, samples, encoder.text_space)
    return [s.scene_id for s in samples]
