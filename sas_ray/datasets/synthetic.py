"""Procedural datasets with exact ground truth, the data every test and the demo uses: indoor rooms (ScanNet-20 /
Matterport-21 labels) rendered into RGB-D frames along a camera trajectory, and street scenes (nuScenes-16 labels)
seen by a spinning lidar and six cameras. Everything is deterministic given the seed.

Indoor: `make_indoor_scene` -> (Scene, Room). The Scene is the labelled, coloured vertex mesh (the role of
ScanNet's `_vh_clean_2.ply` / a Matterport region); `make_indoor_frames` renders posed frames of it with exact
intrinsics and depth (camera-space Z), plus the per-pixel label maps.
Outdoor: `make_outdoor_scene` / `make_outdoor_frames` (defined in synthetic_street, re-exported here).
Camera conventions: OpenCV axes (x right, y down, z forward), pose = camera-to-world, pixel (v, u) is the image
point the pinhole projection u = fx X/Z + cx, v = fy Y/Z + cy rounds to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_ray.datasets.synthetic_mesh import Material, MeshRecipe
from sas_ray.datasets.synthetic_render import RenderedView, cast_lidar, render_views
from sas_ray.datasets.synthetic_street import (
    NUSCENES_CAMERAS, NUSCENES_IMAGE_SIZE, Camera, StreetSample, make_outdoor_frames, make_outdoor_scene)
from sas_ray.errors import InputError
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.labels import LABEL_SETS
from sas_ray.scene import IGNORE_LABEL, Frame, Scene

__all__ = [
    "CLASS_COLORS", "IMAGE_SIZES", "MATTERPORT_IMAGE_SIZE", "MATTERPORT_INTRINSIC", "MATTERPORT_INTRINSIC_RAW",
    "NUSCENES_CAMERAS", "NUSCENES_IMAGE_SIZE", "SCANNET_IMAGE_SIZE", "SCANNET_INTRINSIC", "Camera", "PlacedObject",
    "RenderedView", "Room", "StreetSample", "cast_lidar", "indoor_trajectory", "make_indoor_frames",
    "make_indoor_scene", "make_outdoor_frames", "make_outdoor_scene", "render_views",
]

# ScanNet depth intrinsics rescaled to 320x240 (SPEC §1.3); used for the colour images too.
SCANNET_INTRINSIC = np.array([[288.935, 0.0, 159.5], [0.0, 288.935, 119.5], [0.0, 0.0, 1.0]])
SCANNET_IMAGE_SIZE = (240, 320)
# A typical Matterport3D undistorted camera at 1280x1024 (the real ones vary a little per image), and the
# 640x512 size OpenScene resizes to (SPEC §1.3).
MATTERPORT_INTRINSIC_RAW = np.array([[1075.1, 0.0, 629.7], [0.0, 1075.1, 522.7], [0.0, 0.0, 1.0]])
MATTERPORT_IMAGE_SIZE = (512, 640)
MATTERPORT_INTRINSIC = adjust_intrinsic(MATTERPORT_INTRINSIC_RAW, (1024, 1280), MATTERPORT_IMAGE_SIZE)

# (height, width). "real" = the size the layout stores (ScanNet / Matterport after OpenScene's resize, nuScenes raw
# sensor images, which `prepare` resizes to 800x450); "tiny" keeps the aspect ratio at ~64x48 for tests.
IMAGE_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "scannet": {"real": SCANNET_IMAGE_SIZE, "tiny": (48, 64)},
    "matterport": {"real": MATTERPORT_IMAGE_SIZE, "tiny": (48, 60)},
    "nuscenes": {"real": NUSCENES_IMAGE_SIZE, "tiny": (36, 64)},
}

# Base RGB of each indoor class; every object jitters it (N(0, 10) a channel), vertices add texture noise.
CLASS_COLORS = {
    "wall": (200, 195, 180), "floor": (140, 100, 70), "ceiling": (235, 235, 230), "cabinet": (150, 110, 60),
    "bed": (215, 215, 230), "chair": (90, 60, 40), "sofa": (70, 90, 140), "table": (165, 125, 85),
    "door": (185, 145, 95), "window": (165, 205, 235), "bookshelf": (115, 80, 50), "picture": (200, 70, 60),
    "counter": (190, 190, 180), "desk": (130, 100, 70), "curtain": (175, 60, 90), "refrigerator": (225, 228, 230),
    "shower curtain": (150, 200, 210), "toilet": (245, 245, 245), "sink": (210, 212, 220),
    "bathtub": (232, 234, 240), "other": (110, 140, 110),
}
_CAMERA_CLEARANCE = 0.15  # metres kept between a camera and any object
_PLACEMENT_GAP = 0.08  # metres between placed objects
_PLACEMENT_TRIES = 60


@dataclass(frozen=True)
class PlacedObject:
    """One object in a room: its class name and label index, and its axis-aligned bounds lo/hi float64 [3]."""

    name: str
    label: int
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class Room:
    """Layout of a synthetic room: it spans [0, size] metres (x, y; z up, floor at 0); objects holds one entry
    per box of the furniture and wall items that were placed (a bed is a base and a headboard; walls, floor and
    ceiling not included)."""

    size: tuple[float, float, float]
    objects: tuple[PlacedObject, ...]
    label_set: str


def make_indoor_scene(scene_id: str, seed: int, num_points_target: int = 20000,
                      label_set: str = "scannet20") -> tuple[Scene, Room]:
    """A procedural room as a labelled vertex mesh.

    Floor, four walls and the ceiling (label 255 for scannet20, which has no ceiling class; 'ceiling' = 20 for
    matterport21), a door, windows, pictures and maybe a curtain as thin boxes on the walls, and furniture of the
    ScanNet-20 classes (bed, sofa, cabinet, desk, bookshelf, toilet, sink, bathtub with a shower curtain,
    refrigerator, counter, table, chairs, other) placed without overlap. Surfaces are subdivided so the vertex
    count approaches `num_points_target` (20k for tests, ~150k is ScanNet-size). Returns the Scene (points
    float32, colors = class colour + texture noise, labels int64 per vertex, faces int64) and the Room layout.
    """
    if label_set not in ("scannet20", "matterport21"):
        raise InputError(f"scene {scene_id}: indoor label_set must be 'scannet20' or 'matterport21', "
                         f"got {label_set!r}")
    names = LABEL_SETS[label_set]
    rng = np.random.default_rng(seed)

    def material(name: str) -> Material:
        label = names.index(name) if name in names else IGNORE_LABEL
        return Material(label, tuple(np.clip(np.array(CLASS_COLORS[name]) + rng.normal(0, 10, 3), 0, 255)))

    size = (float(rng.uniform(4.0, 7.0)), float(rng.uniform(3.5, 6.0)), float(rng.uniform(2.6, 3.0)))
    recipe = MeshRecipe()
    recipe.add_box_faces((0, 0, 0), size, {"-z": material("floor"), "+z": material("ceiling"),
                                           **{f: material("wall") for f in ("-x", "+x", "-y", "+y")}}, inward=True)
    layout = _Layout(size)
    for template in _wall_items(rng, size[2]) + _floor_items(rng):
        placed = layout.place(template, rng)
        if placed is None:
            continue
        origin, orientation = placed
        materials = {name: material(name) for name in dict.fromkeys(name for name, _, _ in template.parts)}
        for name, local_box, omit in template.parts:
            lo, hi = _to_world(local_box, origin, orientation)
            faces = {"bottom": "-z", "back": ("-y", "+x", "+y", "-x")[orientation]}
            recipe.add_box(lo, hi, materials[name], omit=tuple(faces[f] for f in omit))
            layout.objects.append(PlacedObject(name, names.index(name), lo, hi))
    scene = recipe.build(scene_id, num_points_target, rng)
    return scene, Room(size=size, objects=tuple(layout.objects), label_set=label_set)


def indoor_trajectory(room: Room, num_frames: int, seed: int) -> list[np.ndarray]:
    """Camera-to-world poses float64 [4,4] walking a loop 0.6 m inside the walls at 1.2-1.6 m height, each
    looking across the room at a point 0.4-2.2 m high past its centre, so floor, walls, furniture and ceiling
    are seen, most surfaces from several frames (16 frames see ~3/4 of the vertices at least twice). Cameras
    keep 0.15 m clear of every object (moved towards the centre when needed)."""
    rng = np.random.default_rng(seed)
    sx, sy, _ = room.size
    centre = np.array([sx / 2, sy / 2])
    radii = np.array([max(sx / 2 - 0.6, 0.2), max(sy / 2 - 0.6, 0.2)])
    phase = rng.uniform(0, 2 * np.pi)
    poses = []
    for k in range(num_frames):
        angle = phase + 2 * np.pi * k / num_frames
        direction = np.array([np.cos(angle), np.sin(angle)])
        jitter = rng.uniform(-0.1, 0.1, 2)
        height = rng.uniform(1.2, 1.6)
        target = np.append(centre - 0.5 * radii * direction + rng.uniform(-0.4, 0.4, 2), rng.uniform(0.4, 2.2))
        for shrink in np.linspace(1.0, 0.0, 11):
            position = np.append(centre + shrink * (radii * direction + jitter), height)
            if not any(np.all(position >= o.lo - _CAMERA_CLEARANCE) and np.all(position <= o.hi + _CAMERA_CLEARANCE)
                       for o in room.objects):
                break
        poses.append(_look_at(position, target))
    return poses


def make_indoor_frames(scene: Scene, room: Room, num_frames: int, size: tuple[int, int] = SCANNET_IMAGE_SIZE,
                       seed: int = 0, intrinsic: np.ndarray | None = None) -> tuple[list[Frame], list[RenderedView]]:
    """Render `num_frames` RGB-D frames of `scene` along `indoor_trajectory(room, num_frames, seed)`.

    intrinsic: K float64 [3,3] for `size` (H, W); default ScanNet's (fx=fy=288.935, cx=159.5, cy=119.5 at
    320x240) rescaled to `size` with OpenScene's rule (pass MATTERPORT_INTRINSIC for the Matterport layout).
    Returns the frames (frame ids "0", "1", ...; depth float32 metres, 0 = nothing) and the rendered views, whose
    `.label` uint8 [H,W] is the per-pixel label map (255 = nothing or ignored).
    """
    k = adjust_intrinsic(SCANNET_INTRINSIC, SCANNET_IMAGE_SIZE, size) if intrinsic is None \
        else np.asarray(intrinsic, dtype=np.float64)
    poses = indoor_trajectory(room, num_frames, seed)
    views = render_views(scene, poses, k, size)
    frames = [Frame(scene_id=scene.scene_id, frame_id=str(i), rgb=view.rgb, intrinsic=k.copy(), pose=pose,
                    depth=view.depth) for i, (pose, view) in enumerate(zip(poses, views))]
    return frames, views


def _look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world pose at `position` looking at `target`, world z up (no roll)."""
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], 1)
    pose[:3, 3] = position
    return pose


