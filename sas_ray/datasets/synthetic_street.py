"""Procedural street scenes in the nuScenes sensor layout: a road with sidewalks, terrain, buildings, vegetation and
road users (nuScenes-16 labels), scanned by a 32-beam spinning lidar and seen by the six surround cameras.

Frames (nuScenes conventions): world = the devkit's global frame (z up); ego = the car (x forward, y left, z up);
lidar LIDAR_TOP at 1.84 m, x right, y forward (yaw -90 degrees in the ego); cameras OpenCV (x right, y down, z
forward). The calibrated-sensor tables of the devkit hold sensor->ego, ego_pose holds ego->world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_ray.datasets.synthetic_mesh import Material, MeshRecipe
from sas_ray.datasets.synthetic_render import RenderedView, cast_lidar, render_views
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.labels import NUSCENES_16
from sas_ray.scene import Frame, Scene

NUSCENES_IMAGE_SIZE = (900, 1600)  # (H, W) of the raw camera images
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)  # Velodyne HDL-32E beams, lowest first
LIDAR_RANGE = (1.0, 70.0)  # metres


@dataclass(frozen=True)
class Camera:
    """One surround camera: devkit channel name, sensor_to_ego float64 [4,4] and intrinsic float64 [3,3] at
    NUSCENES_IMAGE_SIZE (1600x900)."""

    channel: str
    sensor_to_ego: np.ndarray
    intrinsic: np.ndarray


@dataclass(frozen=True)
class StreetSample:
    """One nuScenes keyframe as a devkit writer needs it.

    mesh: the street surfaces (Scene with faces, world frame, labels = NUSCENES_16 indices), for rendering.
    ego_pose: float64 [4,4] ego->world. lidar_to_ego: float64 [4,4] (LIDAR_TOP calibrated sensor).
    cameras: the six Cameras (sensor->ego and K at 1600x900).
    lidar_points: float32 [N,3] in the lidar frame (what LIDAR_TOP/*.pcd.bin stores), in emission order;
    lidar_labels: int64 [N] NUSCENES_16 indices (lidarseg, after mapping to the 16 classes); lidar_beams: int64 [N]
    ring index 0..31. The Scene returned beside it holds the same points in the world frame with the same labels.
    """

    mesh: Scene
    ego_pose: np.ndarray
    lidar_to_ego: np.ndarray
    cameras: tuple[Camera, ...]
    lidar_points: np.ndarray
    lidar_labels: np.ndarray
    lidar_beams: np.ndarray

    @property
    def lidar_to_world(self) -> np.ndarray:
        return self.ego_pose @ self.lidar_to_ego


def _sensor_to_ego(translation, yaw_deg: float, optical: bool) -> np.ndarray:
    """Pose of a sensor turned by yaw about the ego z axis; `optical`: OpenCV camera axes (z along the heading)."""
    yaw = np.deg2rad(yaw_deg)
    heading, left = np.array([np.cos(yaw), np.sin(yaw), 0.0]), np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    pose = np.eye(4)
    pose[:3, :3] = np.stack([-left, [0.0, 0.0, -1.0], heading], 1) if optical \
        else np.stack([heading, left, [0.0, 0.0, 1.0]], 1)
    pose[:3, 3] = translation
    return pose


def _intrinsic(f: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


# Mounting and intrinsics close to the nuScenes rig (CAM_FRONT's K is the devkit's; the others vary per log).
NUSCENES_CAMERAS = (
    Camera("CAM_FRONT", _sensor_to_ego((1.70, 0.02, 1.51), 0, True), _intrinsic(1266.417, 816.267, 491.507)),
    Camera("CAM_FRONT_RIGHT", _sensor_to_ego((1.52, -0.49, 1.51), -55, True), _intrinsic(1260.847, 807.968, 495.334)),
    Camera("CAM_FRONT_LEFT", _sensor_to_ego((1.52, 0.49, 1.51), 55, True), _intrinsic(1272.598, 826.615, 479.752)),
    Camera("CAM_BACK", _sensor_to_ego((0.03, 0.0, 1.57), 180, True), _intrinsic(809.221, 829.220, 481.778)),
    Camera("CAM_BACK_LEFT", _sensor_to_ego((1.03, 0.48, 1.56), 110, True), _intrinsic(1256.741, 792.113, 492.776)),
    Camera("CAM_BACK_RIGHT", _sensor_to_ego((1.04, -0.48, 1.56), -110, True), _intrinsic(1259.514, 807.253, 501.196)),
)
LIDAR_TO_EGO = _sensor_to_ego((0.94, 0.0, 1.84), -90, False)

_COLORS = {
    "barrier": (205, 200, 60), "bicycle": (60, 70, 190), "bus": (220, 120, 30), "car": (120, 120, 130),
    "construction vehicle": (230, 180, 20), "motorcycle": (50, 50, 55), "person": (190, 140, 115),
    "traffic cone": (250, 110, 20), "trailer": (150, 150, 140), "truck": (70, 110, 70),
    "drivable surface": (75, 75, 80), "other flat": (125, 115, 100), "sidewalk": (170, 165, 160),
    "terrain": (110, 150, 70), "manmade": (165, 140, 125), "vegetation": (45, 110, 45),
}
_ROAD_LENGTH = 140.0
_EGO_CLEARANCE = (-4.0, 7.0)  # x range around the ego kept free of road users


def make_outdoor_scene(scene_id: str, seed: int, mesh_points_target: int = 40000,
                       num_azimuths: int = 1024) -> tuple[Scene, StreetSample]:
    """A street and one lidar sweep of it.

    Returns the Scene of lidar points (world frame, float32, labels int64 over NUSCENES_16, no colours, no
    faces — the nuScenes 3D input) and the StreetSample with the mesh, sensor poses and lidar-frame points.
    Points are the nearest ray-cast hits of 32 beams x `num_azimuths` within 1-70 m, so they lie only on
    surfaces the lidar sees.
    """
    rng = np.random.default_rng(seed)
    recipe, ego_pose = _street(rng)
    mesh = recipe.build(scene_id, mesh_points_target, rng)
    lidar_to_world = ego_pose @ LIDAR_TO_EGO
    sweep = cast_lidar(mesh, lidar_to_world, LIDAR_ELEVATIONS_DEG, num_azimuths, *LIDAR_RANGE)
    labels = mesh.labels[mesh.faces[sweep.face, 0]]
    world = sweep.points @ lidar_to_world[:3, :3].T + lidar_to_world[:3, 3]
    scene = Scene(scene_id=scene_id, points=world.astype(np.float32), labels=labels)
    sample = StreetSample(mesh=mesh, ego_pose=ego_pose, lidar_to_ego=LIDAR_TO_EGO.copy(), cameras=NUSCENES_CAMERAS,
                          lidar_points=sweep.points.astype(np.float32), lidar_labels=labels, lidar_beams=sweep.beam)
    return scene, sample


def make_outdoor_frames(scene: Scene, sample: StreetSample, size: tuple[int, int] = NUSCENES_IMAGE_SIZE
                        ) -> tuple[list[Frame], list[RenderedView]]:
    """The six camera images of the sample at `size` (H, W), K rescaled from 1600x900 with OpenScene's rule.

    Frames have frame_id = the camera channel, pose = camera-to-world, and depth None (nuScenes has no depth
    sensor); the rendered views keep the depth and label maps for tests."""
    frames, views = [], []
    for camera in sample.cameras:
        k = adjust_intrinsic(camera.intrinsic, NUSCENES_IMAGE_SIZE, size)
        pose = sample.ego_pose @ camera.sensor_to_ego
        view = render_views(sample.mesh, [pose], k, size)[0]
        frames.append(Frame(scene_id=scene.scene_id, frame_id=camera.channel, rgb=view.rgb, intrinsic=k, pose=pose))
        views.append(view)
    return frames, views


def _street(rng: np.random.Generator) -> tuple[MeshRecipe, np.ndarray]:
    """Street along world x centred on y=0; returns the mesh recipe and the ego pose (right lane, heading +x)."""
    u = rng.uniform
    recipe = MeshRecipe()

    def material(name: str) -> Material:
        jitter = rng.normal(0, 40 if name == "car" else 10, 3)
        return Material(NUSCENES_16.index(name), tuple(np.clip(np.array(_COLORS[name]) + jitter, 0, 255)))

    def box(name, lo, hi, omit=("-z",)):
        recipe.add_box(lo, hi, material(name), omit=omit)

    half = _ROAD_LENGTH / 2
    road = u(5.5, 7.0)  # half width: four lanes, the ego drives in the right inner one (heading +x)
    recipe.add_quad((-half, -road, 0), (_ROAD_LENGTH, 0, 0), (0, 2 * road, 0), material("drivable surface"))
    lane_y = {-2: -3 * road / 4, -1: -road / 4, 1: road / 4, 2: 3 * road / 4}
    occupied: dict[int, list[tuple[float, float]]] = {-2: [], -1: [_EGO_CLEARANCE], 1: [], 2: []}
    for side in (-1, 1):
        walk = u(2.5, 4.0)
        near, far = road, road + walk
        terrain = u(1.0, 4.0)
        lo_y, hi_y = sorted((side * near, side * far))
        box("sidewalk", (-half, lo_y, 0), (half, hi_y, 0.15))
        lo_y, hi_y = sorted((side * far, side * (far + terrain)))
        recipe.add_quad((-half, lo_y, 0), (_ROAD_LENGTH, 0, 0), (0, hi_y - lo_y, 0), material("terrain"))
        if u() < 0.5:  # a paved patch (driveway, plaza) on the terrain strip
            x0 = u(-half + 5, half - 15)
            recipe.add_quad((x0, lo_y, 0.01), (u(4, 10), 0, 0), (0, hi_y - lo_y, 0), material("other flat"))
        x = -half
        while x < half - 6:  # buildings behind the terrain
            width = u(8, 20)
            depth = u(8, 14)
            base = side * (far + terrain)
            lo_y, hi_y = sorted((base, base + side * depth))
            box("manmade", (x, lo_y, 0), (min(x + width, half), hi_y, u(6, 20)))
            x += width + u(1, 6)
        for _ in range(rng.integers(4, 9)):  # trees on the terrain strip
            tx, ty = u(-half + 2, half - 2), side * (far + u(0.8, max(terrain - 0.8, 0.9)))
            box("vegetation", (tx - 0.15, ty - 0.15, 0), (tx + 0.15, ty + 0.15, u(2.0, 3.0)))
            r, top = u(1.0, 2.0), u(5.0, 7.0)
            box("vegetation", (tx - r, ty - r, top - 2 * r), (tx + r, ty + r, top), omit=())
        on_sidewalk: list[tuple[float, float]] = []
        for name, count in (("person", rng.integers(2, 6)), ("bicycle", rng.integers(0, 3)),
                            ("barrier", rng.integers(0, 4)), ("traffic cone", rng.integers(1, 5))):
            for _ in range(count):
                length = {"person": 0.5, "bicycle": 1.7, "barrier": 2.0, "traffic cone": 0.4}[name]
                walking = name in ("person", "bicycle")
                # people on the sidewalk; barriers and cones along the curb, sharing the outer lane
                x0 = _free_interval(rng, on_sidewalk if walking else occupied[2 * side], length, half)
                if x0 is not None:
                    y0 = side * (near + u(0.4, walk - 0.4)) if walking else side * (near - 0.4)
                    _road_user(recipe, material(name), name, x0, y0, 0.15 if walking else 0.0, length, u)
    vehicles = ("car",) * 6 + ("truck", "bus", "trailer", "construction vehicle", "motorcycle")
    for _ in range(rng.integers(5, 11)):
        name = vehicles[rng.integers(len(vehicles))]
        lane = list(lane_y)[rng.integers(len(lane_y))]
        length = {"car": 4.5, "truck": 7.5, "bus": 11.0, "trailer": 8.0, "construction vehicle": 6.0,
                  "motorcycle": 2.1}[name]
        x0 = _free_interval(rng, occupied[lane], length, half - 15)
        if x0 is not None:
            _road_user(recipe, material(name), name, x0, lane_y[lane], 0.0, length, u)
    ego_pose = np.eye(4)
    yaw = u(-0.05, 0.05)
    ego_pose[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    ego_pose[:3, 3] = (0.0, lane_y[-1], 0.0)
    return recipe, ego_pose


def _free_interval(rng, occupied: list[tuple[float, float]], length: float, half: float) -> float | None:
    """Start x of a free [x, x + length] interval in [-half, half], at least 1 m from the occupied ones."""
    for _ in range(30):
        x0 = rng.uniform(-half, half - length)
        if all(x0 + length + 1.0 <= a or x0 >= b + 1.0 for a, b in occupied):
            occupied.append((x0, x0 + length))
            return x0
    return None


def _road_user(recipe: MeshRecipe, material: Material, name: str, x0: float, y: float, z0: float,
               length: float, u) -> None:
    """Box models of road users, axis-aligned with the road, starting at x0, centred on y, standing at z0."""
    def box(dx0, dx1, half_width, dz0, dz1, omit=("-z",)):
        recipe.add_box((x0 + dx0, y - half_width, z0 + dz0), (x0 + dx1, y + half_width, z0 + dz1), material, omit)

    if name == "traffic cone":
        apex = (x0 + 0.2, y, 0.7)
        corners = [(x0, y - 0.2, 0), (x0 + 0.4, y - 0.2, 0), (x0 + 0.4, y + 0.2, 0), (x0, y + 0.2, 0)]
        for a, b in zip(corners, corners[1:] + corners[:1]):
            recipe.add_triangle(a, b, apex, material)
        return
    if name == "person":
        box(0.1, 0.4, 0.12, 0, 0.85)
        box(0.05, 0.45, 0.22, 0.85, 1.45, ())
        box(0.15, 0.35, 0.1, 1.45, u(1.65, 1.8), ())
        return
    if name in ("bicycle", "motorcycle"):
        box(0, length, 0.15 if name == "bicycle" else 0.3, 0, 1.0 if name == "bicycle" else 1.2)
        return
    if name == "barrier":
        box(0, length, 0.15, 0, 1.0)
        return
    width = 0.9 if name == "car" else 1.25
    body = {"car": 1.0, "truck": 1.4, "bus": 3.1, "trailer": 3.3, "construction vehicle": 1.6}[name]
    for wx in (0.4, length - 1.0):
        box(wx, wx + 0.6, width, 0, 0.6)
    box(0, length, width, 0.3, body, ("-z",))
    if name == "car":
        box(1.0, 3.6, width - 0.1, body, u(1.4, 1.6), ())
    elif name in ("truck", "construction vehicle"):
        box(length - 2.2, length, width, body, 2.9, ())
        box(0, length - 2.4, width - 0.05, body, u(2.8, 3.5) if name == "truck" else body + 1.0, ())
