"""Synthetic datasets: renders checked against closed-form geometry and brute-force ray casting, labels against the
projected mesh, determinism by seed, lidar points against the mesh surfaces."""

import numpy as np
import pytest

from sas_ray.datasets.synthetic import (
    IMAGE_SIZES, NUSCENES_CAMERAS, SCANNET_INTRINSIC, cast_lidar, make_indoor_frames, make_indoor_scene,
    make_outdoor_frames, make_outdoor_scene, render_views)
from sas_ray.errors import InputError
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.labels import MATTERPORT_21, NUSCENES_16, SCANNET_20
from sas_ray.scene import Scene

TINY = IMAGE_SIZES["scannet"]["tiny"]
TINY_K = adjust_intrinsic(SCANNET_INTRINSIC, (240, 320), TINY)


# --- independent references -------------------------------------------------------------------------------------

def pixel_rays(k, size):
    """[H*W,3] rays (X/Z, Y/Z, 1) through the integer pixel points, row-major."""
    v, u = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    return np.stack([(u.ravel() - k[0, 2]) / k[0, 0], (v.ravel() - k[1, 2]) / k[1, 1], np.ones(u.size)], 1)


def brute_force_cast(directions, triangles, t_min):
    """Möller–Trumbore from the origin against every triangle: nearest t (inf = miss) and face per ray."""
    v0, e1, e2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    q = np.cross(-v0, e1)
    best_t, best_face = np.full(len(directions), np.inf), np.full(len(directions), -1)
    for start in range(0, len(directions), 128):
        d = directions[start:start + 128, None, :]
        p = np.cross(d, e2[None])
        det = (e1[None] * p).sum(-1)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        a = (-v0[None] * p).sum(-1) * inv
        b = (d * q[None]).sum(-1) * inv
        t = (e2 * q).sum(-1)[None] * inv
        hit = ok & (a >= 0) & (b >= 0) & (a + b <= 1) & (t >= t_min)
        t = np.where(hit, t, np.inf)
        best_face[start:start + 128] = np.where(np.isfinite(t.min(1)), t.argmin(1), -1)
        best_t[start:start + 128] = t.min(1)
    return best_t, best_face