# --- room layout -----------------------------------------------------------------------------------------------
# A template is built in a local frame: s along its wall (or its front), d into the room (away from its back),
# z up. Parts: (class name, (s0, s1, d0, d1, z0, z1), hidden local faces among "bottom" / "back").

@dataclass(frozen=True)
class _Template:
    kind: str  # "mounted" (on a wall), "backed" (stands against a wall), "free" (anywhere, any orientation)
    parts: tuple[tuple[str, tuple[float, ...], tuple[str, ...]], ...]
    clearance: float = 0.0  # free floor kept in front (a door must open)

    @property
    def extent(self) -> np.ndarray:
        boxes = np.array([box for _, box, _ in self.parts])
        return np.array([boxes[:, 0].min(), boxes[:, 1].max(), boxes[:, 2].min(), boxes[:, 3].max(),
                         boxes[:, 4].min(), boxes[:, 5].max()])


def _wall_items(rng: np.random.Generator, room_height: float) -> list[_Template]:
    u = rng.uniform
    door_height = min(u(2.0, 2.1), room_height - 0.2)
    items = [_Template("mounted", (("door", (0, u(0.8, 0.95), 0, 0.04, 0, door_height), ("bottom", "back")),),
                       clearance=1.0)]
    for _ in range(rng.integers(1, 3)):
        z0 = u(0.8, 1.0)
        items.append(_Template("mounted", (("window", (0, u(0.9, 1.4), 0, 0.03, z0, z0 + u(0.9, 1.2)), ("back",)),)))
    for _ in range(rng.integers(1, 3)):
        z0 = u(1.2, 1.5)
        items.append(_Template("mounted", (("picture", (0, u(0.4, 0.8), 0, 0.02, z0, z0 + u(0.3, 0.6)), ("back",)),)))
    if u() < 0.6:
        items.append(_Template("mounted", (("curtain", (0, u(0.5, 0.9), 0, 0.06, 0.1, min(2.3, room_height - 0.1)),
                                            ("back",)),)))
    return items


