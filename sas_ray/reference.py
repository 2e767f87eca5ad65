"""Correctness oracles and speed baselines, written the way the original scripts run.

- `reference_fusion`: OpenScene's fusion loop, deliberately independent of `sas_ray.geometry`: per scene, per frame,
  one model forward, a numpy projection written after `PointCloudToImageMapper.compute_mapping`, and a CPU running
  sum (SPEC §2.2–2.4).
- `reference_sam_clip`: the mask teacher's features through segment_anything's own `SamAutomaticMaskGenerator`, frame
  by frame, each mask cropped and resized on its own (the sam-clip teacher before it moved onto the device).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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


def reference_sam_clip(teacher, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> [B, H, W, C]: a `sam-clip` teacher's features (its SAM, CLIP and mask options) computed
    by segment_anything's generator one frame at a time (its own 64-prompt batches, RLE and numpy) and one masked
    square crop at a time, painted by predicted IoU."""
    from segment_anything import SamAutomaticMaskGenerator

    from sas_ray.models.sam import sam_autocast
    from sas_ray.models.sam_clip import paint_masks

    options = teacher.masks
    generator = SamAutomaticMaskGenerator(
        options.sam, points_per_side=options.points_per_side, pred_iou_thresh=options.pred_iou_thresh,
        stability_score_thresh=options.stability_score_thresh,
        stability_score_offset=options.stability_score_offset, box_nms_thresh=options.box_nms_thresh)
    out = []
    for rgb in torch.as_tensor(images).cpu().numpy():
        with sam_autocast(teacher.device, teacher.dtype):
            records = generator.generate(rgb)[:options.max_masks]  # best first
        records = [r for r in records if r["area"] > 0]
        if not records:
            out.append(torch.zeros(*rgb.shape[:2], teacher.dim, device=teacher.device, dtype=teacher.dtype))
            continue
        frame = torch.from_numpy(rgb).to(teacher.device).permute(2, 0, 1).float() / 255
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).to(teacher.device)
        scores = torch.tensor([r["predicted_iou"] for r in records], device=teacher.device)
        crops = torch.stack([_masked_square_crop(frame, mask, teacher.clip.mean, teacher.clip.image_size)
                             for mask in masks])
        batch = teacher.clip.normalize(crops).to(teacher.dtype)
        embeddings = F.normalize(teacher.clip.model.encode_image(batch).float(), dim=-1)
        out.append(paint_masks(masks, scores, embeddings).to(teacher.dtype))
    return torch.stack(out)


def _masked_square_crop(frame: torch.Tensor, mask: torch.Tensor, fill: tuple, size: int) -> torch.Tensor:
    """float [3, H, W], bool [H, W] -> [3, size, size]: the mask's box, outside-mask pixels and the padding to a
    centred square set to `fill`, resized bilinearly (antialiased when shrinking)."""
    fill = torch.tensor(fill, device=frame.device).view(3, 1, 1)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    r0, r1, c0, c1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    crop = torch.where(mask[r0:r1, c0:c1], frame[:, r0:r1, c0:c1], fill)
    side = max(r1 - r0, c1 - c0)
    square = fill.expand(3, side, side).clone()
    top, left = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
    square[:, top:top + r1 - r0, left:left + c1 - c0] = crop
    return F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=side > size)[0]
