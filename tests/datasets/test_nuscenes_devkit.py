"""Our nuScenes converter against the official nuscenes-devkit (the dev extra): a devkit-format mini dataset written
by our writer is loaded by the devkit's NuScenes class; every lidar point is projected into every camera by the
devkit's own chain and must land where our converted points, K and camera poses put it."""

import numpy as np
import pytest
from street_planes import GROUND, MANMADE, WALLS_X, street_sample

from sas_ray.datasets import nuscenes
from sas_ray.labels import NUSCENES_16

devkit = pytest.importorskip("nuscenes.nuscenes")  # nuscenes-devkit (scripts/install.sh, dev)
from nuscenes.utils.data_classes import LidarPointCloud  # noqa: E402
from nuscenes.utils.data_io import load_bin_file  # noqa: E402
from nuscenes.utils.geometry_utils import transform_matrix, view_points  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

VERSION = "v1.0-mini"
MIN_DIST = 1.0  # map_pointcloud_to_image's default: points closer than 1 m to the camera are dropped


def _record_transform(nusc, table: str, token: str, inverse: bool = False) -> np.ndarray:
    record = nusc.get(table, token)
    return transform_matrix(record["translation"], Quaternion(record["rotation"]), inverse=inverse)


def devkit_projection(nusc, lidar: dict, camera: dict) -> tuple[np.ndarray, np.ndarray]:
    """map_pointcloud_to_image's chain step by step (lidar -> ego at the sweep -> global -> ego at the exposure ->
    camera -> view_points), with the devkit's records, quaternions and functions, but in float64 for every point
    (the devkit keeps the cloud in float32, which rounds global coordinates ~1.6 km from the origin to 0.1 mm).
    Returns pixels [N, 2] and depths [N]."""
    cloud = LidarPointCloud.from_file(f"{nusc.dataroot}/{lidar['filename']}")
    cloud.points = cloud.points.astype(np.float64)
    for table, token, inverse in (("calibrated_sensor", lidar["calibrated_sensor_token"], False),
                                  ("ego_pose", lidar["ego_pose_token"], False),
                                  ("ego_pose", camera["ego_pose_token"], True),
                                  ("calibrated_sensor", camera["calibrated_sensor_token"], True)):
        cloud.transform(_record_transform(nusc, table, token, inverse))
    intrinsic = np.array(nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])["camera_intrinsic"])
    return view_points(cloud.points[:3], intrinsic, normalize=True)[:2].T, cloud.points[2]


def in_image(pixels: np.ndarray, depths: np.ndarray, width: int, height: int) -> np.ndarray:
    """map_pointcloud_to_image's mask: depth > min_dist and 1 < u < W - 1, 1 < v < H - 1."""
    u, v = pixels.T
    return (depths > MIN_DIST) & (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)


