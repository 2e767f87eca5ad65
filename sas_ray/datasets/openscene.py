"""Import/export of OpenScene/SAS files: `.pth` scenes and `.pt` fused features, loaded without running pickles.

`.pth` (SPEC §1.2) = torch.save'd tuple (coords float64 [N,3], colors float64 [N,3] = rgb/127.5 - 1 or the scalar 0
when there is no colour, labels [N] with 255 = ignore). `.pt` (SPEC §2.4) = {"feat": fp16 [M,C], "mask_full": bool
[N]}; legacy 3-key files {"feat", "mask", "mask_full"} (openscene#3) are converted. Both are pickles of numpy arrays
or tensors: they are loaded with torch.load(weights_only=True) allowing numpy's array-rebuilding globals and nothing
else, so a file that asks for any other callable is refused as bad input instead of being executed.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import torch

from sas_ray.datasets.rawfiles import read_url
from sas_ray.errors import InputError
from sas_ray.scene import IGNORE_LABEL, PointFeatures, Scene
from sas_ray.storage import Storage

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

# OpenScene's files were written under numpy 1.x (numpy.core...) or 2.x (numpy._core...): allow both spellings.
_NUMPY_GLOBALS = [
    np.ndarray, np.dtype,
    *((fn, f"{module}.multiarray.{fn.__name__}") for fn in (_multiarray._reconstruct, _multiarray.scalar)
      for module in ("numpy.core", "numpy._core")),
    *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")),
    bytes,  # an empty array's data pickles as `bytes()`: without it an empty scene reads as a refused file
]
_LEGACY_LABEL = -100  # OpenScene's loader maps -100 to 255
_SAFE_GLOBALS_LOCK = threading.Lock()  # safe_globals edits one process-wide list: one load at a time


def load_weights_only(data: bytes, source: str):
    """torch.load(weights_only=True) of `data`, allowing numeric numpy arrays; anything else -> InputError."""
    with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(_NUMPY_GLOBALS):
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any failure to unpickle untrusted bytes is bad input
            raise InputError(f"{source}: refused or unreadable torch file (weights-only load, numeric numpy "
                             f"arrays and tensors allowed): {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """The informative line of torch's long weights-only message (which global or type was refused)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for marker in ("GLOBAL", "but got", "Unsupported"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else type(err).__name__


def _as_numpy(value, what: str, source: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise InputError(f"{source}: {what} must be an array, got {type(value).__name__}")


def _is_scalar(value) -> bool:
    return np.isscalar(value) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0)


