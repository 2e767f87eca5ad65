"""Voxelization and augmentations against brute-force loops and closed forms (SPEC §3)."""

import numpy as np
import pytest
from scipy.linalg import expm

from sas_ray.distill.voxelize import (augment_points, axis_rotation, fnv_hash, random_flip, random_rotation,
                                      voxelize)


def test_axis_rotation_is_expm_of_the_cross_product_matrix():
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1
        np.testing.assert_allclose(axis_rotation(axis, 0.3), expm(np.cross(np.eye(3), e * 0.3)), atol=1e-12)


def test_voxelize_keeps_the_first_point_of_each_voxel_and_maps_every_point_back():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 0.3, (500, 3)).astype(np.float32)
    vox = voxelize(points, 0.05)
    # Brute force: dict from integer cell to the first point index.
    cells = np.floor(points.astype(np.float64) / 0.05)
    cells = (cells - cells.min(0)).astype(np.int64)
    first = {}
    for i, c in enumerate(map(tuple, cells)):
        first.setdefault(c, i)
    assert sorted(vox.point_index.tolist()) == sorted(first.values())
    for v, p in enumerate(vox.point_index):
        assert tuple(vox.coords[v]) == tuple(cells[p])
    np.testing.assert_array_equal(vox.coords[vox.inverse], cells)
    assert len(np.unique(fnv_hash(vox.coords))) == len(vox.coords)


def test_augmented_voxelize_rotates_and_scales_within_bounds():
    rng = np.random.default_rng(1)
    points = np.array([[1.0, 0, 0], [0, 0, 0]], dtype=np.float32)
    for _ in range(20):
        r = random_rotation(np.random.default_rng(rng.integers(1 << 30)))
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert abs(np.arccos(np.clip(r[2, 2], -1, 1))) <= 2 * np.pi / 64 + 1e-9  # z tilts by at most x+y bounds
        vox = voxelize(points, 0.02, np.random.default_rng(rng.integers(1 << 30)))
        assert 0.9 / 0.02 - 2 <= np.linalg.norm(vox.coords[0] - vox.coords[1]) <= 1.1 / 0.02 + 2


def test_elastic_distortion_is_applied_and_smooth():
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 2, (2000, 3))
    moved = augment_points(points, np.random.default_rng(3))  # 0.95 chance: seed 3 draws < 0.95
    shift = np.linalg.norm(moved - points, axis=1)
    assert shift.max() > 1e-3  # SAS applies it (OpenScene computed and dropped it)
    # Smooth field: two points 1 mm apart move almost alike.
    pair = np.array([[1.0, 1.0, 1.0], [1.001, 1.0, 1.0]])
    moved_pair = augment_points(np.vstack([points, pair]), np.random.default_rng(3))[-2:]
    assert np.linalg.norm((moved_pair[0] - pair[0]) - (moved_pair[1] - pair[1])) < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_random_flip_mirrors_horizontal_axes_only(seed):
    coords = np.random.default_rng(seed).integers(0, 50, (100, 3))
    flipped = random_flip(coords, np.random.default_rng(seed))
    np.testing.assert_array_equal(flipped[:, 2], coords[:, 2])
    for axis in (0, 1):
        col = flipped[:, axis]
        assert np.array_equal(col, coords[:, axis]) or np.array_equal(col, coords[:, axis].max() - coords[:, axis])
