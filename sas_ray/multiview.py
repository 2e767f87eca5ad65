"""One teacher's per-pixel features fused onto one scene's points over a group of its views (SPEC §2), batched on
whatever device the teacher runs on: model forward, projection, depth test and sampling never leave that device,
and only the sparse partial sum of the points the views saw comes out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sas_ray.geometry.accumulator import FeatureAccumulator
from sas_ray.geometry.projection import project_points


@dataclass(frozen=True, eq=False)
class Views:
    """Frames of one scene, stacked: rgb uint8 [F,H,W,3]; depth float32 [F,H,W] metres or None; intrinsic float64
    [F,3,3]; pose float64 [F,4,4] camera-to-world."""

    rgb: np.ndarray
    intrinsic: np.ndarray
    pose: np.ndarray
    depth: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rgb)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[2]


@dataclass(frozen=True)
class Visibility:
    """How a view decides which points it sees (SPEC §2.2): border in pixels and relative depth tolerance."""

    cut_bound: int
    vis_thres: float


def fuse_views(teacher, points: torch.Tensor, views: Views, visibility: Visibility,
               batch_size: int) -> FeatureAccumulator:
    """Accumulate `teacher`'s features of every view onto `points` float32 [N,3] (on the teacher's device).

    `teacher.encode(uint8 [B,H,W,3]) -> float [B,H',W',C]` runs `batch_size` frames at a time; each batch is
    projected as a whole ([B,N] masks), so the GPU sees few, large kernels.
    """
    device = points.device
    accumulator = FeatureAccumulator(len(points), teacher.dim, device=device)
    for start in range(0, len(views), batch_size):
        batch = slice(start, start + batch_size)
        rgb = torch.tensor(views.rgb[batch], device=device)  # a copy: Ray hands the actor read-only arrays
        depth = None if views.depth is None else torch.tensor(views.depth[batch], device=device)
        features = teacher.encode(rgb)
        rows, cols, valid = project_points(points, views.pose[batch], views.intrinsic[batch], views.image_size,
                                           cut_bound=visibility.cut_bound, depth=depth,
                                           visibility_threshold=visibility.vis_thres if depth is not None else None)
        accumulator.add(features, rows, cols, valid, views.image_size)
    return accumulator