def decode_pth_scene(data: bytes, scene_id: str, source: str) -> Scene:
    """An OpenScene `.pth` as a Scene: points float32, colors uint8 (None for the scalar 0), labels int64."""
    obj = load_weights_only(data, source)
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise InputError(f"{source}: expected a tuple (coords, colors, labels), got {type(obj).__name__}"
                         + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""))
    coords = _as_numpy(obj[0], "coords", source)
    if coords.ndim != 2 or coords.shape[1] != 3 or coords.dtype.kind != "f":
        raise InputError(f"{source}: coords must be float [N,3], got {coords.dtype} {list(coords.shape)}")
    n = len(coords)
    colors = None
    if not _is_scalar(obj[1]):
        rgb = _as_numpy(obj[1], "colors", source)
        if rgb.shape != (n, 3) or rgb.dtype.kind != "f":
            raise InputError(f"{source}: colors must be float [{n},3] in [-1,1], got {rgb.dtype} {list(rgb.shape)}")
        colors = np.clip(np.round((rgb.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    labels = None
    if not _is_scalar(obj[2]):
        raw = _as_numpy(obj[2], "labels", source)
        if raw.shape != (n,) or raw.dtype.kind not in "fiu":
            raise InputError(f"{source}: labels must be numeric [{n}], got {raw.dtype} {list(raw.shape)}")
        raw = np.where(raw == _LEGACY_LABEL, IGNORE_LABEL, raw)
        if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
            raise InputError(f"{source}: labels must be whole numbers")
        if n and (raw.min() < 0 or raw.max() > IGNORE_LABEL):
            raise InputError(f"{source}: labels must lie in 0..{IGNORE_LABEL}, got {raw.min()}..{raw.max()}")
        labels = raw.astype(np.int64)
    try:
        return Scene(scene_id, coords.astype(np.float32), colors, labels)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def encode_pth_scene(scene: Scene) -> bytes:
    """The OpenScene `.pth` bytes of a scene (labels 255 everywhere when it has none; colors 0 when none)."""
    colors = 0 if scene.colors is None else scene.colors.astype(np.float64) / 127.5 - 1.0
    labels = np.full(scene.num_points, float(IGNORE_LABEL)) if scene.labels is None else scene.labels.astype(np.float64)
    buf = io.BytesIO()
    torch.save((scene.points.astype(np.float64), colors, labels), buf)
    return buf.getvalue()


def decode_pt_features(data: bytes, source: str) -> PointFeatures:
    """An OpenScene/SAS fused-feature `.pt` as PointFeatures (feat cast to fp16; legacy 3-key files converted)."""
    obj = load_weights_only(data, source)
    keys = sorted(obj) if isinstance(obj, dict) else None
    if keys not in (["feat", "mask_full"], ["feat", "mask", "mask_full"]):
        raise InputError(f"{source}: expected a dict with keys feat, mask_full (or legacy feat, mask, mask_full), "
                         f"got {keys if keys is not None else type(obj).__name__}")
    feat = torch.as_tensor(_as_numpy(obj["feat"], "feat", source))
    mask_full = torch.as_tensor(_as_numpy(obj["mask_full"], "mask_full", source))
    if feat.ndim == 3 and feat.shape[-1] == 1:  # some legacy files store [M, C, 1]
        feat = feat[..., 0]
    if mask_full.dtype != torch.bool or mask_full.ndim != 1 or feat.ndim != 2 or not feat.is_floating_point():
        raise InputError(f"{source}: need feat float [M,C] and mask_full bool [N], got feat {feat.dtype} "
                         f"{list(feat.shape)}, mask_full {mask_full.dtype} {list(mask_full.shape)}")
    if "mask" in obj:  # legacy: feat has a row per chunk point (mask_full), `mask` marks those with a feature
        chunk = mask_full.nonzero()[:, 0]
        if feat.shape[0] != len(chunk):
            raise InputError(f"{source}: legacy file has {feat.shape[0]} feature rows for {len(chunk)} chunk points")
        visible = torch.zeros(len(chunk), dtype=torch.bool)
        try:
            visible[torch.as_tensor(_as_numpy(obj["mask"], "mask", source))] = True
        except (IndexError, RuntimeError) as err:
            raise InputError(f"{source}: legacy `mask` does not index the {len(chunk)} feature rows ({err})") from None
        mask_full = torch.zeros_like(mask_full)
        mask_full[chunk[visible]] = True
        feat = feat[visible]
    if feat.shape[0] != int(mask_full.sum()):
        raise InputError(f"{source}: feat has {feat.shape[0]} rows but mask_full marks {int(mask_full.sum())} points")
    return PointFeatures(feat.to(torch.float16).contiguous(), mask_full.contiguous())


def encode_pt_features(features: PointFeatures) -> bytes:
    """OpenScene `.pt` bytes: {"feat": fp16 [M,C], "mask_full": bool [N]}."""
    buf = io.BytesIO()
    torch.save({"feat": features.feat.detach().to("cpu", torch.float16), "mask_full": features.mask_full.cpu()}, buf)
    return buf.getvalue()


def _write_url(url: str, data: bytes, options: dict | None) -> None:
    folder, _, name = url.rstrip("/").rpartition("/")
    Storage(folder, options).write_bytes(name, data)


def read_pth_scene(url: str, scene_id: str, options: dict | None = None) -> Scene:
    return decode_pth_scene(read_url(url, options, f"scene {scene_id}"), scene_id, url)


def write_pth_scene(url: str, scene: Scene, options: dict | None = None) -> None:
    _write_url(url, encode_pth_scene(scene), options)


def read_fused_features(url: str, options: dict | None = None) -> PointFeatures:
    return decode_pt_features(read_url(url, options, "fused features"), url)


def write_fused_features(url: str, features: PointFeatures, options: dict | None = None) -> None:
    """Export features as an OpenScene `.pt` at `url` (atomic write)."""
    _write_url(url, encode_pt_features(features), options)
