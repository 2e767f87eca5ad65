"""ScanNet OpenScene layout: write then read back, frame selection, and bad files as InputErrors."""

import io
import os
import uuid

import fsspec
import numpy as np
import pytest
import torch

from sas_ray.datasets import scannet
from sas_ray.datasets.frames import read_frame
from sas_ray.datasets.ply import encode_ply
from sas_ray.errors import InputError
from sas_ray.scene import Frame, Scene

K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])


def grid_scene(scene_id: str, seed: int = 0) -> Scene:
    """A 4x5 vertex grid on the plane z = 2 with two triangles per cell."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:4, 0:5]
    points = np.stack([xs * 0.5, ys * 0.5, np.full(xs.shape, 2.0)], -1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(20).reshape(4, 5)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)]).astype(np.int64)
    labels = rng.integers(0, 20, 20)
    labels[::7] = 255
    return Scene(scene_id, points, rng.integers(0, 256, (20, 3)).astype(np.uint8), labels.astype(np.int64), faces)


def make_frame(scene_id: str, frame_id: str, seed: int, intrinsic=K) -> Frame:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:12, 0:16]
    rgb = np.stack([x * 15, y * 20, np.full_like(x, 40 * seed % 256)], -1).astype(np.uint8)
    depth = rng.integers(0, 9000, (12, 16)).astype(np.float32) / np.float32(1000)  # on the millimetre grid
    angle = 0.3 * seed
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    pose[:3, 3] = [0.1 * seed, -0.2, 1.0 / 3.0]
    return Frame(scene_id, frame_id, rgb, intrinsic.copy(), pose, depth)


@pytest.fixture
def root():
    return f"memory://scannet-{uuid.uuid4().hex}"


def test_write_then_read_round_trip(root):
    scene = grid_scene("scene0001_00")
    frames = [make_frame("scene0001_00", f, s) for s, f in enumerate(["0", "20", "40"], start=1)]
    scannet.write_scannet(root, "val", scene, frames)
    assert scannet.list_scenes(root, "val") == ["scene0001_00"]

    back = scannet.read_scene(root, "val", "scene0001_00")
    for name in ("points", "colors", "labels", "faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(scene, name), err_msg=name)

    rows = scannet.frame_rows(root, "val", "scene0001_00")
    assert [r["frame"] for r in rows] == ["0", "20", "40"]
    assert rows[0]["color_uri"] == f"{root}/scannet_2d/scene0001_00/color/0.jpg"
    assert rows[0]["depth_uri"] == f"{root}/scannet_2d/scene0001_00/depth/0.png"
    for row, frame in zip(rows, frames):
        assert (row["width"], row["height"], row["depth_scale"]) == (16, 12, 1000.0)
        got = read_frame(row)
        np.testing.assert_array_equal(got.pose, frame.pose)
        np.testing.assert_array_equal(got.intrinsic, K)
        np.testing.assert_array_equal(got.depth, frame.depth)  # exact: the input is on the mm grid
        assert np.abs(got.rgb.astype(int) - frame.rgb).max() <= 10  # JPEG


def test_layout_matches_openscene_files(root):
    """The files as OpenScene's fusion reads them: np.loadtxt poses/K, uint16 mm PNG, torch.load'ed tuple."""
    scene = grid_scene("scene0002_00")
    frame = make_frame("scene0002_00", "0", 1)
    scannet.write_scannet(root, "train", scene, [frame])
    fs = fsspec.filesystem("memory")
    base = root[len("memory://"):]
    k4 = np.loadtxt(io.BytesIO(fs.cat_file(f"{base}/scannet_2d/intrinsics.txt")))
    np.testing.assert_array_equal(k4[:3, :3], K)
    np.testing.assert_array_equal(k4[3], [0, 0, 0, 1])
    np.testing.assert_array_equal(np.loadtxt(io.BytesIO(fs.cat_file(f"{base}/scannet_2d/scene0002_00/pose/0.txt"))),
                                  frame.pose)
    pth = io.BytesIO(fs.cat_file(f"{base}/scannet_3d/train/scene0002_00_vh_clean_2.pth"))
    coords, colors, labels = torch.load(pth, weights_only=False)  # our own file, read the way OpenScene reads it
    np.testing.assert_array_equal(coords, scene.points.astype(np.float64))
    np.testing.assert_allclose(colors, scene.colors / 127.5 - 1)
    np.testing.assert_array_equal(labels, scene.labels)
    assert fs.exists(f"{base}/scans/scene0002_00/scene0002_00_vh_clean_2.ply")


def test_local_path_and_file_url(tmp_path):
    scannet.write_scannet(str(tmp_path), "val", grid_scene("scene0003_00"), [make_frame("scene0003_00", "0", 2)])
    assert (tmp_path / "scannet_2d" / "scene0003_00" / "depth" / "0.png").exists()
    for root in (str(tmp_path), f"file://{tmp_path}"):
        assert scannet.list_scenes(root, "val") == ["scene0003_00"]
        row = scannet.frame_rows(root, "val", "scene0003_00")[0]
        assert read_frame(row).depth.shape == (12, 16)


def test_frame_skip_uses_frame_numbers_and_lost_tracking_is_kept_for_extract_to_count(root):
    frames = [make_frame("scene0004_00", str(f), f % 7 + 1) for f in (0, 20, 40, 60, 80)]
    scannet.write_scannet(root, "val", grid_scene("scene0004_00"), frames)
    with fsspec.open(f"{root}/scannet_2d/scene0004_00/pose/60.txt", "wb") as f:
        f.write(b"-inf -inf -inf -inf\n" * 4)  # ScanNet's invalid pose
    def kept(frame_skip: int) -> list[str]:
        return [r["frame"] for r in scannet.frame_rows(root, "val", "scene0004_00", frame_skip=frame_skip)]

    assert kept(1) == kept(20) == ["0", "20", "40", "60", "80"]  # OpenScene's export already holds every 20th frame
    assert kept(40) == ["0", "40", "80"]
    lost = scannet.frame_rows(root, "val", "scene0004_00")[3]
    assert lost["frame"] == "60" and not np.isfinite(lost["pose"]).any()


def test_intrinsic_is_global(root):
    scannet.write_scannet(root, "val", grid_scene("scene0005_00"), [make_frame("scene0005_00", "0", 1)])
    other = K.copy()
    other[0, 0] = 21.0
    with pytest.raises(InputError, match="scene0006_00: intrinsic .* differs from .*intrinsics.txt"):
        scannet.write_scannet(root, "val", grid_scene("scene0006_00"), [make_frame("scene0006_00", "0", 1, other)])
    with pytest.raises(InputError, match="frame 20: intrinsic differs from frame 0"):
        scannet.write_scannet(root, "val", grid_scene("scene0006_00"),
                              [make_frame("scene0006_00", "0", 1), make_frame("scene0006_00", "20", 1, other)])


def test_bad_scene_files_are_input_errors(root, tmp_path):
    scannet.write_scannet(root, "val", grid_scene("scene0007_00"), [make_frame("scene0007_00", "0", 1)])
    with fsspec.open(f"{root}/scans/scene0007_00/scene0007_00_vh_clean_2.ply", "wb") as f:
        f.write(encode_ply(grid_scene("x").points[:19]))  # a mesh with other vertices than the .pth
    with pytest.raises(InputError, match=r"scene scene0007_00: .*_vh_clean_2.ply has 19 vertices"):
        scannet.read_scene(root, "val", "scene0007_00")

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "pwned"),))

    buf = io.BytesIO()
    torch.save((np.zeros((3, 3)), 0, Payload()), buf)
    with fsspec.open(f"{root}/scannet_3d/val/scene0008_00_vh_clean_2.pth", "wb") as f:
        f.write(buf.getvalue())
    with pytest.raises(InputError, match="scene0008_00_vh_clean_2.pth: refused .*os.makedirs"):
        scannet.read_scene(root, "val", "scene0008_00")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(InputError, match="scene scene0009_00: .*scene0009_00_vh_clean_2.pth not found"):
        scannet.read_scene(root, "val", "scene0009_00")
    with pytest.raises(InputError, match="not a safe name"):
        scannet.read_scene(root, "val", "../etc")
