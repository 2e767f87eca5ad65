"""Multi-view feature fusion state (SPEC §2.4): per-point feature sums and view counts that merge by addition, so
frames can be processed on any worker, in any order, and retried, with the same plain mean over views at the end.

Feature maps are channels-last [H',W',C] (a [C,H',W'] map is passed as `fmap.permute(1, 2, 0)`, a view, no copy).
A map may be coarser than the image (a strided teacher): image pixel (v,u) samples map cell
(floor(v·H'/H), floor(u·W'/W)); at image resolution that is the pixel itself, as in OpenScene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sas_ray.errors import InputError
from sas_ray.scene import PointFeatures


def sample_features(feature_map: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                    image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-pixel features of the valid points of one frame, or of a batch of B frames.

    feature_map: float [H',W',C] or [B,H',W',C] (any float dtype, e.g. fp16 from the teacher).
    rows, cols, valid: int64 / int64 / bool [N] or [B,N], from `project_points` at image_size (H, W).
    Returns point_ids int64 [M] (ascending within a frame; repeated across frames of a batch) and
    features float32 [M,C].
    """
    batch_shape = tuple(feature_map.shape[:-3])
    if feature_map.ndim not in (3, 4) or tuple(valid.shape[:-1]) != batch_shape \
            or rows.shape != valid.shape or cols.shape != valid.shape:
        raise InputError(f"sample_features: feature_map [H',W',C] or [B,H',W',C] with rows/cols/valid [N] or [B,N] "
                         f"expected, got {list(feature_map.shape)} and {list(rows.shape)}/{list(cols.shape)}/"
                         f"{list(valid.shape)}")
    hit = valid.nonzero(as_tuple=True)                                                   # (point,) or (frame, point)
    map_rows, map_cols = rows[hit], cols[hit]
    (height, width), (map_height, map_width) = image_size, feature_map.shape[-3:-1]
    if (map_height, map_width) != (height, width):
        map_rows = map_rows * map_height // height
        map_cols = map_cols * map_width // width
    features = feature_map[(*hit[:-1], map_rows, map_cols)].to(torch.float32)
    return hit[-1], features


@dataclass(frozen=True, eq=False)
class ScenePartial:
    """A sparse slice of a scene's fusion state, what a worker ships after its frames: num_points N of the scene;
    point_ids int64 [M] (ascending, unique when made by `FeatureAccumulator.partial`); feat_sum float32 [M,C]
    (float16 in transit between extraction actors and the driver);
    count int32 [M] views per point."""

    num_points: int
    point_ids: torch.Tensor
    feat_sum: torch.Tensor
    count: torch.Tensor

    def to(self, device: torch.device | str) -> ScenePartial:
        return ScenePartial(self.num_points, self.point_ids.to(device), self.feat_sum.to(device), self.count.to(device))

    def finish(self) -> PointFeatures:
        """`FeatureAccumulator.finish()` of a partial that holds every view of its scene, without the dense
        [N,C] state (point_ids must be ascending and unique, as `FeatureAccumulator.partial` makes them)."""
        mask_full = torch.zeros(self.num_points, dtype=torch.bool, device=self.point_ids.device)
        mask_full[self.point_ids] = True
        feat = self.feat_sum.float() / self.count.to(torch.float32).unsqueeze(1)
        return PointFeatures(feat=feat.to(torch.float16), mask_full=mask_full)