def _floor_items(rng: np.random.Generator) -> list[_Template]:
    u = rng.uniform
    makers = {
        "bed": lambda: (("bed", (0, u(1.4, 1.8), 0.06, u(1.9, 2.1), 0, u(0.45, 0.55)), ("bottom",)),
                        ("bed", (0, u(1.4, 1.8), 0, 0.06, 0, u(0.9, 1.1)), ("bottom", "back"))),
        "sofa": lambda: _sofa(u(1.6, 2.2), u(0.8, 0.95)),
        "cabinet": lambda: (("cabinet", (0, u(0.6, 1.0), 0, u(0.4, 0.6), 0, u(0.8, 1.0)), ("bottom", "back")),),
        "desk": lambda: _desk(u(1.0, 1.4), u(0.55, 0.7), u(0.72, 0.76)),
        "bookshelf": lambda: (("bookshelf", (0, u(0.8, 1.0), 0, u(0.3, 0.4), 0, u(1.6, 1.9)), ("bottom", "back")),),
        "toilet": lambda: (("toilet", (0, 0.4, 0.2, u(0.65, 0.75), 0, 0.4), ("bottom",)),
                           ("toilet", (0, 0.4, 0, 0.2, 0, u(0.75, 0.85)), ("bottom", "back"))),
        "sink": lambda: (("sink", (0, u(0.5, 0.6), 0, 0.45, 0.7, 0.88), ("back",)),
                         ("sink", (0.2, 0.32, 0.05, 0.2, 0, 0.7), ("bottom", "back"))),
        "bathtub": lambda: _bathtub(u(1.5, 1.7), u(0.7, 0.8), with_curtain=u() < 0.7),
        "refrigerator": lambda: (("refrigerator", (0, u(0.6, 0.8), 0, u(0.6, 0.75), 0, u(1.7, 1.9)),
                                  ("bottom", "back")),),
        "counter": lambda: (("counter", (0, u(1.4, 2.2), 0, u(0.55, 0.65), 0, u(0.88, 0.92)), ("bottom", "back")),),
        "table": lambda: _table(u(1.0, 1.5), u(0.7, 0.9), u(0.72, 0.76)),
        "chair": lambda: _chair(u(0.42, 0.5)),
        "other": lambda: (("other", (0, u(0.4, 1.0), 0, u(0.4, 0.8), 0, u(0.3, 1.0)), ("bottom",)),),
    }
    free = {"table", "chair", "other"}
    chosen = rng.choice(list(makers), size=int(rng.integers(6, 10)), replace=False)
    items = []
    for name in chosen:
        for _ in range(int(rng.integers(2, 5)) if name == "chair" else 1):
            items.append(_Template("free" if name in free else "backed", makers[name]()))
    return items