def distance_to_triangles(point, triangles):
    """Euclidean distance from one point to each triangle [F,3,3] (plane if the foot is inside, else edges)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    n = np.cross(b - a, c - a)
    nn = (n * n).sum(1)
    height = ((point - a) * n).sum(1) / nn
    foot = point - height[:, None] * n
    inside = np.ones(len(a), bool)
    for p, q in ((a, b), (b, c), (c, a)):
        inside &= (np.cross(q - p, foot - p) * n).sum(1) >= 0
    edges = []
    for p, q in ((a, b), (b, c), (c, a)):
        s = np.clip(((point - p) * (q - p)).sum(1) / ((q - p) ** 2).sum(1), 0, 1)
        edges.append(np.linalg.norm(p + s[:, None] * (q - p) - point, axis=1))
    return np.where(inside, np.abs(height) * np.sqrt(nn), np.min(edges, 0))


def project(points, pose, k):
    """Pinhole projection: camera Z and the rounded pixel (v, u) of world points."""
    world_to_camera = np.linalg.inv(pose)
    camera = points.astype(np.float64) @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = camera[:, 2]
    safe = np.where(z > 0, z, 1.0)
    u = np.round(k[0, 0] * camera[:, 0] / safe + k[0, 2]).astype(np.int64)
    v = np.round(k[1, 1] * camera[:, 1] / safe + k[1, 2]).astype(np.int64)
    return z, v, u


def random_pose(rng):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = rotation * np.sign(np.linalg.det(rotation))
    pose[:3, 3] = rng.uniform(-3, 3, 3)
    return pose


def quad_scene(pose, origin, edge1, edge2, steps=6, label=7):
    """A subdivided parallelogram given in the camera frame, placed in the world with `pose`."""
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    camera = origin + np.outer(i.ravel() / steps, edge1) + np.outer(j.ravel() / steps, edge2)
    world = camera @ pose[:3, :3].T + pose[:3, 3]
    ci, cj = (a.ravel() for a in np.meshgrid(np.arange(steps), np.arange(steps), indexing="ij"))
    a, b, c, d = ci * (steps + 1) + cj, (ci + 1) * (steps + 1) + cj, (ci + 1) * (steps + 1) + cj + 1, \
        ci * (steps + 1) + cj + 1
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64)
    return Scene("quad", world.astype(np.float32), np.full((len(world), 3), 200, np.uint8),
                 np.full(len(world), label, np.int64), faces), camera


# --- closed-form rendering checks ---------------------------------------------------------------------------------

def test_fronto_parallel_quad_depth_equals_vertex_z():
    # a quad at Z = 2.5 wider than the view: every vertex that projects into the image is front-most there
    pose = random_pose(np.random.default_rng(0))
    mesh, _ = quad_scene(pose, np.array([-2.3, -1.7, 2.5]), np.array([4.4, 0, 0]), np.array([0, 3.3, 0]), steps=9)
    view = render_views(mesh, [pose], TINY_K, TINY)[0]
    z, v, u = project(mesh.points, pose, TINY_K)
    inside = (u >= 0) & (u < TINY[1]) & (v >= 0) & (v < TINY[0])
    assert inside.sum() > 20
    np.testing.assert_allclose(view.depth[v[inside], u[inside]], z[inside], rtol=1e-3)
    np.testing.assert_allclose(view.depth, 2.5, rtol=1e-6)


def test_fronto_parallel_quad_covers_the_closed_form_pixels():
    pose = random_pose(np.random.default_rng(2))
    depth_z, (x0, x1), (y0, y1) = 2.5, (-0.83, 0.61), (-0.52, 0.37)
    mesh, _ = quad_scene(pose, np.array([x0, y0, depth_z]), np.array([x1 - x0, 0, 0]), np.array([0, y1 - y0, 0]))
    view = render_views(mesh, [pose], TINY_K, TINY)[0]
    rays = pixel_rays(TINY_K, TINY) * depth_z
    covered = ((rays[:, 0] >= x0) & (rays[:, 0] <= x1) & (rays[:, 1] >= y0) & (rays[:, 1] <= y1)).reshape(TINY)
    np.testing.assert_array_equal(view.depth > 0, covered)
    np.testing.assert_allclose(view.depth[covered], depth_z, rtol=1e-6)
    assert (view.label[covered] == 7).all() and (view.label[~covered] == 255).all()
    np.testing.assert_array_equal(view.rgb[~covered], np.broadcast_to(view.rgb[~covered][:1], view.rgb[~covered].shape))


def test_tilted_quad_depth_is_the_ray_plane_intersection():
    rng = np.random.default_rng(1)
    pose = random_pose(rng)
    origin, edge1, edge2 = np.array([-1.1, -0.6, 1.5]), np.array([2.0, 0.1, 1.2]), np.array([0.2, 1.3, 0.9])
    mesh, _ = quad_scene(pose, origin, edge1, edge2, steps=5)
    view = render_views(mesh, [pose], TINY_K, TINY)[0]

    rays = pixel_rays(TINY_K, TINY)
    normal = np.cross(edge1, edge2)
    t = (origin @ normal) / (rays @ normal)                       # Z of the hit, since ray Z = 1
    hit = rays * t[:, None] - origin
    ab = np.linalg.lstsq(np.stack([edge1, edge2], 1), hit.T, rcond=None)[0].T
    covered = ((ab >= 1e-6) & (ab <= 1 - 1e-6)).all(1) & (t > 0)
    border = ((ab > -1e-6) & (ab < 1 + 1e-6)).all(1) & ~covered  # within float noise of the quad's edge
    assert covered.sum() > 100
    depth = view.depth.ravel()
    np.testing.assert_allclose(depth[covered], t[covered], rtol=1e-6)
    assert (depth[~covered & ~border] == 0).all()


# --- rooms ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def room():
    scene, layout = make_indoor_scene("scene0000_00", seed=3, num_points_target=20000)
    frames, views = make_indoor_frames(scene, layout, num_frames=8, size=(120, 160), seed=3)
    return scene, layout, frames, views


def test_room_render_matches_brute_force_ray_casting():
    scene, layout = make_indoor_scene("scene0001_00", seed=5, num_points_target=800)
    frames, views = make_indoor_frames(scene, layout, num_frames=2, size=TINY, seed=5)
    for frame, view in zip(frames, views):
        world_to_camera = np.linalg.inv(frame.pose)
        camera = scene.points.astype(np.float64) @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        t, face = brute_force_cast(pixel_rays(frame.intrinsic, TINY), camera[scene.faces], t_min=0.05)
        assert np.isfinite(t).all()                                # a closed room: every pixel sees a surface
        np.testing.assert_allclose(view.depth.ravel(), t, rtol=1e-5)
        label = scene.labels[scene.faces[face, 0]]
        assert (view.label.ravel() == label).mean() > 0.995         # ties on shared edges may pick either face


def test_label_map_agrees_with_projected_labels_of_visible_vertices(room):
    scene, _, frames, views = room
    agree = total = 0
    for frame, view in zip(frames, views):
        z, v, u = project(scene.points, frame.pose, frame.intrinsic)
        inside = (z > 0) & (u >= 0) & (u < view.depth.shape[1]) & (v >= 0) & (v < view.depth.shape[0])
        depth = np.zeros_like(z)
        depth[inside] = view.depth[v[inside], u[inside]]
        visible = inside & (np.abs(depth - z) <= 0.005 * depth)
        agree += (view.label[v[visible], u[visible]] == scene.labels[visible]).sum()
        total += visible.sum()
    assert total > 5000
    assert agree / total > 0.95


def test_frames_carry_scannet_intrinsics_and_poses_inside_the_room(room):
    scene, layout, frames, views = room
    expected_k = adjust_intrinsic(SCANNET_INTRINSIC, (240, 320), (120, 160))
    assert [f.frame_id for f in frames] == [str(i) for i in range(8)]
    for frame, view in zip(frames, views):
        np.testing.assert_array_equal(frame.intrinsic, expected_k)
        np.testing.assert_array_equal(frame.depth, view.depth)
        rotation = frame.pose[:3, :3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        assert 1.2 <= frame.pose[2, 3] <= 1.6
        assert (0 < frame.pose[:2, 3]).all() and (frame.pose[:2, 3] < layout.size[:2]).all()
        assert (view.depth > 0).all()                                 # inside a closed room
    np.testing.assert_allclose(SCANNET_INTRINSIC, [[288.935, 0, 159.5], [0, 288.935, 119.5], [0, 0, 1]])


def test_same_seed_same_data_other_seed_differs():
    a, layout_a = make_indoor_scene("s", seed=11, num_points_target=3000)
    b, layout_b = make_indoor_scene("s", seed=11, num_points_target=3000)
    c, _ = make_indoor_scene("s", seed=12, num_points_target=3000)
    for field in ("points", "colors", "labels", "faces"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.points.shape != c.points.shape or not np.array_equal(a.points, c.points)
    frames_a, _ = make_indoor_frames(a, layout_a, 2, TINY, seed=1)
    frames_b, _ = make_indoor_frames(b, layout_b, 2, TINY, seed=1)
    frames_c, _ = make_indoor_frames(a, layout_a, 2, TINY, seed=2)
    for fa, fb, fc in zip(frames_a, frames_b, frames_c):
        np.testing.assert_array_equal(fa.rgb, fb.rgb)
        np.testing.assert_array_equal(fa.pose, fb.pose)
        assert not np.array_equal(fa.pose, fc.pose)


@pytest.mark.parametrize("label_set, seed", [("scannet20", 0), ("scannet20", 1), ("matterport21", 2)])
def test_every_placed_class_appears_in_vertex_labels(label_set, seed):
    scene, layout = make_indoor_scene("s", seed=seed, num_points_target=4000, label_set=label_set)
    names = SCANNET_20 if label_set == "scannet20" else MATTERPORT_21
    placed = {o.label for o in layout.objects}
    assert {o.name for o in layout.objects} >= {"door", "window", "picture"}
    assert len(placed) >= 8
    for o in layout.objects:
        assert names[o.label] == o.name
        assert (o.lo >= -1e-9).all() and (o.hi <= np.array(layout.size) + 1e-9).all()
    ceiling = 20 if label_set == "matterport21" else 255
    assert set(np.unique(scene.labels)) == placed | {names.index("wall"), names.index("floor"), ceiling}
    x, y, z = scene.points.T
    ceiling_interior = (z == np.float32(layout.size[2])) & (0 < x) & (x < np.float32(layout.size[0])) \
        & (0 < y) & (y < np.float32(layout.size[1]))
    assert ceiling_interior.sum() > 10 and (scene.labels[ceiling_interior] == ceiling).all()


def test_vertex_count_approaches_the_target():
    for target in (2000, 20000):
        scene, _ = make_indoor_scene("s", seed=4, num_points_target=target)
        assert 0.9 * target <= scene.num_points <= 1.1 * target
        assert scene.points.dtype == np.float32 and scene.faces.dtype == np.int64
        assert scene.faces.max() < scene.num_points


def test_bad_input_names_the_scene():
    with pytest.raises(InputError, match="scene s7.*label_set"):
        make_indoor_scene("s7", seed=0, label_set="nuscenes16")
    points_only = Scene("s8", np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="scene s8.*faces"):
        render_views(points_only, [np.eye(4)], TINY_K, TINY)


# --- streets --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def street():
    return make_outdoor_scene("scene-0001", seed=7, mesh_points_target=4000, num_azimuths=256)


def test_lidar_points_lie_on_surfaces_and_are_the_nearest_hits(street):
    scene, sample = street
    assert scene.faces is None and scene.colors is None and scene.num_points > 2000
    assert set(np.unique(scene.labels)) >= {NUSCENES_16.index(n) for n in ("drivable surface", "sidewalk", "manmade")}
    rng = np.random.default_rng(0)
    pick = rng.choice(scene.num_points, 150, replace=False)
    triangles = sample.mesh.points.astype(np.float64)[sample.mesh.faces]
    for i in pick:
        assert distance_to_triangles(scene.points[i].astype(np.float64), triangles).min() < 1e-4

    lidar = sample.lidar_points[pick].astype(np.float64)
    np.testing.assert_allclose(lidar @ sample.lidar_to_world[:3, :3].T + sample.lidar_to_world[:3, 3],
                               scene.points[pick], atol=1e-4)
    world_to_lidar = np.linalg.inv(sample.lidar_to_world)
    local = sample.mesh.points.astype(np.float64) @ world_to_lidar[:3, :3].T + world_to_lidar[:3, 3]
    ranges = np.linalg.norm(lidar, axis=1)
    t, face = brute_force_cast(lidar / ranges[:, None], local[sample.mesh.faces], t_min=1.0)
    np.testing.assert_allclose(t, ranges, rtol=1e-5)
    np.testing.assert_array_equal(sample.mesh.labels[sample.mesh.faces[face, 0]], scene.labels[pick])
    np.testing.assert_array_equal(sample.lidar_labels, scene.labels)
    elevation = np.degrees(np.arcsin(lidar[:, 2] / ranges))
    np.testing.assert_allclose(elevation, np.linspace(-30.67, 10.67, 32)[sample.lidar_beams[pick]], atol=1e-6)


def test_outdoor_frames_have_no_depth_and_follow_the_sensor_rig(street):
    scene, sample = street
    size = IMAGE_SIZES["nuscenes"]["tiny"]
    frames, views = make_outdoor_frames(scene, sample, size=size)
    assert [f.frame_id for f in frames] == [c.channel for c in NUSCENES_CAMERAS]
    assert {f.frame_id for f in frames} == {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK",
                                            "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    for frame, view, camera in zip(frames, views, sample.cameras):
        assert frame.depth is None and frame.size == size
        np.testing.assert_allclose(frame.pose, sample.ego_pose @ camera.sensor_to_ego)
        np.testing.assert_allclose(frame.intrinsic, adjust_intrinsic(camera.intrinsic, (900, 1600), size))
        assert (view.depth > 0).mean() > 0.3
    front = {c.channel: c for c in sample.cameras}
    np.testing.assert_allclose(front["CAM_FRONT"].sensor_to_ego[:3, 2], [1, 0, 0], atol=1e-12)   # looks ahead
    np.testing.assert_allclose(front["CAM_BACK"].sensor_to_ego[:3, 2], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(sample.lidar_to_ego[:3, 1], [1, 0, 0], atol=1e-12)  # lidar y points forward

    # lidar points seen by a camera agree with its rendered depth (both are exact hits on the same mesh)
    for frame, view in zip(frames, views):
        z, v, u = project(scene.points, frame.pose, frame.intrinsic)
        inside = (z > 1.0) & (u >= 0) & (u < size[1]) & (v >= 0) & (v < size[0])
        d = view.depth[v[inside], u[inside]]
        assert np.mean(np.abs(d - z[inside]) <= 0.1 * z[inside]) > 0.8


def test_lidar_on_a_single_wall_hits_the_closed_form_ranges():
    # a wall x = 4 in front of a lidar at the origin: a beam at elevation e and azimuth a hits at 4/(cos e cos a)
    wall, _ = quad_scene(np.eye(4), np.array([4.0, -3.0, -2.0]), np.array([0, 6.0, 0]), np.array([0, 0, 4.0]))
    elevations = np.array([-10.0, 0.0, 5.0])
    sweep = cast_lidar(wall, np.eye(4), elevations, num_azimuths=36, min_range=0.5, max_range=50)
    azimuth = np.radians(sweep.azimuth * 10.0)
    elevation = np.radians(elevations[sweep.beam])
    np.testing.assert_allclose(np.linalg.norm(sweep.points, axis=1), 4 / (np.cos(elevation) * np.cos(azimuth)),
                               rtol=1e-9)
    expected = {(b, a) for b in range(3) for a in range(36)
                if np.cos(np.radians(a * 10)) > 0
                and abs(4 * np.tan(np.radians(a * 10))) <= 3
                and abs(4 * np.tan(np.radians(elevations[b])) / np.cos(np.radians(a * 10))) <= 2}
    assert set(zip(sweep.beam.tolist(), sweep.azimuth.tolist())) == expected
