"""Masked square crops of many masks in one pass: the mask teacher's region rule as two matrix products per mask.

A mask's crop is the frame inside its bounding box with the pixels outside the mask set to `fill`, centred in a
square of side max(h, w) padded with `fill`, resized to `size` x `size` by F.interpolate (bilinear,
align_corners=False, antialiased only when shrinking). Every step is linear in (frame - fill) * mask, so

    crop_k = fill + R_k @ ((frame - fill) * mask_k) @ C_k^T

with R_k [size, H] and C_k [size, W] holding F.interpolate's weights, shifted to where the square sits in the frame.
The weights are computed for all masks at once (PyTorch's bilinear and antialias formulas), so no mask is cut out
in a Python loop and no square is materialised.
"""

from __future__ import annotations

import torch


def masked_square_crops(frames: torch.Tensor, frame_index: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                        size: int, fill: torch.Tensor) -> torch.Tensor:
    """frames float [B, 3, H, W], frame_index long [K] (each mask's frame), masks bool [K, H, W], boxes [K, 4]
    inclusive xyxy of each (non-empty) mask, fill float [3] -> crops float32 [K, 3, size, size]."""
    boxes = boxes.long()
    x0, y0, x1, y1 = boxes.unbind(1)
    heights, widths = y1 - y0 + 1, x1 - x0 + 1
    sides = torch.maximum(heights, widths)
    rows = resize_weights(y0 - (sides - heights) // 2, sides, frames.shape[2], size)  # [K, size, H]
    cols = resize_weights(x0 - (sides - widths) // 2, sides, frames.shape[3], size)  # [K, size, W]
    fill = fill.float().view(1, 3, 1, 1)
    centred = (frames[frame_index].float() - fill) * masks[:, None]  # [K, 3, H, W]
    return fill + rows[:, None] @ centred @ cols[:, None].transpose(-1, -2)


def resize_weights(starts: torch.Tensor, sides: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """float32 [K, size, length]: output i of resizing the window [start_k, start_k + side_k) of an axis of
    `length` pixels to `size` samples, as F.interpolate(bilinear, align_corners=False, antialias=side_k > size)
    weighs them; window positions outside [0, length) get no weight (they hold `fill`, the zero of the map)."""
    window = _window_weights(sides, size)  # [K, size, max side]
    pos = torch.arange(length, device=starts.device)[None, None, :] - starts[:, None, None]  # [K, 1, length]
    valid = (pos >= 0) & (pos < sides[:, None, None])
    index = pos.clamp(0, window.shape[-1] - 1).expand(-1, size, -1)
    return window.gather(2, index) * valid


def _window_weights(sides: torch.Tensor, size: int) -> torch.Tensor:
    """float32 [K, size, max side]: F.interpolate's weights of window pixel j for output i (zero for j >= side)."""
    scale = (sides.float() / size)[:, None, None]  # [K, 1, 1]
    side = sides[:, None, None].float()
    out = torch.arange(size, device=sides.device, dtype=torch.float32)[None, :, None]
    pos = torch.arange(int(sides.max()), device=sides.device, dtype=torch.float32)[None, None, :]
    # shrinking (side > size): PyTorch's antialias filter, a triangle widened by the scale, renormalised
    center = scale * (out + 0.5)
    lo = torch.clamp(torch.trunc(center - scale + 0.5), min=0)
    hi = torch.minimum(torch.trunc(center + scale + 0.5), side)
    tent = torch.clamp(1 - ((pos - center + 0.5) / scale).abs(), min=0) * ((pos >= lo) & (pos < hi))
    tent = tent / tent.sum(-1, keepdim=True).clamp(min=1e-300)
    # enlarging or equal (side <= size): plain bilinear between the two nearest window pixels
    src = torch.clamp(scale * (out + 0.5) - 0.5, min=0)
    first = torch.floor(src)
    second = first + (first < side - 1)
    frac = src - first
    linear = (1 - frac) * (pos == first) + frac * (pos == second)
    return torch.where(scale > 1, tent, linear).float()
