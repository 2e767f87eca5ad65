"""project_points against closed-form pinhole projections and an independent numpy transcription of OpenScene's
`PointCloudToImageMapper.compute_mapping`."""

import warnings

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.geometry.projection import project_points

H, W = 48, 64
K = np.array([[64.0, 0.0, 31.5], [0.0, 64.0, 23.5], [0.0, 0.0, 1.0]])


def _project(points, pose=np.eye(4), k=K, cut_bound=0, depth=None, visibility_threshold=None):
    rows, cols, valid = project_points(torch.tensor(points, dtype=torch.float32), pose, k, (H, W),
                                       cut_bound=cut_bound, depth=depth, visibility_threshold=visibility_threshold)
    return rows.tolist(), cols.tolist(), valid.tolist()


def test_point_on_optical_axis_hits_principal_point():
    k = K.copy()
    k[0, 2], k[1, 2] = 30.0, 20.0
    assert _project([[0.0, 0.0, 2.0]], k=k) == ([20], [30], [True])


def test_known_pixels_identity_pose():
    # u = 64·X/Z + 31.5, v = 64·Y/Z + 23.5: X/Z = 0.25 -> u = 47.5 -> 48 (half to even); Y/Z = -0.125 -> v = 15.5 -> 16
    assert _project([[0.5, -0.25, 2.0]]) == ([16], [48], [True])
    # X/Z = 0.0078125 -> u = 32.0; Y/Z = 0.1171875 -> v = 31.0
    assert _project([[0.03125, 0.46875, 4.0]]) == ([31], [32], [True])


def test_read_only_pose_and_intrinsic_are_taken_without_a_warning():
    """Poses and intrinsics arrive as read-only arrays (Ray blocks): no UserWarning on every frame."""
    pose, k = np.eye(4), K.copy()
    pose.flags.writeable = k.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _project([[0.5, -0.25, 2.0]], pose=pose, k=k) == ([16], [48], [True])


def test_translated_camera():
    pose = np.eye(4)
    pose[:3, 3] = [1.0, -2.0, 0.5]                      # camera centre in the world
    k = K.copy()
    k[0, 2], k[1, 2] = 30.0, 20.0
    # world (1, -2, 2.5) is 2 m straight ahead of the camera
    assert _project([[1.0, -2.0, 2.5]], pose=pose, k=k) == ([20], [30], [True])


def test_rotated_camera_looks_along_world_x():
    # camera z axis -> world +x, camera x -> world -z, camera y -> world +y (a rotation, det +1)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    k = K.copy()
    k[0, 2], k[1, 2] = 30.0, 20.0
    # ahead on the axis; 0.25 m towards world -z is camera +x: u = 30 + 64·0.25/2 = 38; world y 0.5 -> v = 36
    # world (-3, 0, 0) is behind the camera (Z = -3) and would otherwise land on the principal point
    rows, cols, valid = _project([[2.0, 0.0, 0.0], [2.0, 0.5, -0.25], [-3.0, 0.0, 0.0]], pose=pose, k=k)
    assert valid == [True, True, False]
    assert rows[:2] == [20, 36] and cols[:2] == [30, 38]


def test_half_pixels_round_to_even_and_cut_bound_edges():
    # u = 64·X + 31.5 at Z = 1 with exactly representable X; cut_bound 10 keeps 10 <= u < 54 and 10 <= v < 38
    xs = {8.5: -0.359375, 9.5: -0.34375, 10.5: -0.328125, 52.5: 0.328125, 53.5: 0.34375, 54.0: 0.3515625}
    points = [[x, 0.0, 1.0] for x in xs.values()]
    rows, cols, valid = _project(points, cut_bound=10)
    # 8.5 -> 8 (out), 9.5 -> 10 (in), 10.5 -> 10 (in), 52.5 -> 52 (in), 53.5 -> 54 (out), 54 (out)
    assert valid == [False, True, True, True, False, False]
    assert cols == [0, 10, 10, 52, 0, 0]
    # rows: v = 64·Y + 23.5; Y such that v = 9.5 -> 10 (in), 37.5 -> 38 (out), 36.5 -> 36 (in)
    rows, _, valid = _project([[0.0, -0.21875, 1.0], [0.0, 0.21875, 1.0], [0.0, 0.203125, 1.0]], cut_bound=10)
    assert valid == [True, False, True] and rows == [10, 0, 36]


