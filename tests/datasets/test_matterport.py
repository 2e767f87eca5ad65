"""Matterport OpenScene layout: the camera selection rule on hand-placed cameras, file naming, write/read round trip."""

import uuid

import fsspec
import numpy as np
import pytest

from sas_ray.datasets import matterport
from sas_ray.datasets.frames import read_frame
from sas_ray.errors import InputError
from sas_ray.scene import Frame, Scene

K = np.array([[25.0, 0, 7.5], [0, 24.0, 5.5], [0, 0, 1]])
BOX = np.array([[0, 0, 0], [4, 3, 2.5], [1, 2, 1]], np.float32)  # bbox [0,4] x [0,3] x [0,2.5], centre (2,1.5,1.25)


def test_cameras_strictly_inside_the_bbox():
    centres = np.array([[1, 1, 1], [0, 1, 1], [4, 1, 1], [3.9, 2.9, 2.4], [5, 1, 1], [2, 1.5, -0.1]])
    for split in ("train", "val", "test"):
        assert matterport.select_views(centres, BOX, split).tolist() == [0, 3]  # on the faces (x=0, x=4): out


def test_region_without_cameras_inside():
    rng = np.random.default_rng(0)
    order = rng.permutation(150)
    centres = np.array([2, 1.5, 1.25]) + np.stack([5 + 0.1 * order, np.zeros(150), np.zeros(150)], 1)
    assert matterport.select_views(centres, BOX, "train").tolist() == []
    assert matterport.select_views(centres, BOX, "val").tolist() == []
    picked = matterport.select_views(centres, BOX, "test")
    assert len(picked) == 100 and sorted(order[picked]) == list(range(100))
    assert order[picked].tolist() == list(range(100))  # nearest first
    few = matterport.select_views(centres[:3], BOX, "test")
    assert order[:3][few].tolist() == sorted(order[:3])


def test_depth_name_follows_openscene():
    assert matterport.depth_name("a1b2c3_i1_2") == "a1b2c3_d1_2.png"
    with pytest.raises(InputError, match="not named"):
        matterport.depth_name("a1b2c3_i12_2")
    assert matterport.split_scene_id("2t7WUuJeko7_region10") == ("2t7WUuJeko7", "region10")
    with pytest.raises(InputError, match="<building>_<region>"):
        matterport.split_scene_id("noregion")


def _region(scene_id: str, offset: float) -> Scene:
    points = BOX + np.float32(offset)
    return Scene(scene_id, points, np.array([[0, 0, 0], [255, 128, 1], [10, 20, 30]], np.uint8),
                 np.array([0, 20, 255]), np.array([[0, 1, 2]]))


def _frame(name: str, centre, seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    pose = np.eye(4)
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking down
    pose[:3, 3] = centre
    depth = rng.integers(1, 40000, (12, 16)).astype(np.float32) / np.float32(4000)  # on the 1/4000 m grid
    y, x = np.mgrid[0:12, 0:16]
    rgb = np.stack([x * 16, y * 20, np.full_like(x, 90)], -1).astype(np.uint8)
    intrinsic = K.copy()
    intrinsic[:2] *= 1 + 0.01 * seed  # a different K per image
    return Frame("bldgA", name, rgb, intrinsic, pose, depth)


def test_write_then_read_with_view_selection():
    root = f"memory://matterport-{uuid.uuid4().hex}"
    frames = [_frame("p0_i0_0", [1, 1, 1], 1), _frame("p0_i1_3", [3, 2, 2], 2), _frame("p1_i2_5", [9, 9, 9], 3)]
    near, far = _region("bldgA_region0", 0.0), _region("bldgA_region1", 20.0)
    for split in ("val", "test"):
        matterport.write_matterport(root, split, near, frames)
        matterport.write_matterport(root, split, far, frames)
    assert matterport.list_scenes(root, "val") == ["bldgA_region0", "bldgA_region1"]
    back = matterport.read_scene(root, "val", "bldgA_region0")
    for name in ("points", "colors", "labels", "faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(near, name), err_msg=name)

    rows = matterport.frame_rows(root, "val", "bldgA_region0")
    assert [r["frame"] for r in rows] == ["p0_i0_0", "p0_i1_3"]
    assert rows[1]["depth_uri"] == f"{root}/matterport_2d/bldgA/depth/p0_d1_3.png"
    for row, frame in zip(rows, frames):
        assert row["scene"] == "bldgA_region0" and row["depth_scale"] == 4000.0
        got = read_frame(row)
        np.testing.assert_array_equal(got.intrinsic, frame.intrinsic)  # per image
        np.testing.assert_array_equal(got.pose, frame.pose)
        np.testing.assert_array_equal(got.depth, frame.depth)
        assert np.abs(got.rgb.astype(int) - frame.rgb).max() <= 10
    assert matterport.frame_rows(root, "val", "bldgA_region1") == []  # no camera inside: skipped on val
    nearest = [r["frame"] for r in matterport.frame_rows(root, "test", "bldgA_region1")]
    assert nearest == ["p1_i2_5", "p0_i1_3", "p0_i0_0"]  # test: nearest to the bbox centre (22, 21.5, 21.25) first


def test_badly_named_image_is_input_error():
    root = f"memory://matterport-{uuid.uuid4().hex}"
    matterport.write_matterport(root, "val", _region("bldgB_region0", 0.0), [_frame("p0_i0_0", [1, 1, 1], 1)])
    with fsspec.open(f"{root}/matterport_2d/bldgB/color/holiday.jpg", "wb") as f:
        f.write(b"x")
    with pytest.raises(InputError, match=r"building bldgB: .*color/holiday.jpg is not named"):
        matterport.frame_rows(root, "val", "bldgB_region0")
