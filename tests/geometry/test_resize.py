"""Frame resize at decode: cv2.resize's results (what OpenScene's preprocessing ran), K by SPEC §2.3."""

import numpy as np
import pytest

from sas_ray.errors import InputError
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.geometry.resize import resize_frame, resize_image
from sas_ray.scene import Frame

cv2 = pytest.importorskip("cv2")  # opencv-python-headless, in the dev extra


def test_hand_worked_2x_reduction():
    image = np.array([[0, 1, 10, 20], [2, 2, 30, 41]], np.uint8)[..., None].repeat(3, -1)
    # 2x2 means 1.25 -> 1, 25.25 -> 25; nearest takes the top-left pixel of each block.
    np.testing.assert_array_equal(resize_image(image, (1, 2), "bilinear")[..., 0], [[1, 25]])
    np.testing.assert_array_equal(resize_image(image, (1, 2), "nearest")[..., 0], [[0, 10]])
    halves = np.array([[1, 1, 1, 1], [1, 2, 2, 2]], np.uint8)[..., None].repeat(3, -1)  # 1.25 down, 1.5 up
    np.testing.assert_array_equal(resize_image(halves, (1, 2), "bilinear")[0, :, 0], [1, 2])


@pytest.mark.parametrize(("source", "target"), [((900, 1600), (450, 800)), ((480, 640), (240, 320)),
                                                ((1024, 1280), (512, 640)), ((968, 1296), (240, 320)),
                                                ((100, 150), (77, 113)), ((36, 64), (90, 160))])
def test_equals_cv2(source, target):
    rng = np.random.default_rng(sum(source))
    rgb = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    depth = rng.uniform(0, 8, source).astype(np.float32)
    dsize = (target[1], target[0])
    bilinear = resize_image(rgb, target, "bilinear").astype(int) - cv2.resize(rgb, dsize)
    exact = source == (2 * target[0], 2 * target[1])
    assert np.abs(bilinear).max() <= (0 if exact else 1)  # other ratios: cv2's 11-bit fixed-point weights
    assert np.abs(bilinear).mean() < 0.2
    np.testing.assert_array_equal(resize_image(rgb, target, "nearest"),
                                  cv2.resize(rgb, dsize, interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(resize_image(depth, target, "nearest"),
                                  cv2.resize(depth, dsize, interpolation=cv2.INTER_NEAREST))


def test_resize_frame_scales_k_and_resizes_depth_nearest():
    k = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    rng = np.random.default_rng(0)
    frame = Frame("s", "f", rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8), k, np.eye(4),
                  rng.uniform(0, 9, (900, 1600)).astype(np.float32))
    small = resize_frame(frame, (450, 800), "bilinear")
    assert small.rgb.shape == (450, 800, 3) and small.depth.shape == (450, 800)
    np.testing.assert_array_equal(small.intrinsic, adjust_intrinsic(k, (900, 1600), (450, 800)))
    np.testing.assert_allclose(small.intrinsic[:2, 2], [816.3 * 799 / 1599, 491.5 * 449 / 899])
    np.testing.assert_array_equal(small.depth, frame.depth[::2, ::2])  # nearest: no depth is ever blended
    assert resize_frame(frame, None, "bilinear") is frame and resize_frame(frame, (900, 1600), "nearest") is frame
    with pytest.raises(InputError, match=r"s frame f: resizing 1600x900 to 640x480 changes the aspect ratio.*"
                                         r"\[480, 853\]"):
        resize_frame(frame, (480, 640), "bilinear")