def test_without_cut_bound_whole_image_is_valid():
    # corners u = 0 and u = 63, v = 0 and v = 47
    points = [[-31.5 / 64, -23.5 / 64, 1.0], [31.5 / 64, 23.5 / 64, 1.0], [32.5 / 64, 0.0, 1.0]]
    rows, cols, valid = _project(points)
    assert valid == [True, True, False]
    assert (rows[:2], cols[:2]) == ([0, 47], [0, 63])


def test_depth_occlusion_at_relative_threshold():
    eps = 2.0**-20
    depth = np.full((H, W), 2.0, dtype=np.float32)      # D = 2, threshold 0.25 -> keep |2 - Z| <= 0.5
    depth[0, 0] = 2.0 - eps                             # shrinks the band just below Z = 2.5
    on_axis = lambda z: [0.0, 0.0, z]                   # noqa: E731  (pixel v=24, u=32 after rounding 23.5/31.5)
    points = [on_axis(2.5), on_axis(1.5), on_axis(2.5 + eps), on_axis(1.5 - eps), on_axis(2.0)]
    assert _project(points, depth=depth, visibility_threshold=0.25)[2] == [True, True, False, False, True]
    corner = [-31.5 / 64 * 2.5, -23.5 / 64 * 2.5, 2.5]   # pixel (0, 0) at Z = 2.5
    assert _project([corner], depth=depth, visibility_threshold=0.25)[2] == [False]
    depth[0, 0] = 2.0
    assert _project([corner], depth=depth, visibility_threshold=0.25) == ([0], [0], [True])


