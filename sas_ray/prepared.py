"""The prepared dataset, written by `sas-ray prepare` and read by every later stage.

    {root}/dataset.json                 layout, preset, split (what the constants of later stages depend on)
    {root}/scenes/{scene}.safetensors   points f32 [N,3], colors u8 [N,3], labels i64 [N], faces i64 [F,3] (optional)
                                        + metadata "frames": the scene's frame-index rows as JSON
    {root}/scenes/manifest.parquet      one row per scene (resume)
    {root}/frames.parquet               the frame index: every frame of every finished scene
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from sas_ray.errors import InputError
from sas_ray.scene import Scene
from sas_ray.storage import Storage, load_tensors, tensor_metadata

SCENES = "scenes"
FRAMES = "frames.parquet"
INFO = "dataset.json"

def scene_file(scene_id: str) -> str:
    return f"{scene_id}.safetensors"


def encode_scene(scene: Scene, frame_rows: list[dict]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors + metadata of a scene file."""
    tensors = {"points": torch.from_numpy(scene.points)}
    for name in ("colors", "labels", "faces"):
        value = getattr(scene, name)
        if value is not None:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors, {"scene": scene.scene_id, "frames": json.dumps(frame_rows)}


def decode_scene(blob: bytes, source: str) -> Scene:
    tensors = load_tensors(blob, source)
    meta = tensor_metadata(blob, source)
    if "points" not in tensors or "scene" not in meta:
        raise InputError(f"{source}: not a prepared scene file (needs 'points' and scene metadata)")
    return Scene(meta["scene"], **{k: v.numpy() for k, v in tensors.items()})


def read_scene(root: Storage, scene_id: str) -> Scene:
    rel = f"{SCENES}/{scene_file(scene_id)}"
    return decode_scene(root.read_bytes(rel), root.url(rel))


def read_scene_points(root: Storage, scene_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """points f32 [N,3] and labels i64 [N] (or None) of a prepared scene."""
    scene = read_scene(root, scene_id)
    return scene.points, scene.labels


def frame_rows_of(root: Storage, scene_id: str) -> list[dict]:
    rel = f"{SCENES}/{scene_file(scene_id)}"
    return json.loads(root.read_tensor_metadata(rel).get("frames", "[]"))


def read_frame_index(root: Storage) -> pa.Table:
    if not root.exists(FRAMES):
        raise InputError(f"{root.url(FRAMES)}: no frame index; run `sas-ray prepare` first")
    return root.read_table(FRAMES)


def read_info(root: Storage) -> dict:
    if not root.exists(INFO):
        raise InputError(f"{root.url(INFO)}: not a prepared dataset; run `sas-ray prepare` first")
    return root.read_json(INFO)
