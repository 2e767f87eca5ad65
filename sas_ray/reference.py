"""The correctness oracle and speed baseline of extraction: OpenScene's fusion loop as the original scripts run it.

Deliberately simple and independent of `sas_ray.geometry`: per scene, per frame, one model forward, a numpy
projection written after `PointCloudToImageMapper.compute_mapping`, and a CPU running sum (SPEC §2.2–2.4).
"""

from __future__ import annotations

import numpy as np
import torch

from sas_ray.scene import Frame, PointFeatures, Scene


def compute_mapping(points: np.ndarray, pose: np.ndarray, intrinsic: np.ndarray, image_size: tuple[int, int],
                    cut_bound: int, depth: np.ndarray | None, vis_thres: float) -> np.ndarray:
    """OpenScene's mapping: int [N,3] of (row, col, valid) per point."""
    height, width = image_size
    mapping = np.zeros((3, len(points)), dtype=int)
    coords = np.concatenate([points, np.ones((len(points), 1))], axis=1).T
    world_to_camera = np.linalg.inv(pose)
    p = world_to_camera @ coords
    p[0] = (p[0] * intrinsic[0, 0]) / p[2] + intrinsic[0, 2]
    p[1] = (p[1] * intrinsic[1, 1]) / p[2] + intrinsic[1, 2]
    pi = np.round(p).astype(int)
    inside = (pi[0] >= cut_bound) * (pi[1] >= cut_bound) * (pi[0] < width - cut_bound) * (pi[1] < height - cut_bound)
    if depth is not None:
        depth_cur = depth[pi[1][inside], pi[0][inside]]
        occlusion = np.abs(depth_cur - p[2][inside]) <= vis_thres * depth_cur
        inside[inside] = occlusion
    else:
        inside &= p[2] > 0
    mapping[0][inside] = pi[1][inside]
    mapping[1][inside] = pi[0][inside]
    mapping[2][inside] = 1
    return mapping.T


def reference_fusion(teacher, scene: Scene, frames: list[Frame], cut_bound: int, vis_thres: float,
                     labelled_only: bool = False) -> PointFeatures:
    """Fused features of one scene, frame by frame on the CPU. `labelled_only`: only points with a label != 255
    are projected (OpenScene's nuScenes fusion); mask_full still spans every point."""
    n = scene.num_points
    subset = np.arange(n) if not labelled_only else np.flatnonzero(scene.labels != 255)
    points = scene.points[subset].astype(np.float64)
    sum_features = torch.zeros(n, teacher.dim)
    counter = torch.zeros(n, 1)
    for frame in frames:
        with torch.no_grad():
            feat_2d = teacher.encode(torch.from_numpy(frame.rgb)[None])[0].float().cpu()    # [H',W',C]
        mapping = compute_mapping(points, frame.pose, frame.intrinsic, frame.size, cut_bound, frame.depth, vis_thres)
        visible = mapping[:, 2] == 1
        if not visible.any():
            continue
        h, w = frame.size
        rows = mapping[visible, 0] * feat_2d.shape[0] // h
        cols = mapping[visible, 1] * feat_2d.shape[1] // w
        ids = torch.from_numpy(subset[visible])
        sum_features[ids] += feat_2d[torch.from_numpy(rows), torch.from_numpy(cols)]
        counter[ids] += 1
    counter[counter == 0] = 1e-5
    feat_bank = sum_features / counter
    mask_full = counter[:, 0] >= 1
    return PointFeatures(feat=feat_bank[mask_full].half(), mask_full=mask_full)
