"""nuScenes from the raw devkit layout to our scenes: the converter OpenScene never released (SPEC §1.2, §7).

Reads `<root>/<version>/{scene,sample,sample_data,calibrated_sensor,ego_pose,sensor,lidarseg,category}.json`, the
keyframe lidar sweeps `samples/LIDAR_TOP/*.pcd.bin` (float32 x,y,z,intensity,ring), the lidarseg labels
`lidarseg/<version>/<token>_lidarseg.bin` (uint8, 32 raw classes -> the 16 of OpenScene's remap, others 255) and the
keyframe images `samples/CAM_*/*.jpg`. Every path comes from the tables' `filename` fields.

What a scene is here:
- one keyframe sample (token = scene id); its points are the keyframe LIDAR_TOP sweep only. OpenScene's files
  also carry the unlabelled points of the other sweeps of the 0.5 s window (label 255, never evaluated); those
  sweeps are not read, so every point here is a labelled-sweep point.
- coordinates are the ego frame at the lidar timestamp ("scene frame"): metres, small numbers (float32 keeps mm
  precision, unlike the global frame's kilometre offsets), z up.
- frames are the sample's keyframe camera images, at their stored size (1600x900) with their own K and the pose
  camera -> scene = inverse(ego pose at the lidar time) @ ego pose at the camera time @ camera mounting. Resizing
  to the 800x450 of SPEC §1.3 (cv2-style bilinear) and rescaling K (§2.3) happens at decode
  (sas_ray.geometry.resize; the size is the prepared dataset's `image_size`), not in the index.
- no depth, no colours.
`split` is the version folder (e.g. "v1.0-trainval", "v1.0-mini"); restrict to nuScenes scenes by name with
`scene_names` (the official train/val lists are nuscenes-devkit's `nuscenes.utils.splits.create_splits_scenes()`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sas_ray.datasets.frames import encode_jpeg, encode_png, frame_row
from sas_ray.datasets.rawfiles import RawTree, cached_table
from sas_ray.errors import ConfigError, InputError
from sas_ray.ids import check_id
from sas_ray.labels import NUSCENES_16
from sas_ray.scene import IGNORE_LABEL, Frame, Scene
from sas_ray.storage import Storage

LIDAR = "LIDAR_TOP"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR_FLOATS = 5  # x, y, z, intensity, ring
MAP_MASK = "maps/synthetic.png"  # the written datasets' semantic map: empty

# lidarseg class index -> name (index = position), and OpenScene's 32 -> 16 remap (preprocess_3d_nuscenes.py) by name.
RAW_CLASSES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck", "flat.driveable_surface",
    "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade", "static.other", "static.vegetation",
    "vehicle.ego",
)
_REMAP = {
    "human.pedestrian.adult": "person", "human.pedestrian.child": "person",
    "human.pedestrian.construction_worker": "person", "human.pedestrian.police_officer": "person",
    "movable_object.barrier": "barrier", "movable_object.trafficcone": "traffic cone", "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus", "vehicle.car": "car",
    "vehicle.construction": "construction vehicle", "vehicle.motorcycle": "motorcycle", "vehicle.trailer": "trailer",
    "vehicle.truck": "truck", "flat.driveable_surface": "drivable surface", "flat.other": "other flat",
    "flat.sidewalk": "sidewalk", "flat.terrain": "terrain", "static.manmade": "manmade",
    "static.vegetation": "vegetation",
}
RAW_TO_LABEL = np.array([NUSCENES_16.index(_REMAP[n]) if n in _REMAP else IGNORE_LABEL for n in RAW_CLASSES],
                        dtype=np.int64)


# -- rigid transforms from the tables (translation [3] + quaternion w,x,y,z) --------------------------------------
def quaternion_to_matrix(q) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z), Hamilton convention (pyquaternion's)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(rotation: np.ndarray) -> list[float]:
    """(w, x, y, z) with w >= 0 of a proper rotation matrix (largest-pivot branch for numerical stability)."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = np.asarray(rotation, np.float64)
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2 * np.sqrt(1 + trace)
        q = np.array([s / 4, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s])
    elif m00 > m11 and m00 > m22:
        s = 2 * np.sqrt(1 + m00 - m11 - m22)
        q = np.array([(m21 - m12) / s, s / 4, (m01 + m10) / s, (m02 + m20) / s])
    elif m11 > m22:
        s = 2 * np.sqrt(1 + m11 - m00 - m22)
        q = np.array([(m02 - m20) / s, (m01 + m10) / s, s / 4, (m12 + m21) / s])
    else:
        s = 2 * np.sqrt(1 + m22 - m00 - m11)
        q = np.array([(m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, s / 4])
    return (q if q[0] >= 0 else -q).tolist()


def _rigid(record: dict) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(record["rotation"])
    t[:3, 3] = record["translation"]
    return t


def _record(transform: np.ndarray, what: str) -> dict:
    r = transform[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise InputError(f"{what}: not a rigid transform (rotation must be orthonormal with det +1)")
    return {"translation": transform[:3, 3].tolist(), "rotation": matrix_to_quaternion(r)}


# -- the keyframe index ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyframeCamera:
    channel: str
    filename: str
    intrinsic: np.ndarray  # [3,3] at the stored size
    pose: np.ndarray  # [4,4] camera -> scene (ego frame at the lidar timestamp)
    width: int
    height: int


@dataclass(frozen=True)
class KeyframeSample:
    token: str
    scene_name: str
    timestamp: int
    lidar_filename: str
    lidar_to_scene: np.ndarray  # [4,4] the lidar mounting (lidar -> ego)
    lidarseg_filename: str | None
    cameras: tuple[KeyframeCamera, ...]


def _table(tree: RawTree, version: str, name: str, keep=None) -> list[dict]:
    """A devkit JSON table; `keep(record)` drops records while parsing (sample_data and ego_pose are ~10^6 rows)."""
    rel = f"{version}/{name}.json"
    hook = None if keep is None else (lambda record: record if keep(record) else None)
    try:
        rows = json.loads(tree.read(rel, f"nuScenes {version}"), object_hook=hook)
    except json.JSONDecodeError as err:
        raise InputError(f"nuScenes {version}: {tree.url(rel)} is not valid JSON ({err})") from None
    return [r for r in rows if r is not None]


def _check_categories(tree: RawTree, version: str) -> None:
    """lidarseg label values are category indices; refuse a taxonomy that differs from the remap's."""
    for cat in _table(tree, version, "category"):
        index = cat.get("index")
        if index is not None and (index >= len(RAW_CLASSES) or RAW_CLASSES[index] != cat["name"]):
            raise InputError(f"nuScenes {version}: category index {index} is {cat['name']!r}, the lidarseg remap "
                             f"expects {RAW_CLASSES[index] if index < len(RAW_CLASSES) else 'nothing'!r}")


def _keyframe_samples(data, channel, calib, ego, scene_name, samples, lidarseg) -> list[KeyframeSample]:
    """Join the tables: per sample, the LIDAR_TOP keyframe and the camera keyframes with their poses."""
    by_sample: dict[str, dict[str, dict]] = defaultdict(dict)
    for d in data:
        by_sample[d["sample_token"]][channel[calib[d["calibrated_sensor_token"]]["sensor_token"]]] = d
    out = []
    for token, sensors in by_sample.items():
        lidar = sensors.get(LIDAR)
        if lidar is None or token not in samples:
            continue
        scene_from_world = np.linalg.inv(ego[lidar["ego_pose_token"]])
        cameras = []
        for ch in sorted(c for c in sensors if c in CAMERAS):
            d = sensors[ch]
            cs = calib[d["calibrated_sensor_token"]]
            pose = scene_from_world @ ego[d["ego_pose_token"]] @ _rigid(cs)
            cameras.append(KeyframeCamera(ch, d["filename"], np.array(cs["camera_intrinsic"], np.float64), pose,
                                          int(d["width"]), int(d["height"])))
        sample = samples[token]
        out.append(KeyframeSample(token, scene_name.get(sample["scene_token"], ""), int(sample["timestamp"]),
                                  lidar["filename"], _rigid(calib[lidar["calibrated_sensor_token"]]),
                                  lidarseg.get(lidar["token"]), tuple(cameras)))
    return out


def load_keyframes(root: str, version: str, options: dict | None = None) -> dict[str, KeyframeSample]:
    """Every keyframe sample with a LIDAR_TOP sweep, by token, in (scene name, timestamp) order."""
    tree = RawTree(root, options)
    check_id(version, "nuScenes version")
    channel = {s["token"]: s["channel"] for s in _table(tree, version, "sensor")}
    calib = {c["token"]: c for c in _table(tree, version, "calibrated_sensor")}
    data = _table(tree, version, "sample_data", keep=lambda r: r.get("is_key_frame", True))
    wanted = {d["ego_pose_token"] for d in data}
    ego = {e["token"]: _rigid(e) for e in _table(tree, version, "ego_pose", keep=lambda r: r.get("token") in wanted)}
    scene_name = {s["token"]: s["name"] for s in _table(tree, version, "scene")}
    samples = {s["token"]: s for s in _table(tree, version, "sample")}
    lidarseg = {}
    if tree.exists(f"{version}/lidarseg.json"):
        _check_categories(tree, version)
        lidarseg = {r["sample_data_token"]: r["filename"] for r in _table(tree, version, "lidarseg")}
    try:
        out = _keyframe_samples(data, channel, calib, ego, scene_name, samples, lidarseg)
    except KeyError as err:
        raise InputError(f"nuScenes {version} at {root}: a table refers to a missing record {err}") from None
    out.sort(key=lambda s: (s.scene_name, s.timestamp))
    return {s.token: s for s in out}


def _keyframes(root: str, version: str, options: dict | None) -> dict[str, KeyframeSample]:
    return cached_table("nuscenes keyframes " + version, root, options,
                        lambda: load_keyframes(root, version, options))


def _sample(root: str, version: str, scene_id: str, options: dict | None) -> KeyframeSample:
    sample = _keyframes(root, version, options).get(scene_id)
    if sample is None:
        raise InputError(f"scene {scene_id}: no keyframe sample with a {LIDAR} sweep in nuScenes {version} at {root}")
    return sample


# -- the layout protocol -----------------------------------------------------------------------------------------
def list_scenes(root: str, split: str, options: dict | None = None, scene_names: list[str] | None = None) -> list[str]:
    """Keyframe sample tokens of version `split`, in (scene name, time) order, optionally only those scenes."""
    wanted = None if scene_names is None else set(scene_names)
    return [t for t, s in _keyframes(root, split, options).items() if wanted is None or s.scene_name in wanted]


def read_scene(root: str, split: str, scene_id: str, options: dict | None = None) -> Scene:
    """The keyframe lidar sweep in the scene frame, labels from lidarseg (None without lidarseg), no colours."""
    sample = _sample(root, split, scene_id, options)
    tree = RawTree(root, options)
    unit = f"scene {scene_id}"
    data = tree.read(sample.lidar_filename, unit)
    if len(data) % (4 * LIDAR_FLOATS):
        raise InputError(f"{unit}: {tree.url(sample.lidar_filename)} has {len(data)} bytes, not a multiple of "
                         f"{4 * LIDAR_FLOATS} (float32 x,y,z,intensity,ring per point)")
    lidar = np.frombuffer(data, "<f4").reshape(-1, LIDAR_FLOATS)[:, :3].astype(np.float64)
    points = lidar @ sample.lidar_to_scene[:3, :3].T + sample.lidar_to_scene[:3, 3]
    labels = None
    if sample.lidarseg_filename is not None:
        raw = np.frombuffer(tree.read(sample.lidarseg_filename, unit), np.uint8)
        source = tree.url(sample.lidarseg_filename)
        if len(raw) != len(points):
            raise InputError(f"{unit}: {source} has {len(raw)} labels for {len(points)} lidar points")
        if len(raw) and raw.max() >= len(RAW_CLASSES):
            raise InputError(f"{unit}: {source} has class {raw.max()}, lidarseg classes are 0..{len(RAW_CLASSES) - 1}")
        labels = RAW_TO_LABEL[raw]
    try:
        return Scene(scene_id, points.astype(np.float32), None, labels)
    except InputError as err:
        raise InputError(f"{err} ({tree.url(sample.lidar_filename)})") from None


def frame_rows(root: str, split: str, scene_id: str, options: dict | None = None, frame_skip: int = 1) -> list[dict]:
    """One row per keyframe camera image of the sample (channel = frame id), stored size and K, no depth. A scene
    is one sample, so there is no sequence to skip frames of: frame_skip must be 1."""
    if frame_skip != 1:
        raise ConfigError(f"nuScenes: frame_skip {frame_skip} does not apply (a scene is one keyframe sample)")
    sample = _sample(root, split, scene_id, options)
    tree = RawTree(root, options)
    return [frame_row(scene_id, cam.channel, tree.url(cam.filename), cam.intrinsic, cam.pose, cam.width, cam.height)
            for cam in sample.cameras]


# -- writer (synthetic data -> devkit layout) --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DevkitSample:
    """One keyframe for `write_nuscenes_devkit`, in a world frame: `scene` holds the lidar points (labels in
    NUSCENES_16 ids, 255 = unlabelled; the scene id becomes the sample token), `cameras` the images (frame id =
    channel, pose camera -> world at the camera's time). `ego_to_world` is the ego pose at the lidar time,
    `lidar_to_ego` the lidar mounting, `camera_ego_to_world` the ego pose at each camera's time (default: the lidar
    time's). All poses 4x4 rigid float64."""

    scene: Scene
    cameras: list[Frame]
    ego_to_world: np.ndarray
    lidar_to_ego: np.ndarray
    camera_ego_to_world: dict[str, np.ndarray] = field(default_factory=dict)
    scene_name: str = "scene-0001"
    timestamp_us: int = 1_533_151_603_547_590


def _token(*parts: str) -> str:
    return hashlib.md5("/".join(parts).encode()).hexdigest()


# Writing labels: each of the 16 labels as the first raw class that maps to it; unlabelled (255) as noise (0).
_LABEL_TO_RAW = np.zeros(IGNORE_LABEL + 1, np.uint8)
for _label in range(len(NUSCENES_16)):
    _LABEL_TO_RAW[_label] = np.flatnonzero(RAW_TO_LABEL == _label)[0]


class _DevkitTables:
    """The JSON tables of a devkit dataset being written, with deterministic tokens."""

    def __init__(self, channels: list[str]):
        self.rows: dict[str, list[dict]] = {n: [] for n in (
            "attribute", "visibility", "instance", "sample_annotation", "scene", "sample", "sample_data",
            "ego_pose", "calibrated_sensor", "lidarseg")}
        self.log_token = _token("log")
        self.rows["log"] = [{"token": self.log_token, "logfile": "synthetic", "vehicle": "synthetic",
                             "date_captured": "2018-08-01", "location": "synthetic"}]
        # nuscenes-devkit's NuScenes() needs every log on a map record whose mask image exists (an empty one here)
        self.rows["map"] = [{"token": _token("map"), "log_tokens": [self.log_token], "category": "semantic_prior",
                             "filename": MAP_MASK}]
        self.rows["sensor"] = [{"token": _token("sensor", ch), "channel": ch,
                                "modality": "lidar" if ch == LIDAR else "camera"} for ch in channels]
        self.rows["category"] = [{"token": _token("category", n), "name": n, "description": n, "index": i}
                                 for i, n in enumerate(RAW_CLASSES)]

    def add_scene(self, name: str, sample_tokens: list[str], timestamps: list[int]) -> None:
        scene_token = _token("scene", name)
        self.rows["scene"].append({"token": scene_token, "name": name, "description": "synthetic",
                                   "log_token": self.log_token, "nbr_samples": len(sample_tokens),
                                   "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1]})
        for i, (token, ts) in enumerate(zip(sample_tokens, timestamps)):
            self.rows["sample"].append({"token": token, "timestamp": ts, "scene_token": scene_token,
                                        "prev": sample_tokens[i - 1] if i else "",
                                        "next": sample_tokens[i + 1] if i + 1 < len(sample_tokens) else ""})

    def add_sample_data(self, sample_token: str, channel: str, timestamp: int, ego_to_world: np.ndarray,
                        sensor_to_ego: np.ndarray, filename: str, intrinsic: np.ndarray | None = None,
                        size: tuple[int, int] = (0, 0)) -> str:
        """One keyframe sensor reading with its ego pose and mounting; returns its token."""
        token, unit = _token(sample_token, channel), f"scene {sample_token} {channel}"
        self.rows["ego_pose"].append({"token": token + "e", "timestamp": timestamp,
                                      **_record(ego_to_world, f"{unit} ego pose")})
        self.rows["calibrated_sensor"].append({
            "token": token + "c", "sensor_token": _token("sensor", channel), **_record(sensor_to_ego, f"{unit} mount"),
            "camera_intrinsic": [] if intrinsic is None else intrinsic.tolist()})
        self.rows["sample_data"].append({
            "token": token, "sample_token": sample_token, "ego_pose_token": token + "e",
            "calibrated_sensor_token": token + "c", "timestamp": timestamp,
            "fileformat": "pcd" if channel == LIDAR else "jpg", "is_key_frame": True, "width": size[0],
            "height": size[1], "filename": filename, "prev": "", "next": ""})
        return token


def write_nuscenes_devkit(root: str, version: str, samples: list[DevkitSample], options: dict | None = None) -> None:
    """Write a small devkit-shaped dataset: the JSON tables, keyframe lidar sweeps (intensity and ring 0) with
    lidarseg labels, and keyframe camera JPEGs."""
    store = Storage(root, options)
    check_id(version, "nuScenes version")
    tables = _DevkitTables(sorted({LIDAR, *(f.frame_id for s in samples for f in s.cameras)}))
    by_scene: dict[str, list[DevkitSample]] = defaultdict(list)
    for sample in samples:
        by_scene[sample.scene_name].append(sample)
    for name, group in by_scene.items():
        tables.add_scene(name, [s.scene.scene_id for s in group], [s.timestamp_us for s in group])
    for sample in samples:
        _write_keyframe(store, version, sample, tables)
    store.write_bytes(MAP_MASK, encode_png(np.zeros((8, 8), np.uint8)))
    for name, rows in tables.rows.items():
        store.write_bytes(f"{version}/{name}.json", json.dumps(rows).encode())


def _write_keyframe(store: Storage, version: str, sample: DevkitSample, tables: _DevkitTables) -> None:
    sid, ts = sample.scene.scene_id, sample.timestamp_us
    world_to_lidar = np.linalg.inv(sample.ego_to_world @ sample.lidar_to_ego)
    sweep = np.zeros((sample.scene.num_points, LIDAR_FLOATS), "<f4")
    sweep[:, :3] = sample.scene.points.astype(np.float64) @ world_to_lidar[:3, :3].T + world_to_lidar[:3, 3]
    lidar_file = f"samples/{LIDAR}/{sid}__{LIDAR}__{ts}.pcd.bin"
    store.write_bytes(lidar_file, sweep.tobytes())
    lidar_token = tables.add_sample_data(sid, LIDAR, ts, sample.ego_to_world, sample.lidar_to_ego, lidar_file)
    if sample.scene.labels is not None:
        seg_file = f"lidarseg/{version}/{lidar_token}_lidarseg.bin"
        store.write_bytes(seg_file, _LABEL_TO_RAW[sample.scene.labels].tobytes())
        tables.rows["lidarseg"].append({"token": lidar_token, "sample_data_token": lidar_token,  # as the devkit's
                                        "filename": seg_file})
    for k, cam in enumerate(sample.cameras):
        ch = cam.frame_id
        if ch not in CAMERAS:
            raise InputError(f"scene {sid}: camera frame id {ch!r} is not a nuScenes channel {CAMERAS}")
        cam_ts = ts + 5_000 * (k + 1)
        ego_to_world = sample.camera_ego_to_world.get(ch, sample.ego_to_world)
        filename = f"samples/{ch}/{sid}__{ch}__{cam_ts}.jpg"
        store.write_bytes(filename, encode_jpeg(cam.rgb))
        tables.add_sample_data(sid, ch, cam_ts, ego_to_world, np.linalg.inv(ego_to_world) @ cam.pose, filename,
                               intrinsic=cam.intrinsic, size=(cam.rgb.shape[1], cam.rgb.shape[0]))
