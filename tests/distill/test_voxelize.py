"""Voxelization and augmentations against brute-force loops, scipy (as OpenScene calls it) and closed forms."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator
from scipy.linalg import expm

from sas_ray.distill.voxelize import (augment_points, axis_rotation, elastic_distortion, random_flip, random_rotation,
                                      random_transform, smoothed_noise, voxelize)


def test_axis_rotation_is_expm_of_the_cross_product_matrix():
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1
        np.testing.assert_allclose(axis_rotation(axis, 0.3).numpy(), expm(np.cross(np.eye(3), e * 0.3)), atol=1e-12)


def test_voxelize_keeps_the_first_point_of_each_voxel_and_maps_every_point_back():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 0.3, (500, 3)).astype(np.float32)
    vox = voxelize(torch.from_numpy(points), 0.05)
    # Brute force: dict from integer cell to the first point index.
    cells = np.floor(points.astype(np.float64) / 0.05)
    cells = (cells - cells.min(0)).astype(np.int64)
    first = {}
    for i, c in enumerate(map(tuple, cells)):
        first.setdefault(c, i)
    assert sorted(vox.point_index.tolist()) == sorted(first.values())
    for v, p in enumerate(vox.point_index.tolist()):
        assert tuple(vox.coords[v].tolist()) == tuple(cells[p])
    np.testing.assert_array_equal(vox.coords[vox.inverse].numpy(), cells)
    assert len(np.unique(vox.coords.numpy(), axis=0)) == len(vox.coords)


def test_augmented_voxelize_rotates_and_scales_within_bounds():
    points = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    for seed in range(20):
        r = random_rotation(torch.Generator().manual_seed(seed)).numpy()
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert abs(np.arccos(np.clip(r[2, 2], -1, 1))) <= 2 * np.pi / 64 + 1e-9  # z tilts by at most x+y bounds
        vox = voxelize(points, 0.02, random_transform(0.02, torch.Generator().manual_seed(100 + seed)))
        assert 0.9 / 0.02 - 2 <= np.linalg.norm((vox.coords[0] - vox.coords[1]).numpy()) <= 1.1 / 0.02 + 2


def test_elastic_distortion_is_openscenes_scipy_computation():
    """The same noise draw, blurred with scipy.ndimage.convolve and interpolated with RegularGridInterpolator as in
    OpenScene's ElasticDistortion, moves every point as the torch version does."""
    points = torch.from_numpy(np.random.default_rng(2).uniform(0, [2.0, 1.5, 1.0], (3000, 3))).float()
    granularity, magnitude = 0.2, 0.4
    moved = elastic_distortion(points, granularity, magnitude, torch.Generator().manual_seed(7))

    p = points.double().numpy()
    lo = p.min(0)
    dims = ((p - lo).max(0) // granularity).astype(int) + 3
    noise = torch.randn((3, 1, *dims), generator=torch.Generator().manual_seed(7))[:, 0].permute(1, 2, 3, 0).numpy()
    for _ in range(2):
        for axis in range(3):
            shape = [1, 1, 1, 1]
            shape[axis] = 3
            noise = ndimage.convolve(noise, np.full(shape, 1 / 3, np.float32), mode="constant", cval=0)
    np.testing.assert_allclose(smoothed_noise(tuple(dims), torch.Generator().manual_seed(7), torch.device("cpu"))
                               .permute(1, 2, 3, 0).numpy(), noise, atol=1e-6)
    axes = [np.linspace(a - granularity, a + granularity * (d - 2), d) for a, d in zip(lo, dims)]
    expected = p + RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0)(p) * magnitude
    np.testing.assert_allclose(moved.numpy(), expected, atol=1e-5)
    assert np.abs(expected - p).max() > 1e-3  # it moves them


def test_elastic_distortion_is_applied_and_smooth():
    points = torch.from_numpy(np.random.default_rng(2).uniform(0, 2, (2000, 3))).float()
    moved = augment_points(points, torch.Generator().manual_seed(0))
    assert (moved - points).norm(dim=1).max() > 1e-3  # SAS applies it (OpenScene computed and dropped it)
    # Smooth field: two points 1 mm apart move almost alike.
    pair = torch.tensor([[1.0, 1.0, 1.0], [1.001, 1.0, 1.0]])
    moved_pair = augment_points(torch.cat([points, pair]), torch.Generator().manual_seed(0))[-2:]
    assert ((moved_pair[0] - pair[0]) - (moved_pair[1] - pair[1])).norm() < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_random_flip_mirrors_horizontal_axes_only(seed):
    coords = torch.from_numpy(np.random.default_rng(seed).integers(0, 50, (100, 3)))
    flipped = random_flip(coords, torch.Generator().manual_seed(seed))
    assert torch.equal(flipped[:, 2], coords[:, 2])
    for axis in (0, 1):
        col = flipped[:, axis]
        assert torch.equal(col, coords[:, axis]) or torch.equal(col, coords[:, axis].max() - coords[:, axis])
