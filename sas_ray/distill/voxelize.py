"""Voxelization and augmentation of a scene for the 3D network (SPEC §3, OpenScene's `Voxelizer` and transforms), in
torch on the points' device: on a GPU the whole per-batch augmentation costs milliseconds and the loader's CPU only
reads files.

- `voxelize`: (optionally) rotate — z in [-pi, pi], x and y in [-pi/64, pi/64], the three axis rotations multiplied
  in a random order — and scale by 1/voxel_size x U(0.9, 1.1); floor; shift to min 0; keep one voxel per integer
  cell, represented by the FIRST point that falls in it (targets are that point's feature, not a voxel mean);
  `inverse` maps every point back. Voxels come in ascending (x, y, z) order (OpenScene: ascending FNV-1a hash; the
  order changes no result of a sparse network). OpenScene builds this Voxelizer with augmentation on for every
  split, so test-time repeats are random too.
- `elastic_distortion`: two passes ((granularity 0.2, magnitude 0.4), (0.8, 1.6)) of smoothed Gaussian noise
  interpolated trilinearly, with probability 0.95, on metric coordinates before voxelization. OpenScene's
  fused-feature loader computes the distorted points and then voxelizes the undistorted ones (a bug: no elastic
  augmentation at all); SAS voxelizes the distorted points. This module follows SAS: `augment_points` returns the
  distorted points and they are what `voxelize` receives.
- `random_flip`: on voxel coordinates after voxelization, with probability 0.95 each horizontal axis (x, y)
  independently with probability 0.5: c -> max(c) - c.
- The per-batch random integer translation U{0..99} per axis is applied at collation (`sas_ray.distill.batch`).
Colour augmentations are omitted: the network input is the constant (1, 1, 1) (`input_color: False`).
Every random number comes from the CPU `torch.Generator` passed in (noise grids too, then moved to the points'
device), so a step draws the same augmentation on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROTATION_BOUND = ((-math.pi / 64, math.pi / 64), (-math.pi / 64, math.pi / 64), (-math.pi, math.pi))
SCALE_BOUND = (0.9, 1.1)
ELASTIC_PARAMS = ((0.2, 0.4), (0.8, 1.6))
ELASTIC_PROBABILITY = 0.95
FLIP_PROBABILITY = 0.95


@dataclass(frozen=True)
class Voxels:
    """coords int64 [V,3] (min 0); point_index int64 [V] (each voxel's first point); inverse int64 [N] (point ->
    voxel); all on the points' device."""

    coords: torch.Tensor
    point_index: torch.Tensor
    inverse: torch.Tensor


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def axis_rotation(axis: int, theta: float) -> torch.Tensor:
    """float64 [3,3] right-handed rotation by theta about coordinate axis 0/1/2 (= expm of the axis'
    cross-product matrix)."""
    c, s = math.cos(theta), math.sin(theta)
    i, j = [a for a in range(3) if a != axis]
    r = torch.eye(3, dtype=torch.float64)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    if axis == 1:  # y: z -> x is the positive sense
        r[i, j], r[j, i] = s, -s
    return r


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    mats = [axis_rotation(axis, uniform(generator, *bound)) for axis, bound in enumerate(ROTATION_BOUND)]
    order = torch.randperm(3, generator=generator).tolist()
    return mats[order[0]] @ mats[order[1]] @ mats[order[2]]


def random_transform(voxel_size: float, generator: torch.Generator) -> torch.Tensor:
    """float64 [3,3]: metres -> voxel units, randomly rotated and scaled (OpenScene's Voxelizer augmentation)."""
    scale = uniform(generator, *SCALE_BOUND)
    return random_rotation(generator) @ (torch.eye(3, dtype=torch.float64) * (scale / voxel_size))


def voxelize(points: torch.Tensor, voxel_size: float, transform: torch.Tensor | None = None) -> Voxels:
    """Voxelize points f [N,3] (metres); `transform` float64 [3,3] (metres -> voxel units; default 1/voxel_size)
    replaces the plain scaling (`random_transform` = OpenScene's augmentation)."""
    if transform is None:
        transform = torch.eye(3, dtype=torch.float64) / voxel_size
    coords = torch.floor(points.to(torch.float64) @ transform.to(points.device).t())
    coords = (coords - coords.min(0).values).to(torch.int64)
    extent = coords.max(0).values + 1
    key = (coords[:, 0] * extent[1] + coords[:, 1]) * extent[2] + coords[:, 2]
    _, inverse = torch.unique(key, return_inverse=True)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    order = torch.arange(len(key), device=points.device)
    point_index = torch.full((count,), len(key), dtype=torch.int64, device=points.device)
    point_index.scatter_reduce_(0, inverse, order, reduce="amin")
    return Voxels(coords[point_index], point_index, inverse)


def smoothed_noise(shape: tuple[int, int, int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """float32 [3, X, Y, Z]: standard normal noise, box-blurred (3 taps, zero padding) twice along each axis, as
    OpenScene's `ElasticDistortion` (scipy.ndimage.convolve, mode 'constant')."""
    noise = torch.randn((3, *shape), generator=generator).to(device)
    for _ in range(2):
        for axis in (1, 2, 3):
            padded = F.pad(noise, [0, 0] * (3 - axis) + [1, 1])
            n = noise.shape[axis]
            noise = (padded.narrow(axis, 0, n) + padded.narrow(axis, 1, n) + padded.narrow(axis, 2, n)) / 3
    return noise


def elastic_distortion(points: torch.Tensor, granularity: float, magnitude: float,
                       generator: torch.Generator) -> torch.Tensor:
    """One pass of OpenScene's `ElasticDistortion.elastic_distortion` on metric points f [N,3]: a noise grid of
    spacing `granularity` from min - granularity, interpolated trilinearly (0 outside), times `magnitude`."""
    lo = points.min(0).values
    dims = [int(d) + 3 for d in torch.div((points - lo).max(0).values, granularity, rounding_mode="floor").tolist()]
    noise = smoothed_noise(tuple(dims), generator, points.device)
    # grid_sample's normalised coordinates: -1 at the first grid node (lo - granularity), +1 at the last
    span = torch.tensor([granularity * (d - 1) for d in dims], device=points.device, dtype=points.dtype)
    where = 2 * (points - (lo - granularity)) / span - 1
    grid = where.flip(1).to(noise.dtype).reshape(1, 1, 1, -1, 3)  # grid_sample wants (z, y, x) = (W, H, D) order
    moved = F.grid_sample(noise[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return points + moved.reshape(3, -1).t().to(points.dtype) * magnitude


def augment_points(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The pre-voxelization transform: elastic distortion with probability 0.95 (applied, as SAS)."""
    if float(torch.rand((), generator=generator)) < ELASTIC_PROBABILITY:
        for granularity, magnitude in ELASTIC_PARAMS:
            points = elastic_distortion(points, granularity, magnitude, generator)
    return points


def random_flip(coords: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """OpenScene's `RandomHorizontalFlip` on integer voxel coordinates [V,3] (z up)."""
    coords = coords.clone()
    if float(torch.rand((), generator=generator)) < FLIP_PROBABILITY:
        for axis in (0, 1):
            if float(torch.rand((), generator=generator)) < 0.5:
                coords[:, axis] = coords[:, axis].max() - coords[:, axis]
    return coords
