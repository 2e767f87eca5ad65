"""nuScenes devkit layout -> scenes: converted geometry against closed-form projections of the synthetic input."""

import json
import uuid

import fsspec
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sas_ray.datasets import nuscenes
from sas_ray.datasets.frames import read_frame
from sas_ray.errors import InputError
from sas_ray.scene import Frame, Scene

W, H = 32, 18
K = np.array([[20.0, 0, 15.5], [0, 20.0, 8.5], [0, 0, 1]])
CAMERA_YAW = {"CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_FRONT_LEFT": 55, "CAM_BACK": 180, "CAM_BACK_LEFT": 110,
              "CAM_BACK_RIGHT": -110}


def rigid(rotvec, translation) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    t[:3, 3] = translation
    return t


def camera_mount(yaw_deg: float) -> np.ndarray:
    """Camera -> ego: OpenCV camera (z forward, x right, y down) looking along ego heading `yaw` (ego: x fwd, z up)."""
    to_ego = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)  # camera axes in ego axes at yaw 0
    mount = np.eye(4)
    mount[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix() @ to_ego
    mount[:3, 3] = [1.0, 0.0, 1.5]
    return mount


def synthetic_sample(token: str, seed: int, scene_name: str = "scene-0001",
                     timestamp: int = 10**15) -> nuscenes.DevkitSample:
    """A ground plane and a wall around an ego car far from the world origin; every camera has its own ego pose."""
    rng = np.random.default_rng(seed)
    ego = rigid([0, 0, 0.7 + seed], [612.5 + seed, 1633.25, 0.2])
    xy = rng.uniform(-20, 20, (300, 2))
    ground = np.c_[xy, np.zeros(300)]
    wall = np.c_[np.full(100, 12.0), rng.uniform(-10, 10, 100), rng.uniform(0, 4, 100)]
    local = np.r_[ground, wall]
    world = (local @ ego[:3, :3].T + ego[:3, 3]).astype(np.float32)
    labels = np.r_[np.full(300, 10), rng.choice([3, 14, 255], 100)]  # drivable surface; car/manmade/unlabelled
    cameras, camera_ego = [], {}
    for k, (channel, yaw) in enumerate(CAMERA_YAW.items()):
        camera_ego[channel] = ego @ rigid([0, 0, 0.01 * k], [0.3 * (k + 1), 0.05 * k, 0.0])  # the car moved on
        rgb = np.full((H, W, 3), 40 * k, np.uint8)
        cameras.append(Frame(token, channel, rgb, K.copy(), camera_ego[channel] @ camera_mount(yaw)))
    lidar = rigid([0.01, -0.02, 0.03], [0.94, 0.0, 1.84])
    return nuscenes.DevkitSample(Scene(token, world, None, labels.astype(np.int64)), cameras, ego, lidar, camera_ego,
                                 scene_name, timestamp)


def project(points: np.ndarray, cam_to_frame: np.ndarray, intrinsic: np.ndarray):
    cam = (np.c_[points, np.ones(len(points))] @ np.linalg.inv(cam_to_frame).T)[:, :3]
    return cam[:, :2] / cam[:, 2:] * intrinsic[[0, 1], [0, 1]] + intrinsic[:2, 2], cam[:, 2]


@pytest.fixture
def root():
    return f"memory://nuscenes-{uuid.uuid4().hex}"


def test_quaternions_hand_worked_and_against_scipy():
    c = np.sqrt(0.5)
    np.testing.assert_allclose(nuscenes.quaternion_to_matrix([c, 0, 0, c]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-15)
    np.testing.assert_allclose(nuscenes.quaternion_to_matrix([0, 1, 0, 0]), np.diag([1, -1, -1]), atol=1e-15)
    for rot in Rotation.random(20, random_state=3):
        x, y, z, w = rot.as_quat()
        expected = np.array([w, x, y, z]) * np.sign(w)
        np.testing.assert_allclose(nuscenes.matrix_to_quaternion(rot.as_matrix()), expected, atol=1e-12)
        np.testing.assert_allclose(nuscenes.quaternion_to_matrix([w, x, y, z]), rot.as_matrix(), atol=1e-12)
    for axis in np.eye(3):  # 180 degree turns: the trace <= 0 branches
        m = Rotation.from_rotvec(np.pi * axis).as_matrix()
        np.testing.assert_allclose(nuscenes.quaternion_to_matrix(nuscenes.matrix_to_quaternion(m)), m, atol=1e-12)


def test_label_remap_is_openscenes():
    """OpenScene's preprocess_3d_nuscenes.py table (1-based, 256 = ignore), minus one."""
    table = np.full(32, 256)
    for raw, label in {2: 7, 3: 7, 4: 7, 6: 7, 9: 1, 12: 8, 14: 2, 15: 3, 16: 3, 17: 4, 18: 5, 21: 6, 22: 9, 23: 10,
                       24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 30: 16}.items():
        table[raw] = label
    np.testing.assert_array_equal(nuscenes.RAW_TO_LABEL, table - 1)


def test_converted_geometry_matches_the_synthetic_poses(root):
    sample = synthetic_sample("a" * 32, 0)
    nuscenes.write_nuscenes_devkit(root, "v1.0-mini", [sample])
    scene = nuscenes.read_scene(root, "v1.0-mini", "a" * 32)
    world = sample.scene.points.astype(np.float64)
    expected_local = world @ np.linalg.inv(sample.ego_to_world)[:3, :3].T + np.linalg.inv(sample.ego_to_world)[:3, 3]
    np.testing.assert_allclose(scene.points, expected_local, atol=1e-4)  # the ego frame at the lidar time
    np.testing.assert_array_equal(scene.labels, sample.scene.labels)
    assert scene.colors is None and scene.faces is None

    rows = nuscenes.frame_rows(root, "v1.0-mini", "a" * 32)
    assert sorted(r["frame"] for r in rows) == sorted(CAMERA_YAW)
    originals = {c.frame_id: c for c in sample.cameras}
    for row in rows:
        assert (row["width"], row["height"], row["depth_uri"]) == (W, H, None)
        frame = read_frame(row)
        original = originals[row["frame"]]
        np.testing.assert_array_equal(frame.intrinsic, K)
        uv, z = project(scene.points.astype(np.float64), frame.pose, frame.intrinsic)
        uv_ref, z_ref = project(world, original.pose, original.intrinsic)
        front = z_ref > 0.5
        assert front.sum() > 20
        np.testing.assert_allclose(uv[front], uv_ref[front], atol=1e-3)
        np.testing.assert_allclose(z, z_ref, atol=1e-4)
        assert np.abs(frame.rgb.astype(int) - original.rgb).max() <= 2


def test_scenes_in_scene_then_time_order_and_filter(root):
    samples = [synthetic_sample("b" * 32, 1, "scene-0002", 3 * 10**15),
               synthetic_sample("c" * 32, 2, "scene-0002", 2 * 10**15),
               synthetic_sample("d" * 32, 3, "scene-0001", 5 * 10**15)]
    nuscenes.write_nuscenes_devkit(root, "v1.0-mini", samples)
    assert nuscenes.list_scenes(root, "v1.0-mini") == ["d" * 32, "c" * 32, "b" * 32]
    assert nuscenes.list_scenes(root, "v1.0-mini", scene_names=["scene-0002"]) == ["c" * 32, "b" * 32]


def _edit_table(root: str, name: str, edit) -> None:
    with fsspec.open(f"{root}/v1.0-mini/{name}.json", "rb") as f:
        rows = json.loads(f.read())
    with fsspec.open(f"{root}/v1.0-mini/{name}.json", "wb") as f:
        f.write(json.dumps(edit(rows)).encode())


def test_non_keyframes_are_not_read(root):
    nuscenes.write_nuscenes_devkit(root, "v1.0-mini", [synthetic_sample("e" * 32, 4)])
    sweep = {"token": "f" * 32, "sample_token": "e" * 32, "ego_pose_token": "missing", "is_key_frame": False,
             "calibrated_sensor_token": "missing", "filename": "sweeps/LIDAR_TOP/x.pcd.bin"}
    _edit_table(root, "sample_data", lambda rows: rows + [sweep])
    assert nuscenes.list_scenes(root, "v1.0-mini") == ["e" * 32]
    assert len(nuscenes.frame_rows(root, "v1.0-mini", "e" * 32)) == 6


def test_bad_inputs_are_input_errors(root):
    nuscenes.write_nuscenes_devkit(root, "v1.0-mini", [synthetic_sample("a" * 32, 5)])
    seg = next(iter(fsspec.filesystem("memory").glob(f"{root[len('memory://'):]}/lidarseg/v1.0-mini/*.bin")))
    with fsspec.open(f"memory://{seg}", "wb") as f:
        f.write(bytes(10))
    with pytest.raises(InputError, match=r"scene a{32}: .*_lidarseg.bin has 10 labels for 400 lidar points"):
        nuscenes.read_scene(root, "v1.0-mini", "a" * 32)
    with pytest.raises(InputError, match="no keyframe sample"):
        nuscenes.read_scene(root, "v1.0-mini", "0" * 32)

    other = f"memory://nuscenes-{uuid.uuid4().hex}"
    nuscenes.write_nuscenes_devkit(other, "v1.0-mini", [synthetic_sample("a" * 32, 6)])
    _edit_table(other, "category", lambda rows: [dict(r, name="animal") if r["index"] == 0 else r for r in rows])
    with pytest.raises(InputError, match="category index 0 is 'animal'"):
        nuscenes.list_scenes(other, "v1.0-mini")
