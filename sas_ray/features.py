"""Per-scene feature files written by `extract` (and `fuse`): {root}/features/{teacher}/{scene}.safetensors.

Full resolution: {"feat": fp16 [M,C], "mask_full": bool [N]} (OpenScene semantics, SPEC §2.4). OpenScene's train
export (`split: chunks`): {"feat_k", "mask_full_k"} for k < num_chunks, each a random point subset.
"""

from __future__ import annotations

import torch

from sas_ray.errors import InputError
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage, load_tensors, tensor_metadata

FEATURES = "features"


def feature_file(scene_id: str) -> str:
    return f"{scene_id}.safetensors"


def encode_features(features: PointFeatures | list[PointFeatures]) -> dict[str, torch.Tensor]:
    """Tensors of a feature file: full resolution {feat, mask_full}, or chunks {feat_k, mask_full_k}."""
    if isinstance(features, PointFeatures):
        return {"feat": features.feat, "mask_full": features.mask_full}
    tensors = {}
    for k, chunk in enumerate(features):
        tensors[f"feat_{k}"], tensors[f"mask_full_{k}"] = chunk.feat, chunk.mask_full
    return tensors


def decode_features(tensors: dict[str, torch.Tensor], source: str) -> PointFeatures | list[PointFeatures]:
    """Inverse of `encode_features`."""
    try:
        if "feat" in tensors:
            return PointFeatures(tensors["feat"], tensors["mask_full"])
        k = 0
        chunks = []
        while f"feat_{k}" in tensors:
            chunks.append(PointFeatures(tensors[f"feat_{k}"], tensors[f"mask_full_{k}"]))
            k += 1
        if chunks:
            return chunks
    except (KeyError, InputError) as err:
        raise InputError(f"{source}: bad feature file: {err}") from None
    raise InputError(f"{source}: not a feature file (no 'feat' tensor)")


def read_features(root: Storage, teacher: str, scene_id: str) -> PointFeatures | list[PointFeatures]:
    """The features a stage wrote for `scene_id` under {root}/features/{teacher}/."""
    stage = root.child(FEATURES, teacher)
    name = feature_file(scene_id)
    return decode_features(stage.read_tensors(name), stage.url(name))


def read_full_features(root: Storage, folder: str, scene_id: str) -> tuple[PointFeatures, str]:
    """A scene's full-resolution features under {root}/features/{folder}/ and the text space they live in
    (metadata "text_space"); a missing file, a chunked file or a file without a text space is an InputError."""
    stage = root.child(FEATURES, folder)
    name = feature_file(scene_id)
    source = stage.url(name)
    try:
        blob = stage.read_bytes(name)
    except FileNotFoundError:
        raise InputError(f"scene {scene_id}: '{folder}' has no features ({source} not found)") from None
    features = decode_features(load_tensors(blob, source), source)
    if isinstance(features, list):
        raise InputError(f"scene {scene_id}: {source} holds {len(features)} random point chunks (extract split: "
                         "chunks); this stage needs full-resolution features (split: full)")
    space = tensor_metadata(blob, source).get("text_space", "")
    if not space:
        raise InputError(f"scene {scene_id}: {source} has no 'text_space' metadata (needed to check that the "
                         "features can be compared with the text embeddings)")
    return features, space
