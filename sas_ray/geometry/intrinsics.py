"""Rescale pinhole intrinsics to a resized image with OpenScene's exact rule (SPEC §2.3, `adjust_intrinsic`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sas_ray.errors import InputError


def adjust_intrinsic(intrinsic: np.ndarray | torch.Tensor, old_size: tuple[int, int],
                     new_size: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Intrinsics of an image resized from old_size to new_size, both (height, width).

    intrinsic: float64 [3,3] (or OpenScene's [4,4]) pinhole K at old_size, numpy or torch; not modified.
    Returns a new K of the same type, dtype and device. The rule is OpenScene's, arithmetic order included:
    new_w = floor(H_new * W_old / H_old); fx *= new_w / W_old; fy *= H_new / H_old;
    cx *= (W_new - 1) / (W_old - 1); cy *= (H_new - 1) / (H_old - 1).
    Note fx follows the aspect-preserving width new_w, not W_new (they agree when the aspect ratio is kept).
    """
    (h_old, w_old), (h_new, w_new) = old_size, new_size
    if min(h_old, w_old) < 2 or min(h_new, w_new) < 1:
        raise InputError(f"adjust_intrinsic: image sizes must be (height, width) with old sides >= 2 and new sides "
                         f">= 1, got old {tuple(old_size)}, new {tuple(new_size)}")
    if tuple(intrinsic.shape) not in ((3, 3), (4, 4)):
        raise InputError(f"adjust_intrinsic: intrinsic must be [3,3] or [4,4], got {list(intrinsic.shape)}")
    resize_width = math.floor(h_new * float(w_old) / float(h_old))
    k = intrinsic.clone() if isinstance(intrinsic, torch.Tensor) else np.array(intrinsic, copy=True)
    k[0, 0] *= float(resize_width) / float(w_old)
    k[1, 1] *= float(h_new) / float(h_old)
    k[0, 2] *= float(w_new - 1) / float(w_old - 1)
    k[1, 2] *= float(h_new - 1) / float(h_old - 1)
    return k