def test_zero_depth_and_points_behind_camera_reject():
    depth = np.zeros((H, W), dtype=np.float32)
    assert _project([[0.0, 0.0, 2.0]], depth=depth, visibility_threshold=0.25)[2] == [False]
    depth[:] = 2.0
    behind = [[0.0, 0.0, -2.0], [0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]
    assert _project(behind, depth=depth, visibility_threshold=0.25)[2] == [False] * 3
    assert _project(behind)[2] == [False] * 3


def test_depth_requires_threshold_and_matching_size():
    with pytest.raises(InputError):
        _project([[0.0, 0.0, 1.0]], depth=np.ones((H, W), np.float32))
    with pytest.raises(InputError):
        _project([[0.0, 0.0, 1.0]], depth=np.ones((H, W + 1), np.float32), visibility_threshold=0.25)
    with pytest.raises(InputError):
        project_points(torch.zeros(3, 2), np.eye(4), K, (H, W), cut_bound=0)


def openscene_compute_mapping(camera_to_world, coords, depth, intrinsic, image_dim, cut_bound, vis_thres):
    """Independent numpy transcription of OpenScene's compute_mapping; image_dim is (W, H) as there."""
    mapping = np.zeros((3, coords.shape[0]), dtype=int)
    homogeneous = np.concatenate([coords, np.ones([coords.shape[0], 1])], axis=1).T
    p = np.matmul(np.linalg.inv(camera_to_world), homogeneous)
    p[0] = (p[0] * intrinsic[0][0]) / p[2] + intrinsic[0][2]
    p[1] = (p[1] * intrinsic[1][1]) / p[2] + intrinsic[1][2]
    with np.errstate(invalid="ignore"):
        pi = np.round(p).astype(int)
    inside = (pi[0] >= cut_bound) * (pi[1] >= cut_bound) * (pi[0] < image_dim[0] - cut_bound) \
        * (pi[1] < image_dim[1] - cut_bound)
    if depth is not None:
        d = depth[pi[1][inside], pi[0][inside]]
        inside[inside] = np.abs(d - p[2][inside]) <= vis_thres * d
    else:
        inside = (p[2] > 0) * inside
    mapping[0][inside] = pi[1][inside]
    mapping[1][inside] = pi[0][inside]
    mapping[2][inside] = 1
    return mapping


def _random_pose(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = q, rng.uniform(-3, 3, size=3)
    return pose


def _random_frame(rng, n=4000):
    pose = _random_pose(rng)
    k = np.array([[rng.uniform(40, 90), 0, rng.uniform(25, 38)], [0, rng.uniform(40, 90), rng.uniform(18, 30)],
                  [0, 0, 1]])
    z = rng.uniform(-1.0, 5.0, size=n)
    camera = np.stack([rng.uniform(-0.8, 0.8, n) * np.abs(z), rng.uniform(-0.6, 0.6, n) * np.abs(z), z], 1)
    camera[:20] = np.round(camera[:20] * 8) / 8                         # some exactly representable coordinates
    points = (camera @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
    depth = rng.uniform(0.2, 5.0, size=(H, W)).astype(np.float32)
    # make the sensor agree with some points to within +-4 %, so tight thresholds accept and reject both
    front = z > 0.2
    u = np.clip(np.round(k[0, 0] * camera[front, 0] / z[front] + k[0, 2]).astype(int), 0, W - 1)
    v = np.clip(np.round(k[1, 1] * camera[front, 1] / z[front] + k[1, 2]).astype(int), 0, H - 1)
    depth[v, u] = z[front] * rng.uniform(0.96, 1.04, size=len(u))
    depth[rng.random((H, W)) < 0.1] = 0.0
    return points, pose, k, depth


@pytest.mark.parametrize("with_depth,vis_thres,cut_bound", [(True, 0.25, 10), (True, 0.02, 10), (False, None, 5)])
def test_matches_openscene_reference_on_random_frames(with_depth, vis_thres, cut_bound):
    rng = np.random.default_rng(7)
    accepted = rejected = 0
    for _ in range(5):
        points, pose, k, depth = _random_frame(rng)
        depth = depth if with_depth else None
        expected = openscene_compute_mapping(pose, points, depth, k, (W, H), cut_bound, vis_thres)
        rows, cols, valid = project_points(torch.from_numpy(points), pose, k, (H, W), cut_bound=cut_bound,
                                           depth=depth, visibility_threshold=vis_thres)
        np.testing.assert_array_equal(rows.numpy(), expected[0])
        np.testing.assert_array_equal(cols.numpy(), expected[1])
        np.testing.assert_array_equal(valid.numpy(), expected[2].astype(bool))
        accepted += int(valid.sum())
        rejected += int((~valid).sum())
    assert accepted > 500 and rejected > 500


def test_batch_of_frames_equals_frame_by_frame():
    rng = np.random.default_rng(3)
    frames = [_random_frame(rng, n=500) for _ in range(3)]
    points = torch.from_numpy(frames[0][0])
    poses = torch.from_numpy(np.stack([f[1] for f in frames]))
    ks = torch.from_numpy(np.stack([f[2] for f in frames]))
    depths = torch.from_numpy(np.stack([f[3] for f in frames]))
    batched = project_points(points, poses, ks, (H, W), cut_bound=3, depth=depths, visibility_threshold=0.25)
    for b in range(3):
        single = project_points(points, poses[b], ks[b], (H, W), cut_bound=3, depth=depths[b],
                                visibility_threshold=0.25)
        for got, want in zip(batched, single):
            assert torch.equal(got[b], want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_openscene_reference():
    rng = np.random.default_rng(11)
    for pose_on_gpu in (False, True):
        points, pose, k, depth = _random_frame(rng)
        expected = openscene_compute_mapping(pose, points, depth, k, (W, H), 10, 0.25)
        pose_in = torch.from_numpy(pose).cuda() if pose_on_gpu else pose
        rows, cols, valid = project_points(torch.from_numpy(points).cuda(), pose_in, k, (H, W), cut_bound=10,
                                           depth=torch.from_numpy(depth).cuda(), visibility_threshold=0.25)
        assert rows.is_cuda and valid.is_cuda
        np.testing.assert_array_equal(rows.cpu().numpy(), expected[0])
        np.testing.assert_array_equal(cols.cpu().numpy(), expected[1])
        np.testing.assert_array_equal(valid.cpu().numpy(), expected[2].astype(bool))
