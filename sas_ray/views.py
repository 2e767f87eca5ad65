"""Which scene point each pixel of a picture shows: from one of the scene's own cameras, or from above (a plan cut
below the ceiling). A picture then paints any per-point value (labels, a query's similarity) into every pixel the
scene covers, instead of scattering sparse dots.

A view is an int64 [H, W] array of point indices, -1 where no point shows. Points are z-buffered (the nearest to the
camera, the highest below the cut from above) and the gaps between them are filled from the nearest shown point up
to `fill` pixels away (and, for a camera with depth, only where the depth image saw a surface). Without depth
(lidar), occlusion is the z-buffer's alone: a sparse near surface lets denser far points show through its gaps.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from sas_ray.geometry.projection import project_points
from sas_ray.scene import Frame

NO_POINT = -1
PLAN_CUT = 0.8  # from above: points higher than this share of the floor-to-top height are cut away (ceilings)


def pick_views(points: np.ndarray, poses: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int],
               count: int = 2) -> list[int]:
    """Indices of up to `count` cameras (poses float64 [F,4,4] camera-to-world, intrinsics [F,3,3], one image size)
    that together see the most points: the best one, then the one adding most. Only the image test, no occlusion:
    a cheap coverage score."""
    _, _, valid = project_points(torch.from_numpy(points).float(), poses, intrinsics, size, cut_bound=0)
    seen = valid.numpy()
    chosen: list[int] = []
    covered = np.zeros(seen.shape[1], bool)
    for _ in range(min(count, len(poses))):
        gain = (seen & ~covered).sum(axis=1)
        gain[chosen] = -1
        best = int(gain.argmax())
        if gain[best] <= 0 and chosen:
            break
        chosen.append(best)
        covered |= seen[best]
    return chosen


def camera_view(points: np.ndarray, frame: Frame, visibility_threshold: float = 0.1) -> np.ndarray:
    """int64 [H, W]: the point each pixel of `frame` shows (see the module docstring); gaps are filled up to twice
    the mean spacing of the shown points."""
    height, width = frame.size
    rows, cols, valid = project_points(torch.from_numpy(points).float(), frame.pose, frame.intrinsic, frame.size,
                                       cut_bound=0, depth=frame.depth, visibility_threshold=visibility_threshold
                                       if frame.depth is not None else None)
    ids = torch.nonzero(valid).squeeze(1).numpy()
    camera_z = (points[ids] - frame.pose[:3, 3]) @ frame.pose[:3, 2]
    surface = None if frame.depth is None else frame.depth > 0
    fill = _gap(height * width, len(ids))
    return _zbuffer(rows.numpy()[ids], cols.numpy()[ids], ids, camera_z, (height, width), fill, surface)


def birdseye_view(points: np.ndarray, long_side: int = 640) -> tuple[np.ndarray, float]:
    """(int64 [H, W] point per cell seen from above, metres per cell): the scene's x-y extent fills the image; the
    highest point below the plan cut shows."""
    z = points[:, 2]
    floor, top = np.percentile(z, 1), np.percentile(z, 99)
    keep = np.flatnonzero(z <= floor + PLAN_CUT * (top - floor))
    lo, hi = points[keep, :2].min(axis=0), points[keep, :2].max(axis=0)
    cell = float(max(hi - lo)) / (long_side - 1) or 1.0
    shape = (int((hi[1] - lo[1]) / cell) + 1, int((hi[0] - lo[0]) / cell) + 1)
    cols = ((points[keep, 0] - lo[0]) / cell).astype(np.int64)
    rows = shape[0] - 1 - ((points[keep, 1] - lo[1]) / cell).astype(np.int64)  # north up
    return _zbuffer(rows, cols, keep, -z[keep], shape, _gap(shape[0] * shape[1], len(keep))), cell


def _gap(pixels: int, shown: int) -> int:
    """Pixels to fill around each shown point: twice the mean spacing of `shown` points spread over `pixels`."""
    return int(np.clip(np.ceil(2 * np.sqrt(pixels / max(shown, 1))), 1, 40))


def _zbuffer(rows: np.ndarray, cols: np.ndarray, ids: np.ndarray, distance: np.ndarray, shape: tuple[int, int],
             fill: int, surface: np.ndarray | None = None) -> np.ndarray:
    """The nearest point per pixel, then gaps filled from the nearest shown pixel within `fill` pixels (and only
    on `surface` pixels when given)."""
    view = np.full(shape, NO_POINT, np.int64)
    order = np.argsort(-distance, kind="stable")  # far first: nearer points overwrite them
    view[rows[order], cols[order]] = ids[order]
    empty = view == NO_POINT
    if empty.all() or fill <= 0:
        return view
    dist, (near_r, near_c) = ndimage.distance_transform_edt(empty, return_indices=True)
    reach = empty & (dist <= fill)
    if surface is not None:
        reach &= surface
    view[reach] = view[near_r[reach], near_c[reach]]
    return view


def paint(view: np.ndarray, colors: np.ndarray, background: np.ndarray | tuple[int, int, int]) -> np.ndarray:
    """uint8 [H, W, 3]: each pixel the colour of its point (colors uint8 [N, 3]); `background` (a colour or an image
    [H, W, 3]) where no point shows."""
    image = np.empty((*view.shape, 3), np.uint8)
    image[:] = background
    shown = view != NO_POINT
    image[shown] = colors[view[shown]]
    return image
