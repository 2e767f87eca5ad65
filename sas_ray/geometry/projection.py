"""Which scene points a posed camera sees and at which pixel: OpenScene's `PointCloudToImageMapper.compute_mapping`
(SPEC §2.2), in torch so it runs on the GPU beside the 2D teacher.

Conventions: pinhole/OpenCV camera (x right, y down, z forward), pose = camera-to-world, pixel (row v, col u).
Numerics match the numpy original: the pose is inverted with a general float64 inverse on the pose's device, the
camera transform and u = (X·fx)/Z + cx, v = (Y·fy)/Z + cy run in float64 (points are upcast), and pixels are
rounded with `torch.round`, which like `np.round` rounds halves to even (9.5 -> 10, 10.5 -> 10).
"""

from __future__ import annotations

import numpy as np
import torch

from sas_ray.errors import InputError


def project_points(points: torch.Tensor, pose: np.ndarray | torch.Tensor, intrinsic: np.ndarray | torch.Tensor,
                   image_size: tuple[int, int], *, cut_bound: int, depth: np.ndarray | torch.Tensor | None = None,
                   visibility_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project world points into one camera, or a batch of B cameras at once; everything runs on points.device.

    points: float [N,3] world coordinates (float32 usually; computed in float64).
    pose: float64 [4,4] or [B,4,4] camera-to-world; numpy or torch (inverted on its own device, then moved).
    intrinsic: float64 [3,3] or [B,3,3] pinhole K for image_size.
    image_size: (H, W) of the image (and of depth).
    cut_bound: pixels ignored at each border; valid pixels satisfy cut_bound <= u < W - cut_bound, same for v.
    depth: float32 [H,W] or [B,H,W] metres, 0 = no reading; None = no occlusion test (nuScenes).
    visibility_threshold: relative occlusion tolerance, required with depth: keep |D(v,u) - Z| <= t·D(v,u).
    Returns rows int64 [N] or [B,N] (v; 0 where not valid), cols int64 likewise (u), valid bool likewise.

    A point is valid when Z > 0, its rounded pixel is inside the cut image and, with depth, it passes the
    occlusion test (D = 0 therefore rejects). OpenScene checks Z > 0 only without depth; with depth its occlusion
    test already rejects Z <= 0 whenever visibility_threshold < 1 (every real preset), so the results are equal.
    """
    _check_inputs(points, pose, intrinsic, image_size, cut_bound, depth, visibility_threshold)
    device = points.device
    world_to_camera = torch.linalg.inv_ex(_float64(pose)).inverse.to(device)              # [...,4,4]
    k = _float64(intrinsic).to(device)                                                     # [...,3,3]

    camera = points.to(torch.float64) @ world_to_camera[..., :3, :3].mT                   # [...,N,3]
    camera += world_to_camera[..., None, :3, 3]
    x, y, z = camera.unbind(-1)
    u = torch.round(x * k[..., 0, 0, None] / z + k[..., 0, 2, None])
    v = torch.round(y * k[..., 1, 1, None] / z + k[..., 1, 2, None])
    height, width = image_size
    valid = (z > 0) & (u >= cut_bound) & (u < width - cut_bound) & (v >= cut_bound) & (v < height - cut_bound)
    # u, v may be inf/NaN where not valid: zero them before the integer cast.
    cols = torch.where(valid, u, 0.0).to(torch.int64)
    rows = torch.where(valid, v, 0.0).to(torch.int64)

    if depth is not None:
        depth = torch.as_tensor(depth, device=device)
        d = depth.flatten(-2).gather(-1, rows * width + cols).to(torch.float64)             # [...,N]
        valid &= (d - z).abs() <= visibility_threshold * d
        rows *= valid
        cols *= valid
    return rows, cols, valid


def _check_inputs(points, pose, intrinsic, image_size, cut_bound, depth, visibility_threshold) -> tuple[int, ...]:
    """Shape checks only (no device sync); returns the batch shape: () or (B,)."""
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3 \
            or not points.is_floating_point():
        raise InputError(f"project_points: points must be a float tensor [N,3], got "
                         f"{getattr(points, 'dtype', type(points).__name__)} {list(getattr(points, 'shape', []))}")
    batch_shape = tuple(pose.shape[:-2])
    if tuple(pose.shape[-2:]) != (4, 4) or len(batch_shape) > 1:
        raise InputError(f"project_points: pose must be [4,4] or [B,4,4], got {list(pose.shape)}")
    if tuple(intrinsic.shape) not in ((3, 3), batch_shape + (3, 3)):
        raise InputError(f"project_points: intrinsic must be [3,3] or {list(batch_shape + (3, 3))}, "
                         f"got {list(intrinsic.shape)}")
    height, width = image_size
    if height < 1 or width < 1 or cut_bound < 0:
        raise InputError(f"project_points: bad image_size (H,W)={tuple(image_size)} or cut_bound={cut_bound}")
    if depth is not None:
        if tuple(depth.shape) != batch_shape + (height, width):
            raise InputError(f"project_points: depth must be {list(batch_shape + (height, width))} to match the "
                             f"image size and poses, got {list(depth.shape)}")
        if visibility_threshold is None:
            raise InputError("project_points: visibility_threshold is required when depth is given")
    return batch_shape


def _float64(matrix: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A float64 tensor of a pose or intrinsic; arrays are copied, so a read-only one (a Ray block's column) is taken
    without torch's warning about non-writable arrays."""
    return torch.tensor(matrix, dtype=torch.float64) if isinstance(matrix, np.ndarray) else matrix.to(torch.float64)