class FeatureAccumulator:
    """Running fusion state of one scene: feat_sum float32 [N,C] and count int32 [N] (views that saw the point)."""

    def __init__(self, num_points: int, dim: int, device: torch.device | str | None = None) -> None:
        self.feat_sum = torch.zeros(num_points, dim, dtype=torch.float32, device=device)
        self.count = torch.zeros(num_points, dtype=torch.int32, device=device)

    @property
    def num_points(self) -> int:
        return self.feat_sum.shape[0]

    @property
    def dim(self) -> int:
        return self.feat_sum.shape[1]

    def add(self, feature_map: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
            image_size: tuple[int, int]) -> None:
        """Add one frame (or a batch of frames) given as in `sample_features`; each valid point gains its feature
        and one view."""
        if feature_map.shape[-1] != self.dim or valid.shape[-1] != self.num_points:
            raise InputError(f"FeatureAccumulator.add: expected a {self.dim}-channel map and masks over "
                             f"{self.num_points} points, got {list(feature_map.shape)} and {list(valid.shape)}")
        point_ids, features = sample_features(feature_map, rows, cols, valid, image_size)
        self._add_sparse(point_ids, features, torch.ones_like(point_ids, dtype=torch.int32))

    def add_partial(self, partial: ScenePartial) -> None:
        """Add a partial (any device; moved here), e.g. one shipped by another worker."""
        if partial.num_points != self.num_points or partial.feat_sum.shape[1:] != (self.dim,):
            raise InputError(f"FeatureAccumulator.add_partial: partial is for {partial.num_points} points x "
                             f"{list(partial.feat_sum.shape[1:])} channels, accumulator for {self.num_points} x "
                             f"{self.dim}")
        partial = partial.to(self.feat_sum.device)
        self._add_sparse(partial.point_ids, partial.feat_sum, partial.count)

    def merge(self, other: FeatureAccumulator) -> None:
        """Add another accumulator of the same scene; addition, so the merge order does not matter."""
        if other.feat_sum.shape != self.feat_sum.shape:
            raise InputError(f"FeatureAccumulator.merge: shapes differ: {list(self.feat_sum.shape)} vs "
                             f"{list(other.feat_sum.shape)}")
        self.feat_sum += other.feat_sum.to(self.feat_sum.device)
        self.count += other.count.to(self.count.device)

    def partial(self) -> ScenePartial:
        """The state restricted to the points seen at least once (what leaves a worker)."""
        point_ids = (self.count > 0).nonzero().squeeze(1)
        return ScenePartial(self.num_points, point_ids, self.feat_sum[point_ids], self.count[point_ids])

    def finish(self) -> PointFeatures:
        """Mean over views (OpenScene: sum / count in float32, then fp16). mask_full = points seen at least once;
        feat holds their rows in point order (a point never seen would be a zero vector, and is not stored)."""
        mask_full = self.count > 0
        feat = self.feat_sum[mask_full] / self.count[mask_full].to(torch.float32).unsqueeze(1)
        return PointFeatures(feat=feat.to(torch.float16), mask_full=mask_full)

    def _add_sparse(self, point_ids: torch.Tensor, feat_sum: torch.Tensor, count: torch.Tensor) -> None:
        self.feat_sum.index_add_(0, point_ids, feat_sum.to(self.feat_sum.dtype))
        self.count.index_add_(0, point_ids, count.to(torch.int32))


def random_chunks(features: PointFeatures, num_chunks: int = 5, n_split_points: int = 20000,
                  seed: int = 1457) -> list[PointFeatures]:
    """OpenScene's training export (`save_fused_feature`): num_chunks draws, each a random subset of
    min(N, n_split_points) of ALL N points (not of the visible ones), intersected with features.mask_full.

    Draws come in order from one `np.random.RandomState(seed)` with OpenScene's call
    `choice(N, k, replace=False)`, so seed 1457 reproduces OpenScene's files for the first scene it processes
    (OpenScene seeds once per process; here each scene gets its own seed). The full-resolution export is
    `FeatureAccumulator.finish()` itself; OpenScene's val export equals `random_chunks(f, 1, 2_000_000)`, which
    is the full set unless N > 2M.
    """
    rng = np.random.RandomState(seed)
    n = features.num_points
    device = features.mask_full.device
    chunks = []
    for _ in range(num_chunks):
        picked = torch.from_numpy(rng.choice(n, min(n, n_split_points), replace=False)).to(device)
        drawn = torch.zeros(n, dtype=torch.bool, device=device)
        drawn[picked] = True
        chunks.append(PointFeatures(feat=features.feat[drawn[features.mask_full]],
                                    mask_full=drawn & features.mask_full))
    return chunks
