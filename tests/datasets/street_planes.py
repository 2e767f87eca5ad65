"""A nuScenes keyframe whose camera images are exact and cheap at any size: a textured ground and two walls (bounded
planes) seen by the devkit's camera rig, each pixel shaded in closed form (no mesh rasterisation).

Pixel (v, u) shows the surface point on the ray through the image point (u, v) (the convention of
sas_ray.datasets.synthetic_render). Textures are smooth (wavelengths of metres, tens of pixels at 800x450), so a 2x2
box average of a 1600x900 image and a render at 800x450 differ only at the wall/ground edges; lidar points lie on
the same planes, labelled drivable surface (ground) and manmade (walls).
"""

from __future__ import annotations

import numpy as np

from sas_ray.datasets.nuscenes import DevkitSample
from sas_ray.datasets.synthetic import NUSCENES_CAMERAS, NUSCENES_IMAGE_SIZE
from sas_ray.datasets.synthetic_street import LIDAR_TO_EGO
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.labels import NUSCENES_16
from sas_ray.scene import Frame, Scene

WALLS_X = (16.0, -13.0)  # ego-frame x of the wall ahead and the wall behind (planes x = const)
GROUND, MANMADE = NUSCENES_16.index("drivable surface"), NUSCENES_16.index("manmade")
_SKY = np.array([150.0, 185.0, 220.0])  # where a ray hits no surface


def rigid(yaw: float, translation) -> np.ndarray:
    t = np.eye(4)
    t[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    t[:3, 3] = translation
    return t


def texture(points: np.ndarray, wall: np.ndarray) -> np.ndarray:
    """Smooth RGB in [40, 215] of ego-frame surface points [..., 3]; walls vary along (y, z), the ground (x, y)."""
    a = np.where(wall, points[..., 1], points[..., 0])
    b = np.where(wall, points[..., 2], points[..., 1])
    channels = [np.sin(a / 1.1 + 0.3 * k) * np.cos(b / 0.8 - 0.5 * k) for k in range(3)]
    return 128.0 + np.where(wall, 80.0, 60.0)[..., None] * np.stack(channels, -1) + np.where(wall, 7.0, -7.0)[..., None]


def _on_surface(points: np.ndarray, wall: bool) -> np.ndarray:
    """The planes are bounded (a ground 32 x 24 m, walls 20 x 6 m), so no texture recedes into aliasing."""
    if wall:
        return (np.abs(points[..., 1]) <= 10) & (points[..., 2] >= 0) & (points[..., 2] <= 6)
    return (np.abs(points[..., 0]) <= 16) & (np.abs(points[..., 1]) <= 12)


def render(camera_to_ego: np.ndarray, intrinsic: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H,W,3] image of the planes from a camera with pose camera->ego and K for size (H, W)."""
    height, width = size
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(intrinsic).T @ camera_to_ego[:3, :3].T
    origin = camera_to_ego[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = [(-origin[2]) / rays[..., 2]] + [(x - origin[0]) / rays[..., 0] for x in WALLS_X]
    hits = np.stack([np.where((t > 0.05) & _on_surface(origin + t[..., None] * rays, i > 0), t, np.inf)
                     for i, t in enumerate(hits)], -1)
    nearest = hits.argmin(-1)
    t = hits.min(-1)
    points = origin + np.where(np.isfinite(t), t, 0.0)[..., None] * rays
    rgb = np.where(np.isfinite(t)[..., None], texture(points, nearest > 0), _SKY)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def lidar_points(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points on the ground (|x| < 12, |y| < 8) and on both walls, with their labels."""
    ground = np.c_[rng.uniform(-12, 15, count), rng.uniform(-8, 8, count), np.zeros(count)]
    walls = [np.c_[np.full(count // 4, x), rng.uniform(-8, 8, count // 4), rng.uniform(0.2, 5, count // 4)]
             for x in WALLS_X]
    points = np.concatenate([ground, *walls])
    return points, np.r_[np.full(count, GROUND), np.full(2 * (count // 4), MANMADE)].astype(np.int64)


def street_sample(token: str, size: tuple[int, int] = NUSCENES_IMAGE_SIZE, channels: tuple[str, ...] | None = None,
                  seed: int = 0, shaded: bool = True, scene_name: str = "scene-0001",
                  timestamp: int = 1_533_151_603_547_590) -> DevkitSample:
    """One keyframe: ego pose far from the world origin, lidar points in the world frame, camera images at size
    (H, W) with K rescaled from the rig's 1600x900 K by OpenScene's rule (flat grey unless `shaded`); every camera
    with its own ego pose."""
    rng = np.random.default_rng(seed)
    ego = rigid(0.4 + seed, [612.5 + 10 * seed, 1633.25, 0.0])
    local, labels = lidar_points(rng, 1500)
    world = local @ ego[:3, :3].T + ego[:3, 3]
    cameras, camera_ego = [], {}
    for k, cam in enumerate(c for c in NUSCENES_CAMERAS if channels is None or c.channel in channels):
        moved = rigid(0.002 * (k + 1), [0.05 * (k + 1), 0.0, 0.0])  # the car moved on between the exposures
        camera_ego[cam.channel] = ego @ moved
        intrinsic = adjust_intrinsic(cam.intrinsic, NUSCENES_IMAGE_SIZE, size)
        rgb = render(moved @ cam.sensor_to_ego, intrinsic, size) if shaded else np.full((*size, 3), 128, np.uint8)
        cameras.append(Frame(token, cam.channel, rgb, intrinsic, camera_ego[cam.channel] @ cam.sensor_to_ego))
    return DevkitSample(Scene(token, world.astype(np.float32), None, labels), cameras, ego, LIDAR_TO_EGO.copy(),
                        camera_ego, scene_name, timestamp)
