"""adjust_intrinsic against hand-worked rescales (SPEC §1.3, §2.3)."""

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.geometry.intrinsics import adjust_intrinsic


def _k(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def test_scannet_depth_intrinsics_to_320x240():
    k = _k(577.870605, 577.870605, 319.5, 239.5)
    got = adjust_intrinsic(k, (480, 640), (240, 320))
    np.testing.assert_allclose(got, _k(288.9353025, 288.9353025, 159.5, 119.5), rtol=0, atol=1e-12)
    assert k[0, 0] == 577.870605                                   # input untouched


def test_aspect_change_uses_floored_width_for_fx():
    # ScanNet colour K at 1296x968 -> 640x480: new_w = floor(480·1296/968) = floor(642.64) = 642
    # fx = 1170.187988·642/1296, fy = ·480/968, cx = 647.75·639/1295, cy = 483.75·479/967 (exact fractions)
    got = adjust_intrinsic(_k(1170.187988, 1170.187988, 647.75, 483.75), (968, 1296), (480, 640))
    want = _k(579.6764570185185, 580.258506446281, 319.6233590733591, 239.62383660806617)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_torch_in_torch_out_and_4x4_accepted():
    k4 = torch.eye(4, dtype=torch.float64)
    k4[0, 0], k4[1, 1], k4[0, 2], k4[1, 2] = 1000.0, 1000.0, 639.5, 511.5
    got = adjust_intrinsic(k4, (1024, 1280), (512, 640))             # Matterport 1280x1024 -> 640x512
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.shape == (4, 4)
    assert got[0, 0].item() == 500.0 and got[1, 1].item() == 500.0
    assert got[0, 2].item() == pytest.approx(639.5 * 639 / 1279, abs=1e-12)
    assert got[1, 2].item() == pytest.approx(511.5 * 511 / 1023, abs=1e-12)   # = 255.5
    assert k4[0, 0].item() == 1000.0


def test_same_size_is_identity():
    k = _k(600.0, 600.0, 599.5, 339.5)
    np.testing.assert_array_equal(adjust_intrinsic(k, (680, 1200), (680, 1200)), k)


def test_bad_sizes_raise():
    with pytest.raises(InputError):
        adjust_intrinsic(_k(1, 1, 0, 0), (1, 640), (240, 320))
    with pytest.raises(InputError):
        adjust_intrinsic(np.eye(2), (480, 640), (240, 320))
