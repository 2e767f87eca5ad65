"""The frame index, the contract between `prepare` and `extract`: one row per posed image, and how a row becomes a
`Frame`. Also the frame file codecs every layout shares (JPEG/PNG colour, uint16 PNG depth, matrix text files).

A row: scene, frame (ids); color_uri; depth_uri and depth_scale (raw units per metre) or None for no depth;
intrinsic (9 float64, row-major 3x3 K for the stored image size); pose (16 float64, row-major 4x4 camera-to-world,
OpenCV axes); width, height (the stored image size). URIs are fsspec URLs read with the caller's options.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from sas_ray.datasets.rawfiles import RawTree, read_url
from sas_ray.errors import InputError
from sas_ray.scene import Frame

FRAME_INDEX_SCHEMA = pa.schema([
    pa.field("scene", pa.string(), nullable=False),
    pa.field("frame", pa.string(), nullable=False),
    pa.field("color_uri", pa.string(), nullable=False),
    pa.field("depth_uri", pa.string()),
    pa.field("depth_scale", pa.float64()),
    pa.field("intrinsic", pa.list_(pa.float64(), 9), nullable=False),
    pa.field("pose", pa.list_(pa.float64(), 16), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
])
_KEYS = set(FRAME_INDEX_SCHEMA.names)


def frame_unit(scene: str, frame: str) -> str:
    """How errors name one frame: '<scene> frame <frame>'."""
    return f"{scene} frame {frame}"


def frame_row(scene: str, frame: str, color_uri: str, intrinsic: np.ndarray, pose: np.ndarray, width: int,
              height: int, depth_uri: str | None = None, depth_scale: float | None = None) -> dict:
    """A frame index row from numpy K [3,3] and pose [4,4]."""
    return {"scene": scene, "frame": frame, "color_uri": color_uri, "depth_uri": depth_uri,
            "depth_scale": None if depth_scale is None else float(depth_scale),
            "intrinsic": np.asarray(intrinsic, np.float64).reshape(9).tolist(),
            "pose": np.asarray(pose, np.float64).reshape(16).tolist(), "width": int(width), "height": int(height)}


def numbered_sequence_rows(tree: RawTree, scene_id: str, folder: str, intrinsics: str, depth_scale: float,
                           frame_skip: int, suffixes: tuple[str, ...] = (".jpg",)) -> list[dict]:
    """Rows of an RGB-D sequence stored as {folder}/color/<n>{suffix}, {folder}/depth/<n>.png and
    {folder}/pose/<n>.txt (4x4 camera-to-world), one K in the file `intrinsics`, in frame-number order, keeping
    numbers divisible by `frame_skip` (so 20 on a raw every-frame export and 1 or 20 on OpenScene's every-20th
    export give the same frames). Frames whose pose is not finite (lost tracking, '-inf') stay in the index:
    `extract` leaves them out and counts them in its summary (OpenScene's projection maps them nowhere)."""
    unit = f"scene {scene_id}"
    names = {n.rsplit(".", 1)[0]: n for n in tree.list(f"{folder}/color") if n.endswith(suffixes)}
    if not names:
        raise InputError(f"{unit}: no colour images in {tree.url(folder, 'color')}")
    bad = sorted(n for n in names if not n.isdigit())
    if bad:
        raise InputError(f"{unit}: {tree.url(folder, 'color', names[bad[0]])} is not named <frame number>"
                         f"{'/'.join(suffixes)}")
    frames = sorted((n for n in names if int(n) % frame_skip == 0), key=int)
    if not frames:
        return []
    intrinsic = decode_matrix(tree.read(intrinsics, unit), (3, 3), unit, tree.url(intrinsics))
    pose_rels = [f"{folder}/pose/{f}.txt" for f in frames]
    poses = [decode_matrix(data, (4, 4), frame_unit(scene_id, f), tree.url(rel))
             for f, rel, data in zip(frames, pose_rels, tree.read_many(pose_rels, unit))]
    first = f"{folder}/color/{names[frames[0]]}"
    width, height = image_size(tree.read(first, unit), unit, tree.url(first))
    return [frame_row(scene_id, f, tree.url(folder, "color", names[f]), intrinsic, pose, width, height,
                      depth_uri=tree.url(folder, "depth", f"{f}.png"), depth_scale=depth_scale)
            for f, pose in zip(frames, poses)]


def _check_row(row: dict) -> str:
    if not isinstance(row, dict) or set(row) != _KEYS:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise InputError(f"frame index row must have keys {sorted(_KEYS)}, got {got}")
    unit = frame_unit(row["scene"], row["frame"])
    if len(row["intrinsic"]) != 9 or len(row["pose"]) != 16:
        raise InputError(f"{unit} ({row['color_uri']}): intrinsic needs 9 values and pose 16, "
                         f"got {len(row['intrinsic'])} and {len(row['pose'])}")
    scale = row["depth_scale"]
    if (row["depth_uri"] is None) != (scale is None) or (scale is not None and not scale > 0):
        raise InputError(f"{unit} ({row['color_uri']}): depth_uri and a positive depth_scale go together, "
                         f"got {row['depth_uri']!r} and {row['depth_scale']!r}")
    if row["width"] <= 0 or row["height"] <= 0:
        raise InputError(f"{unit} ({row['color_uri']}): image size must be positive, "
                         f"got {row['width']}x{row['height']}")
    return unit


def lost_pose_frames(rows: list[dict]) -> list[dict]:
    """The rows whose camera pose is not finite (lost tracking: ScanNet writes '-inf'); no point projects into them."""
    return [row for row in rows if not np.isfinite(row["pose"]).all()]


def frame_index_table(rows: list[dict]) -> pa.Table:
    """Rows as a pyarrow table with FRAME_INDEX_SCHEMA (each row checked first)."""
    for row in rows:
        _check_row(row)
    return pa.Table.from_pylist(rows, schema=FRAME_INDEX_SCHEMA)


def read_frame(row: dict, options: dict | None = None) -> Frame:
    """Read and decode one row's files into a Frame; any bad file or value raises InputError naming scene, frame and
    the file."""
    unit = _check_row(row)
    color_uri, depth_uri = row["color_uri"], row["depth_uri"]
    rgb = decode_color(read_url(color_uri, options, unit), unit, color_uri)
    if rgb.shape[:2] != (row["height"], row["width"]):
        raise InputError(f"{unit}: {color_uri} is {rgb.shape[1]}x{rgb.shape[0]} but the frame index says "
                         f"{row['width']}x{row['height']}")
    depth = None
    if depth_uri is not None:
        raw = decode_depth(read_url(depth_uri, options, unit), unit, depth_uri)
        if raw.shape != rgb.shape[:2]:
            raise InputError(f"{unit}: {depth_uri} is {raw.shape[1]}x{raw.shape[0]} but {color_uri} is "
                             f"{rgb.shape[1]}x{rgb.shape[0]} (expected equal sizes)")
        depth = (raw / np.float32(row["depth_scale"])).astype(np.float32)
    pose = np.array(row["pose"], np.float64).reshape(4, 4)
    if not np.isfinite(pose).all():
        raise InputError(f"{unit}: the pose of {color_uri} contains NaN or inf (invalid camera tracking)")
    try:
        return Frame(row["scene"], row["frame"], rgb, np.array(row["intrinsic"], np.float64).reshape(3, 3), pose,
                     depth)
    except InputError as err:
        raise InputError(f"{err} ({color_uri})") from None


def _open_image(data: bytes, unit: str, source: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{unit}: {source} is not a readable image ({err})") from None


def decode_color(data: bytes, unit: str, source: str) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [H,W,3] RGB."""
    image = _open_image(data, unit, source)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8).copy()


def decode_depth(data: bytes, unit: str, source: str) -> np.ndarray:
    """16-bit grayscale PNG bytes -> uint16 [H,W] raw depth units."""
    image = _open_image(data, unit, source)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise InputError(f"{unit}: {source} must be a 16-bit grayscale PNG, got image mode {image.mode}")
    raw = np.asarray(image)
    if raw.dtype != np.uint16 and (raw.min() < 0 or raw.max() > 65535):
        raise InputError(f"{unit}: {source} has depth values outside 0..65535")
    return raw.astype(np.uint16)


def image_size(data: bytes, unit: str, source: str) -> tuple[int, int]:
    """(width, height) from an image header, without decoding pixels."""
    try:
        return Image.open(io.BytesIO(data)).size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{unit}: {source} is not a readable image ({err})") from None


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4 chroma
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H,W] (grey) or [H,W,3] (RGB) as a PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_depth_png(depth: np.ndarray, depth_scale: float) -> bytes:
    """float32 metres [H,W] -> uint16 PNG of round(depth * depth_scale); depths beyond 65535 units become 0
    (no reading), as a sensor reports them."""
    raw = np.round(depth.astype(np.float64) * depth_scale)
    raw[raw > 65535] = 0
    buf = io.BytesIO()
    Image.fromarray(raw.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def encode_matrix(matrix: np.ndarray) -> bytes:
    """A matrix as whitespace-separated text rows (np.savetxt), exact for float64."""
    buf = io.BytesIO()
    np.savetxt(buf, np.asarray(matrix, np.float64))
    return buf.getvalue()


def decode_matrix(data: bytes, shape: tuple[int, int], unit: str, source: str) -> np.ndarray:
    """Whitespace-separated text -> float64 matrix of `shape` (a 4x4 file is accepted for a 3x3 K: top-left)."""
    try:
        values = np.loadtxt(io.BytesIO(data), dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise InputError(f"{unit}: {source} is not a numeric matrix ({err})") from None
    if values.shape == (4, 4) and shape == (3, 3):
        values = values[:3, :3]
    if values.shape != shape:
        raise InputError(f"{unit}: {source} holds a {values.shape[0]}x{values.shape[1]} matrix, expected "
                         f"{shape[0]}x{shape[1]}")
    return values