def _sofa(width, depth):
    return (("sofa", (0, width, 0, depth, 0, 0.42), ("bottom",)),
            ("sofa", (0, width, 0, 0.2, 0.42, 0.85), ("back",)),
            ("sofa", (0, 0.2, 0.2, depth, 0.42, 0.62), ()),
            ("sofa", (width - 0.2, width, 0.2, depth, 0.42, 0.62), ()))


def _desk(width, depth, height):
    return (("desk", (0, width, 0, depth, height - 0.04, height), ("back",)),
            ("desk", (0, 0.04, 0, depth, 0, height - 0.04), ("bottom", "back")),
            ("desk", (width - 0.04, width, 0, depth, 0, height - 0.04), ("bottom", "back")))


def _bathtub(length, depth, with_curtain: bool):
    parts = (("bathtub", (0, length, 0, depth, 0, 0.55), ("bottom", "back")),)
    if with_curtain:
        parts += (("shower curtain", (0, length, depth - 0.03, depth - 0.01, 0.7, 2.0), ()),)
    return parts


def _table(width, depth, height):
    leg = 0.05
    legs = tuple(("table", (s, s + leg, d, d + leg, 0, height - 0.04), ("bottom",))
                 for s in (0.05, width - 0.05 - leg) for d in (0.05, depth - 0.05 - leg))
    return (("table", (0, width, 0, depth, height - 0.04, height), ()),) + legs


