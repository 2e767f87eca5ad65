"""Own RGB-D scans (`layout: scans`): a folder per scene read back as written, and the frames checked against the
geometry so world-to-camera poses and depth off by 1000 fail with a message saying so."""

import re
import uuid
from dataclasses import replace

import numpy as np
import pytest

from sas_ray.datasets import scans
from sas_ray.datasets.consistency import agreement
from sas_ray.datasets.frames import read_frame
from sas_ray.datasets.synthetic import make_indoor_frames, make_indoor_scene
from sas_ray.errors import InputError
from sas_ray.storage import Storage


@pytest.fixture(scope="module")
def room():
    scene, layout = make_indoor_scene("myroom", 7, 3000)
    frames, _ = make_indoor_frames(scene, layout, 6, (48, 64), seed=7)
    return scene, [replace(f, frame_id=str(10 * i)) for i, f in enumerate(frames)]  # frame numbers 0, 10, ...


@pytest.fixture
def root():
    return f"memory://scans-{uuid.uuid4().hex}"


def test_written_scan_reads_back(root, room):
    scene, frames = room
    scans.write_scans(root, scene, frames)
    points_only = replace(scene, scene_id="cloud", faces=None, labels=None)
    scans.write_scans(root, points_only, [replace(f, scene_id="cloud") for f in frames], depth_scale=5000.0)
    assert scans.list_scenes(root) == ["cloud", "myroom"]
    read = scans.read_scene(root, "", "myroom")
    np.testing.assert_array_equal(read.points, scene.points)
    np.testing.assert_array_equal(read.faces, scene.faces)  # a mesh: mesh-mode superpoints
    np.testing.assert_array_equal(read.labels, scene.labels)
    assert scans.read_scene(root, "", "cloud").faces is None  # a point cloud
    rows = scans.frame_rows(root, "", "myroom")
    assert [r["frame"] for r in rows] == ["0", "10", "20", "30", "40", "50"]
    assert [r["frame"] for r in scans.frame_rows(root, "", "myroom", frame_skip=20)] == ["0", "20", "40"]
    for row, frame in zip(rows, frames):
        got = read_frame(row)
        np.testing.assert_array_equal(got.intrinsic, frame.intrinsic)
        np.testing.assert_allclose(got.pose, frame.pose, atol=1e-12)
        np.testing.assert_allclose(got.depth, frame.depth, atol=5e-4)  # millimetres
    cloud = scans.frame_rows(root, "", "cloud")
    assert cloud[0]["depth_scale"] == 5000.0
    np.testing.assert_allclose(read_frame(cloud[0]).depth, frames[0].depth, atol=1e-4)


def test_agreement_separates_right_from_wrong(room):
    scene, frames = room
    points = scene.points.astype(np.float64)
    right = agreement(points, frames)
    assert right.score > 0.4 and right.behind < 0.8
    assert agreement(points, frames, invert_poses=True).score < 0.02
    assert agreement(points, frames, depth_factor=1000).score < 0.02
    assert agreement(points, frames, depth_factor=0.001).score < 0.02


def _write_broken(root: str, room, **change) -> None:
    scene, frames = room
    if change.get("invert"):
        frames = [replace(f, pose=np.linalg.inv(f.pose)) for f in frames]
    scans.write_scans(root, scene, frames)
    if "depth_scale" in change:
        Storage(root).write_bytes("myroom/depth_scale.txt", f"{change['depth_scale']}\n".encode())


def test_world_to_camera_poses_are_named(root, room):
    _write_broken(root, room, invert=True)
    with pytest.raises(InputError, match=r"scene myroom: the poses in memory://scans-\w+/myroom look world-to-camera"
                                         r": with these poses \d+% .* behind the cameras; inverted, \d\d% lie at "
                                         r"their depth.*invert each 4x4 matrix"):
        scans.frame_rows(root, "", "myroom")


@pytest.mark.parametrize(("written", "factor", "fix"), [(1, "0.001x", "use 1000"), (1000000, "1000x", "use 1000")])
def test_depth_off_by_1000_is_named(root, room, written, factor, fix):
    _write_broken(root, room, depth_scale=written)
    with pytest.raises(InputError, match=rf"scene myroom: the depth in .*myroom looks off by {factor}: .*Depth is "
                                         rf"read as {re.escape(f'{written:g}')} units per metre: {fix}"):
        scans.frame_rows(root, "", "myroom")


def test_frames_of_another_scene_are_refused(root, room):
    scene, frames = room
    shifted = [replace(f, pose=np.r_[np.c_[f.pose[:3, :3], f.pose[:3, 3] + [40.0, 0, 0]], [[0, 0, 0, 1]]])
               for f in frames]  # 40 m away: poses in another frame than the geometry's
    scans.write_scans(root, scene, shifted)
    with pytest.raises(InputError, match=r"scene myroom: the frames in .* do not see the scene's geometry"):
        scans.frame_rows(root, "", "myroom")