def ours(points: np.ndarray, pose: np.ndarray, intrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and depths of our converted scene points in our frame (SPEC §2.2's projection before rounding)."""
    camera = (np.c_[points, np.ones(len(points))] @ np.linalg.inv(pose).T)[:, :3]
    return camera[:, :2] / camera[:, 2:] * intrinsic[[0, 1], [0, 1]] + intrinsic[:2, 2], camera[:, 2]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Three keyframes in two scenes, 1600x900 cameras, ego poses ~1.6 km from the world origin."""
    root = str(tmp_path_factory.mktemp("nuscenes"))
    samples = [street_sample(f"{i:032x}", seed=i, shaded=False, scene_name=f"scene-{1 + i // 2:04d}",
                             timestamp=1_533_151_603_547_590 + 500_000 * i) for i in range(3)]
    nuscenes.write_nuscenes_devkit(root, VERSION, samples)
    return root, {s.scene.scene_id: s for s in samples}, devkit.NuScenes(VERSION, root, verbose=False)


def test_devkit_reads_our_dataset(mini):
    root, samples, nusc = mini
    assert sorted(s["token"] for s in nusc.sample) == sorted(samples)
    assert [s["name"] for s in nusc.scene] == ["scene-0001", "scene-0002"]
    assert nuscenes.list_scenes(root, VERSION) == sorted(samples)  # (scene name, time) order
    for sample in nusc.sample:
        assert set(sample["data"]) == {nuscenes.LIDAR, *nuscenes.CAMERAS}


def test_projection_matches_the_devkit_chain(mini):
    root, samples, nusc = mini
    seen = 0
    for sample in nusc.sample:
        token = sample["token"]
        scene = nuscenes.read_scene(root, VERSION, token)
        lidar = nusc.get("sample_data", sample["data"][nuscenes.LIDAR])
        ego = _record_transform(nusc, "ego_pose", lidar["ego_pose_token"])
        cs = _record_transform(nusc, "calibrated_sensor", lidar["calibrated_sensor_token"])
        cloud = LidarPointCloud.from_file(f"{root}/{lidar['filename']}").points[:3].T.astype(np.float64)
        np.testing.assert_allclose(scene.points, cloud @ cs[:3, :3].T + cs[:3, 3], atol=2e-5)  # the ego frame
        rows = {r["frame"]: r for r in nuscenes.frame_rows(root, VERSION, token)}
        assert sorted(rows) == sorted(nuscenes.CAMERAS)
        for channel, row in rows.items():
            camera = nusc.get("sample_data", sample["data"][channel])
            intrinsic = np.array(row["intrinsic"]).reshape(3, 3)
            pose = np.array(row["pose"]).reshape(4, 4)
            np.testing.assert_array_equal(intrinsic, nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])
                                          ["camera_intrinsic"])
            camera_to_global = (_record_transform(nusc, "ego_pose", camera["ego_pose_token"])
                                @ _record_transform(nusc, "calibrated_sensor", camera["calibrated_sensor_token"]))
            np.testing.assert_allclose(pose, np.linalg.inv(ego) @ camera_to_global, atol=1e-9)
            assert (row["width"], row["height"]) == (camera["width"], camera["height"]) == (1600, 900)

            expected_uv, expected_z = devkit_projection(nusc, lidar, camera)
            uv, z = ours(scene.points.astype(np.float64), pose, intrinsic)
            inside = in_image(expected_uv, expected_z, 1600, 900)
            np.testing.assert_array_equal(in_image(uv, z, 1600, 900), inside, err_msg=f"{token} {channel}")
            np.testing.assert_allclose(uv[inside], expected_uv[inside], atol=1e-3, rtol=0)
            np.testing.assert_allclose(z, expected_z, atol=1e-4)
            seen += inside.sum()

            # The devkit's own function (float32 cloud): the same points, within its global-frame rounding.
            pixels, _, image = nusc.explorer.map_pointcloud_to_image(lidar["token"], camera["token"])
            assert image.size == (1600, 900) and pixels.shape[1] == inside.sum()
            np.testing.assert_allclose(pixels[:2].T, uv[inside], atol=0.05)
    assert seen > 3 * 1500  # every sample's points are seen by several cameras


def test_lidarseg_labels_land_on_their_points(mini):
    """The devkit's lidarseg reader and class names give each point the class of the surface it lies on."""
    root, samples, nusc = mini
    remap = {name: nuscenes.RAW_TO_LABEL[index] for index, name in nusc.lidarseg_idx2name_mapping.items()}
    for sample in nusc.sample:
        lidar_token = sample["data"][nuscenes.LIDAR]
        raw = load_bin_file(f"{root}/{nusc.get('lidarseg', lidar_token)['filename']}", type="lidarseg")
        names = [nusc.lidarseg_idx2name_mapping[int(i)] for i in raw]
        assert set(names) == {"flat.driveable_surface", "static.manmade"}
        scene = nuscenes.read_scene(root, VERSION, sample["token"])
        np.testing.assert_array_equal(scene.labels, [remap[n] for n in names])
        on_ground = np.abs(scene.points[:, 2]) < 1e-3  # the lidar frame is level: ground points have z = 0
        on_wall = np.isin(np.round(scene.points[:, 0], 3), WALLS_X)
        assert (on_ground | on_wall).all() and not (on_ground & on_wall).any()
        np.testing.assert_array_equal(scene.labels, np.where(on_ground, GROUND, MANMADE))
        assert NUSCENES_16[GROUND] == "drivable surface" and NUSCENES_16[MANMADE] == "manmade"