def _chair(width):
    leg, seat = 0.04, 0.45
    legs = tuple(("chair", (s, s + leg, d, d + leg, 0, seat - 0.04), ("bottom",))
                 for s in (0, width - leg) for d in (0, width - leg))
    return (("chair", (0, width, 0, width, seat - 0.04, seat), ()),
            ("chair", (0, width, 0, 0.04, seat, seat + 0.45), ())) + legs


def _to_world(local_box, origin: np.ndarray, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounds of a local (s0, s1, d0, d1, z0, z1) box placed at origin (x, y) with the local
    s axis turned by orientation x 90 degrees (orientation k: s -> (+x, +y, -x, -y)[k], d -> s turned +90)."""
    s0, s1, d0, d1, z0, z1 = local_box
    along = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)][orientation], dtype=np.float64)
    inward = np.array([-along[1], along[0]])
    corners = np.array([origin + s * along + d * inward for s in (s0, s1) for d in (d0, d1)])
    return np.append(corners.min(0), z0), np.append(corners.max(0), z1)


class _Layout:
    """Places templates without overlap: wall items and backed furniture along the walls, free furniture
    anywhere; every placed box (and a door's clearance) is an obstacle for the next."""

    def __init__(self, size: tuple[float, float, float]) -> None:
        self.size = size
        self.objects: list[PlacedObject] = []
        self._obstacles: list[tuple[np.ndarray, np.ndarray]] = []

    def place(self, template: _Template, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
        s0, s1, d0, d1, z0, z1 = template.extent
        sx, sy, sz = self.size
        for _ in range(_PLACEMENT_TRIES):
            if template.kind == "free":
                orientation = int(rng.integers(4))
                origin = rng.uniform([0.3, 0.3], [sx - 0.3, sy - 0.3])
            else:
                orientation = int(rng.integers(4))  # which wall: y=0, x=sx, y=sy, x=0 (objects face the room)
                length = (sx, sy)[orientation % 2]
                if length - (s1 - s0) < 0.2:
                    continue
                along = rng.uniform(0.1, length - (s1 - s0) - 0.1)
                origin = np.array([(along, 0.0), (sx, along), (sx - along, sy), (0.0, sy - along)][orientation])
            lo, hi = _to_world((s0, s1, d0, d1 + template.clearance, z0, z1), origin, orientation)
            inside = np.all(lo[:2] >= -1e-9) and hi[0] <= sx + 1e-9 and hi[1] <= sy + 1e-9 and hi[2] < sz
            if inside and not any(np.all(lo < o_hi + _PLACEMENT_GAP) and np.all(hi > o_lo - _PLACEMENT_GAP)
                                  for o_lo, o_hi in self._obstacles):
                self._obstacles.append((lo, hi))
                return origin, orientation
        return None
