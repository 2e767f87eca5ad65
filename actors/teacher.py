"""Ray Data actor running one registered 2D teacher over batches of frames: loaded once, warmed up, then batched.

    frames.map_batches(TeacherActor, **teacher_map_kwargs(spec))

Input rows carry `rgb` uint8 [H, W, 3]; output rows add `features` (or another column name) [H, W, C]
float16, for model-only use (throughput, inspection). The extraction pipeline fuses on its actor instead
(actors/extraction.py), with the same teachers.
"""

from __future__ import annotations

import numpy as np
import torch

from actors import actor_device, actor_dtype
from sas_ray.config import TeacherSpec
from sas_ray.models import build_teacher


def teacher_map_kwargs(spec: TeacherSpec, storage_options: dict | None = None,
                       warmup_size: tuple[int, int] | None = (64, 64), column: str = "features") -> dict:
    """`map_batches` keyword arguments declared by the spec: actor pool (min, max), GPUs per actor, batch size."""
    return {"fn_constructor_kwargs": {"spec": spec.model_dump(), "storage_options": storage_options,
                                      "warmup_size": warmup_size, "column": column},
            "concurrency": tuple(spec.pool), "num_gpus": spec.gpus, "batch_size": spec.batch_size,
            "batch_format": "numpy"}


class TeacherActor:
    """Adds `column` (default "features") to each row; several teachers can annotate the same frames."""

    def __init__(self, spec: dict, storage_options: dict | None = None,
                 warmup_size: tuple[int, int] | None = (64, 64), column: str = "features"):
        spec = TeacherSpec(**spec)
        self.column = column
        self.device = actor_device()
        self.teacher = build_teacher(spec.name, spec.weights, tiny=spec.tiny, device=self.device,
                                     dtype=actor_dtype(spec.dtype, self.device), storage_options=storage_options,
                                     **spec.options)
        if warmup_size is not None:  # first calls pay for kernel selection and allocator growth
            self.teacher.encode(torch.zeros(1, *warmup_size, 3, dtype=torch.uint8))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = list(batch["rgb"])
        features: list[np.ndarray | None] = [None] * len(frames)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):  # frames of equal size share one forward
            by_size.setdefault(frame.shape, []).append(i)
        for rows in by_size.values():
            rgb = torch.from_numpy(np.stack([frames[i] for i in rows])).to(self.device)
            out = self.teacher.encode(rgb).to(torch.float16).cpu().numpy()
            for i, feats in zip(rows, out):
                features[i] = feats
        return {**batch, self.column: _column(features)}


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """A stacked array when shapes agree, else an object column (Ray Data stores it as a ragged tensor)."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        column[i] = array
    return column
