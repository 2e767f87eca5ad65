"""Voxelization and augmentation of a scene for the 3D network (SPEC §3, OpenScene's `Voxelizer` and transforms).

- `voxelize`: (optionally) rotate — z in [-pi, pi], x and y in [-pi/64, pi/64], the three axis rotations multiplied
  in a random order — and scale by 1/voxel_size x U(0.9, 1.1); floor; shift to min 0; keep one voxel per FNV-1a hash
  of the integer coordinates, represented by the FIRST point that falls in it (targets are that point's feature,
  not a voxel mean), voxels in ascending hash order as `np.unique` returns them; `inverse` maps every point back.
  OpenScene builds this Voxelizer with augmentation on for every split, so test-time repeats are random too.
- `elastic_distortion`: two passes ((granularity 0.2, magnitude 0.4), (0.8, 1.6)) of smoothed Gaussian noise
  interpolated trilinearly, with probability 0.95, on metric coordinates before voxelization. OpenScene's
  fused-feature loader computes the distorted points and then voxelizes the undistorted ones (a bug: no elastic
  augmentation at all); SAS voxelizes the distorted points. This module follows SAS: `augment_points` returns the
  distorted points and they are what `voxelize` receives.
- `random_flip`: on voxel coordinates after voxelization, with probability 0.95 each horizontal axis (x, y)
  independently with probability 0.5: c -> max(c) - c.
- The per-batch random integer translation U{0..99} per axis is applied at collation (`sas_ray.distill.batch`).
Colour augmentations are omitted: the network input is the constant (1, 1, 1) (`input_color: False`).
All randomness comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

ROTATION_BOUND = ((-np.pi / 64, np.pi / 64), (-np.pi / 64, np.pi / 64), (-np.pi, np.pi))
SCALE_BOUND = (0.9, 1.1)
ELASTIC_PARAMS = ((0.2, 0.4), (0.8, 1.6))
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@dataclass(frozen=True)
class Voxels:
    """coords int64 [V,3] (min 0); point_index int64 [V] (each voxel's first point); inverse int64 [N] (point -> voxel)."""

    coords: np.ndarray
    point_index: np.ndarray
    inverse: np.ndarray


def axis_rotation(axis: int, theta: float) -> np.ndarray:
    """3x3 right-handed rotation by theta about coordinate axis 0/1/2 (= expm of the axis' cross-product matrix)."""
    c, s = np.cos(theta), np.sin(theta)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    if axis == 1:  # y: z -> x is the positive sense
        r[i, j], r[j, i] = s, -s
    return r


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    mats = [axis_rotation(axis, rng.uniform(*bound)) for axis, bound in enumerate(ROTATION_BOUND)]
    order = rng.permutation(3)
    return mats[order[0]] @ mats[order[1]] @ mats[order[2]]


def fnv_hash(coords: np.ndarray) -> np.ndarray:
    """uint64 [N]: FNV-1a over the integer columns, as OpenScene's `fnv_hash_vec`."""
    arr = coords.astype(np.int64).astype(np.uint64)
    key = np.full(arr.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for j in range(arr.shape[1]):
        key = np.bitwise_xor(key * _FNV_PRIME, arr[:, j])
    return key


def voxelize(points: np.ndarray, voxel_size: float, rng: np.random.Generator | None = None) -> Voxels:
    """Voxelize points f [N,3] (metres); `rng` given = random rotation and scale (OpenScene's augmentation)."""
    transform = np.eye(3) / voxel_size
    if rng is not None:
        transform = random_rotation(rng) @ (transform * rng.uniform(*SCALE_BOUND))
    coords = np.floor(points.astype(np.float64) @ transform.T)
    coords = np.floor(coords - coords.min(0)).astype(np.int64)
    with np.errstate(over="ignore"):
        _, point_index, inverse = np.unique(fnv_hash(coords), return_index=True, return_inverse=True)
    return Voxels(coords[point_index], point_index.astype(np.int64), inverse.reshape(-1).astype(np.int64))


def elastic_distortion(points: np.ndarray, granularity: float, magnitude: float,
                       rng: np.random.Generator) -> np.ndarray:
    """One pass of OpenScene's `ElasticDistortion.elastic_distortion` on metric points [N,3]."""
    lo = points.min(0)
    noise_dim = ((points - lo).max(0) // granularity).astype(int) + 3
    noise = rng.standard_normal((*noise_dim, 3)).astype(np.float32)
    for _ in range(2):
        for axis in range(3):
            shape = [1, 1, 1, 1]
            shape[axis] = 3
            noise = ndimage.convolve(noise, np.full(shape, 1 / 3, np.float32), mode="constant", cval=0)
    grid = [np.linspace(a - granularity, a + granularity * (d - 2), d) for a, d in zip(lo, noise_dim)]
    interp = RegularGridInterpolator(grid, noise, bounds_error=False, fill_value=0)
    return points + interp(points) * magnitude


def augment_points(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The pre-voxelization transform: elastic distortion with probability 0.95 (applied, as SAS)."""
    if rng.random() < 0.95:
        for granularity, magnitude in ELASTIC_PARAMS:
            points = elastic_distortion(points, granularity, magnitude, rng)
    return points


def random_flip(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OpenScene's `RandomHorizontalFlip` on integer voxel coordinates [V,3] (z up)."""
    coords = coords.copy()
    if rng.random() < 0.95:
        for axis in (0, 1):
            if rng.random() < 0.5:
                coords[:, axis] = coords[:, axis].max() - coords[:, axis]
    return coords
