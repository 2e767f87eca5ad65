"""The data that flows between stages: a 3D scene, one posed RGB-D frame, and fused per-point features.

All three validate on construction and raise `InputError` naming the scene/frame and what was wrong, so a bad
unit fails loudly at the boundary instead of producing silent garbage downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sas_ray.errors import InputError
from sas_ray.ids import check_id

IGNORE_LABEL = 255


def _fail(unit: str, message: str) -> None:
    raise InputError(f"{unit}: {message}")


def _check_array(unit: str, name: str, value, dtype, shape: tuple) -> None:
    """shape entries: int (exact), None (any)."""
    if not isinstance(value, np.ndarray):
        _fail(unit, f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        _fail(unit, f"{name} must be {np.dtype(dtype).name}, got {value.dtype.name}")
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        want = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
        _fail(unit, f"{name} must have shape {want}, got {list(value.shape)}")


@dataclass(frozen=True, eq=False)
class Scene:
    """A 3D scene: points float32 [N,3] (metres, world frame), colors uint8 [N,3] or None,
    labels int64 [N] (255 = ignore) or None, faces int64 [F,3] (mesh triangles over the points) or None."""

    scene_id: str
    points: np.ndarray
    colors: np.ndarray | None = None
    labels: np.ndarray | None = None
    faces: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_id(self.scene_id, "scene id")
        unit = f"scene {self.scene_id}"
        _check_array(unit, "points", self.points, np.float32, (None, 3))
        n = len(self.points)
        if n == 0:
            _fail(unit, "scene has no points (empty scene)")
        if not np.isfinite(self.points).all():
            _fail(unit, "points contain NaN or inf")
        if self.colors is not None:
            _check_array(unit, "colors", self.colors, np.uint8, (n, 3))
        if self.labels is not None:
            _check_array(unit, "labels", self.labels, np.int64, (n,))
            if len(self.labels) and (self.labels.min() < 0 or self.labels.max() > IGNORE_LABEL):
                _fail(unit, f"labels must lie in 0..{IGNORE_LABEL}, got {self.labels.min()}..{self.labels.max()}")
        if self.faces is not None:
            _check_array(unit, "faces", self.faces, np.int64, (None, 3))
            if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= n):
                _fail(unit, f"faces index vertices 0..{n - 1}, got {self.faces.min()}..{self.faces.max()}")

    @property
    def num_points(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class Frame:
    """One posed view: rgb uint8 [H,W,3]; depth float32 [H,W] in metres (0 = no reading) or None (no depth sensor,
    e.g. nuScenes); intrinsic float64 [3,3] pinhole K for this (H,W); pose float64 [4,4] camera-to-world (OpenCV:
    x right, y down, z forward)."""

    scene_id: str
    frame_id: str
    rgb: np.ndarray
    intrinsic: np.ndarray
    pose: np.ndarray
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_id(self.scene_id, "scene id")
        check_id(self.frame_id, "frame id")
        unit = f"{self.scene_id} frame {self.frame_id}"
        _check_array(unit, "rgb", self.rgb, np.uint8, (None, None, 3))
        h, w = self.rgb.shape[:2]
        if h == 0 or w == 0:
            _fail(unit, "rgb image is empty")
        if self.depth is not None:
            _check_array(unit, "depth", self.depth, np.float32, (None, None))
            if self.depth.shape != (h, w):
                _fail(unit, f"depth is {self.depth.shape[1]}x{self.depth.shape[0]} but rgb is {w}x{h} "
                            "(expected equal sizes)")
            if not np.isfinite(self.depth).all() or (self.depth < 0).any():
                _fail(unit, "depth contains NaN, inf or negative values")
        _check_array(unit, "intrinsic", self.intrinsic, np.float64, (3, 3))
        k = self.intrinsic
        if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
            _fail(unit, f"intrinsic must be finite with positive focal lengths, got fx={k[0, 0]}, fy={k[1, 1]}")
        _check_array(unit, "pose", self.pose, np.float64, (4, 4))
        if not np.isfinite(self.pose).all():
            _fail(unit, "pose contains NaN or inf")
        if not np.allclose(self.pose[3], [0, 0, 0, 1]):
            _fail(unit, f"pose last row must be [0,0,0,1], got {self.pose[3].tolist()}")
        if abs(np.linalg.det(self.pose[:3, :3])) < 1e-6:
            _fail(unit, "pose rotation is singular (determinant ~0)")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]


@dataclass(frozen=True, eq=False)
class PointFeatures:
    """Fused features with OpenScene semantics (SPEC §2.4): feat fp16 [M,C] holds the rows of the points where
    mask_full bool [N] is True, in point order."""

    feat: torch.Tensor
    mask_full: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.feat, torch.Tensor) or self.feat.dtype != torch.float16 or self.feat.ndim != 2:
            raise InputError(f"feat must be a float16 tensor [M,C], got {getattr(self.feat, 'dtype', type(self.feat))} "
                             f"{list(getattr(self.feat, 'shape', []))}")
        if not isinstance(self.mask_full, torch.Tensor) or self.mask_full.dtype != torch.bool or self.mask_full.ndim != 1:
            raise InputError("mask_full must be a bool tensor [N]")
        if int(self.mask_full.sum()) != self.feat.shape[0]:
            raise InputError(f"feat has {self.feat.shape[0]} rows but mask_full marks {int(self.mask_full.sum())} points")

    @property
    def dim(self) -> int:
        return self.feat.shape[1]

    @property
    def num_points(self) -> int:
        return self.mask_full.shape[0]

    def dense(self) -> torch.Tensor:
        """float32 [N,C] with zero rows where mask_full is False."""
        out = torch.zeros(self.num_points, self.dim, dtype=torch.float32, device=self.feat.device)
        out[self.mask_full] = self.feat.float()
        return out
