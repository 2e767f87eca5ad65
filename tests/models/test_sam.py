"""SAS prompt selection (hand-worked distance-transform cases) and the promptable SAM refiner."""

import numpy as np
import pytest

from sas_ray.errors import InputError
from sas_ray.models.sam import SamRefiner, prepare_coarse_mask, prompt_points


def test_one_component_gives_three_successive_ridge_points():
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:50] = True  # 20 rows x 40 cols
    # distance to background peaks at 10 on rows 29-30, cols 19-40; raster-first is (29, 19); zeroing it makes
    # the next raster-first 10 the first pixel 10 away from it along row 29: (29, 29), then (29, 39)
    np.testing.assert_array_equal(prompt_points(mask), [[19, 29], [29, 29], [39, 29]])


def test_two_components_give_two_points_in_the_larger_and_one_in_the_smaller():
    mask = np.zeros((64, 64), bool)
    mask[5:10, 40:45] = True  # small 5x5 square first in raster order: centre (7, 42)
    mask[20:40, 10:50] = True
    np.testing.assert_array_equal(prompt_points(mask), [[19, 29], [29, 29], [42, 7]])


def test_many_components_give_the_centres_of_the_three_largest():
    mask = np.zeros((64, 64), bool)
    mask[2:5, 2:5] = True  # 3x3, smallest: ignored
    mask[10:17, 30:37] = True  # 7x7, centre (13, 33)
    mask[40:49, 5:14] = True  # 9x9, centre (44, 9)
    mask[40:45, 40:45] = True  # 5x5, centre (42, 42)
    np.testing.assert_array_equal(prompt_points(mask), [[9, 44], [33, 13], [42, 42]])
    with pytest.raises(InputError, match="empty"):
        prompt_points(np.zeros((8, 8), bool))


def test_equal_components_are_each_prompted_once():
    mask = np.zeros((32, 32), bool)
    for r, c in ((2, 2), (2, 20), (20, 2)):
        mask[r:r + 5, c:c + 5] = True
    np.testing.assert_array_equal(prompt_points(mask), [[4, 4], [22, 4], [4, 22]])


def test_coarse_mask_border_and_centre_seeds():
    coarse = np.ones((512, 512), bool)
    prepared = prepare_coarse_mask(coarse)
    assert prepared.sum() == (512 - 140) ** 2 and not prepared[:70].any() and not prepared[:, -70:].any()
    edge_only = np.zeros((512, 512), bool)
    edge_only[:60] = True  # all inside the 70 px border -> empty -> four 2x2 seeds at 240/270 (SAS constants)
    seeded = prepare_coarse_mask(edge_only)
    assert seeded.sum() == 16
    assert {tuple(p) for p in np.argwhere(seeded)} == {(r + i, c + j) for r in (240, 270) for c in (240, 270)
                                                      for i in (0, 1) for j in (0, 1)}


def test_tiny_refiner_returns_a_mask_of_the_image_size():
    refiner = SamRefiner(tiny=True, border=8)
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    coarse = np.zeros((64, 48), bool)
    coarse[20:40, 10:40] = True
    mask = refiner.refine(image, coarse)
    assert mask.shape == (64, 48) and mask.dtype == bool
    with pytest.raises(InputError, match="uint8"):
        refiner.refine(image.astype(np.float32), coarse)
