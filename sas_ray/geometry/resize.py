"""Frames resized at decode the way OpenScene's preprocessing resized them with cv2, intrinsics by SPEC §2.3.

OpenScene stores frames already resized: ScanNet and Matterport with cv2.INTER_NEAREST, nuScenes with cv2.resize's
default INTER_LINEAR (1600x900 -> 800x450). Here the same resize runs when a frame is decoded:
- nearest: source pixel floor(x * src / dst), clamped (cv2.INTER_NEAREST), for colour, depth and labels alike;
- bilinear: cv2.INTER_LINEAR's half-pixel sampling with clamped borders; an exact 2x reduction is the mean of each
  2x2 block rounded half up, which is what cv2 computes for it (its INTER_AREA fast path) bit for bit. Other
  ratios round the float value half up, within one level of cv2's fixed-point weights. Depth is resized nearest.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from sas_ray.errors import InputError
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.scene import Frame

INTERPOLATIONS = ("nearest", "bilinear")


def _nearest_index(src: int, dst: int) -> np.ndarray:
    inverse_scale = 1.0 / (dst / src)  # cv2: ifx = 1 / (dsize / ssize)
    return np.minimum(np.floor(np.arange(dst) * inverse_scale).astype(np.int64), src - 1)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and the upper tap's weight of every output pixel along one axis."""
    position = np.maximum((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0.0)
    low = np.minimum(np.floor(position).astype(np.int64), src - 1)
    return low, np.minimum(low + 1, src - 1), position - low


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """image [H,W] or [H,W,C] resized to size (H, W), same dtype; bilinear is for uint8 images."""
    (src_h, src_w), (dst_h, dst_w) = image.shape[:2], size
    if (src_h, src_w) == (dst_h, dst_w):
        return image
    if interpolation == "nearest":
        return image[_nearest_index(src_h, dst_h)[:, None], _nearest_index(src_w, dst_w)[None, :]]
    if interpolation != "bilinear" or image.dtype != np.uint8:
        raise InputError(f"resize: interpolation must be one of {INTERPOLATIONS} (bilinear for uint8 images), got "
                         f"{interpolation!r} for a {image.dtype} image")
    if (src_h, src_w) == (2 * dst_h, 2 * dst_w):
        blocks = image.reshape(dst_h, 2, dst_w, 2, *image.shape[2:]).astype(np.uint32).sum(axis=(1, 3))
        return ((blocks + 2) >> 2).astype(np.uint8)
    y0, y1, wy = _linear_taps(src_h, dst_h)
    x0, x1, wx = _linear_taps(src_w, dst_w)
    extra = (None,) * (image.ndim - 2)
    wy, wx = wy[(slice(None), None, *extra)], wx[(None, slice(None), *extra)]
    pixels = image.astype(np.float64)
    top = pixels[y0[:, None], x0[None, :]] * (1 - wx) + pixels[y0[:, None], x1[None, :]] * wx
    bottom = pixels[y1[:, None], x0[None, :]] * (1 - wx) + pixels[y1[:, None], x1[None, :]] * wx
    return np.floor(top * (1 - wy) + bottom * wy + 0.5).astype(np.uint8)


def resize_frame(frame: Frame, size: tuple[int, int] | None, interpolation: str) -> Frame:
    """The frame at size (H, W) (None = unchanged): rgb by `interpolation`, depth nearest, K by OpenScene's rule.

    The rule scales fx by the aspect-preserving width floor(H_new * W_old / H_old); a size whose width is more than
    a pixel from it would leave K wrong, so it is refused."""
    if size is None or frame.size == tuple(size):
        return frame
    (old_h, old_w), (new_h, new_w) = frame.size, size
    kept_width = math.floor(new_h * old_w / old_h)
    if abs(kept_width - new_w) > 1:
        raise InputError(f"{frame.scene_id} frame {frame.frame_id}: resizing {old_w}x{old_h} to {new_w}x{new_h} "
                         f"changes the aspect ratio (OpenScene's K rescale, SPEC §2.3, needs a width within 1 px of "
                         f"{kept_width}); set image_size to [{new_h}, {kept_width}] or 'stored'")
    depth = None if frame.depth is None else resize_image(frame.depth, size, "nearest")
    return replace(frame, rgb=resize_image(frame.rgb, size, interpolation), depth=depth,
                   intrinsic=adjust_intrinsic(frame.intrinsic, frame.size, size))
