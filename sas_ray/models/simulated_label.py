"""A teacher of known skill on synthetic data, for controlled studies (docs/study.md): it reads each frame's ground
truth and errs on purpose, per class, with mistakes that are spatially coherent like a real model's.

It is given a prepared ScanNet-layout dataset (`prepared`, the output of `sas-ray prepare`; the synthetic renderer
writes label images beside the colour images). It recognises every image it encodes as one of that dataset's frames
(nearest 24x32 thumbnail, so a frame resized by the pipeline still matches), reads the frame's label image, depth and
pose, and paints its prediction:

1. Confusion: each region = (true class, world cell of `cell` metres) takes one class drawn from the teacher's
   confusion row of its class: the class itself with probability `skill[class]` (`default_skill` for the rest),
   else one of the class's confusers (`CONFUSERS`: table -> desk or counter, ...). With probability `persistence`
   a region keeps the same draw in every frame (a model that misreads an object misreads it from most views),
   otherwise it draws again per frame.
2. Boundary noise: each pixel takes, with probability `boundary_noise`, the prediction at a random offset of at most
   `boundary_radius` pixels, so predictions bleed across label edges and stay right inside regions.
3. Features: the unit text embedding of the predicted class's prompt ("a {class} in a scene", bare "other"), zero
   where the frame has no label (sky, classes outside the label set).
4. Unsure views: a whole frame with probability `dropout_frames`, and each `block`-pixel square with probability
   `dropout_regions`, keeps `dropout_keep` of its features, the rest a random unit direction.
5. Blur: a (2 blur + 1)-pixel box filter over the feature map.

Every random choice is a hash of (error_seed, scene, frame, region), so runs repeat exactly. An image that is no frame
of the dataset (a warm-up batch, a generated image) gets zero features: the teacher predicts nothing there. As for
`simulated-colour`, `weights` / `tiny`, `arch` and `seed` choose the CLIP text encoder whose space it paints in.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from sas_ray.errors import ConfigError, InputError
from sas_ray.labels import LABEL_SETS
from sas_ray.models.base import Resources, Teacher, build_text_encoder, frames_to_float, register_teacher
from sas_ray.scene import IGNORE_LABEL

# Classes a model mistakes each class for (ScanNet-20 + ceiling), the off-diagonal of every confusion row.
CONFUSERS: dict[str, tuple[str, ...]] = {
    "wall": ("door", "picture", "window"), "floor": ("wall", "other"), "cabinet": ("bookshelf", "counter"),
    "bed": ("sofa", "table"), "chair": ("sofa", "table"), "sofa": ("chair", "bed"), "table": ("desk", "counter"),
    "door": ("wall", "cabinet"), "window": ("picture", "curtain"), "bookshelf": ("cabinet", "refrigerator"),
    "picture": ("window", "wall"), "counter": ("table", "desk"), "desk": ("table", "counter"),
    "curtain": ("shower curtain", "window"), "refrigerator": ("cabinet", "door"),
    "shower curtain": ("curtain", "bathtub"), "toilet": ("sink", "bathtub"), "sink": ("toilet", "counter"),
    "bathtub": ("toilet", "sink"), "other": ("cabinet", "chair"), "ceiling": ("wall",),
}
THUMBNAIL = (24, 32)  # (rows, cols) of the thumbnails images are recognised by
_NYU40_LABEL_SETS = ("scannet20", "matterport21")  # the label sets ScanNet label images map onto


def _mix(h: np.ndarray, value) -> np.ndarray:
    """splitmix64 step of a uint64 hash with an integer value (array or scalar); wraps modulo 2^64."""
    with np.errstate(over="ignore"):
        z = h ^ (np.asarray(value).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(h: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from a uint64 hash."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _key(*parts) -> np.uint64:
    """A stable 64-bit hash of strings and ints (independent of Python's hash seed)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def confusion_matrix(labels: tuple[str, ...], skill: dict[str, float], default_skill: float,
                     confusers: dict[str, tuple[str, ...]]) -> np.ndarray:
    """float64 [K, K]: row k = the probabilities of predicting each class for true class k (rows sum to 1)."""
    matrix = np.zeros((len(labels), len(labels)))
    for k, name in enumerate(labels):
        p = skill.get(name, default_skill)
        wrong = [labels.index(c) for c in confusers.get(name, ()) if c in labels and c != name] \
            or [j for j in range(len(labels)) if j != k]
        matrix[k, k] = p
        matrix[k, wrong] += (1.0 - p) / len(wrong)
    return matrix


def thumbnail(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 24*32*3]: area-averaged thumbnails (0..255) that identify a frame."""
    rgb = images.permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(rgb, THUMBNAIL).flatten(1)


@register_teacher("simulated-label")
class SimulatedLabel(Teacher):
    resources = Resources(gpus=0.0, batch_size=16)

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, prepared: str | None = None, arch: str = "ViT-L-14",
                 seed: int = 0, label_set: str = "scannet20", skill: dict[str, float] | None = None,
                 default_skill: float = 0.8, confusers: dict[str, list[str]] | None = None, error_seed: int = 0,
                 cell: float = 0.5, persistence: float = 0.7, boundary_noise: float = 0.0,
                 boundary_radius: int = 3, blur: int = 0, dropout_frames: float = 0.0, dropout_regions: float = 0.0,
                 dropout_keep: float = 0.3, block: int = 32, match_tolerance: float = 4.0):
        super().__init__(device, dtype)
        if prepared is None:
            raise ConfigError("simulated-label: options.prepared must name a prepared ScanNet-layout dataset "
                              "(the output of `sas-ray prepare`) whose frames it labels")
        if label_set not in _NYU40_LABEL_SETS:
            raise ConfigError(f"simulated-label: label_set must be one of {_NYU40_LABEL_SETS} (ScanNet label images "
                              f"hold NYU40 ids), got {label_set!r}")
        labels = LABEL_SETS[label_set]
        skill = dict(skill or {})
        confusers = {k: tuple(v) for k, v in (confusers or CONFUSERS).items()}
        unknown = sorted((set(skill) | set(confusers) | {c for v in confusers.values() for c in v}) - set(labels)
                         - set(CONFUSERS))
        if unknown:
            raise ConfigError(f"simulated-label: skill/confusers name classes not in {label_set!r}: {unknown}")
        probabilities = {"default_skill": default_skill, "persistence": persistence, "boundary_noise": boundary_noise,
                         "dropout_frames": dropout_frames, "dropout_regions": dropout_regions,
                         "dropout_keep": dropout_keep, **{f"skill[{k}]": v for k, v in skill.items()}}
        bad = {k: v for k, v in probabilities.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ConfigError(f"simulated-label: these must lie in [0, 1]: {bad}")
        if cell <= 0 or block < 1 or blur < 0 or boundary_radius < 0 or match_tolerance <= 0:
            raise ConfigError(f"simulated-label: needs cell > 0, block >= 1, blur >= 0, boundary_radius >= 0, "
                              f"match_tolerance > 0; got {cell}, {block}, {blur}, {boundary_radius}, {match_tolerance}")
        encoder = build_text_encoder("openclip-text", weights, tiny=tiny, device="cpu",
                                     storage_options=storage_options, arch=arch, seed=seed)
        self.dim, self.text_space = encoder.dim, encoder.text_space
        self.labels, self.label_set = labels, label_set
        self.confusion = confusion_matrix(labels, skill, default_skill, confusers)
        self._cdf = np.cumsum(self.confusion, axis=1)
        self._cdf[:, -1] = 1.0
        # row K = the feature of unlabelled pixels (zero)
        self._palette = torch.cat([encoder.encode_labels(labels), torch.zeros(1, self.dim)]).to(self.device)
        self.error_seed, self.cell, self.persistence = error_seed, cell, persistence
        self.boundary_noise, self.boundary_radius, self.blur = boundary_noise, boundary_radius, blur
        self.dropout_frames, self.dropout_regions, self.dropout_keep = dropout_frames, dropout_regions, dropout_keep
        self.block, self.match_tolerance = block, match_tolerance
        self.storage_options = storage_options
        self._rows, self._thumbnails = self._frame_index(prepared)

    def _frame_index(self, prepared: str) -> tuple[list[dict], torch.Tensor]:
        """The prepared dataset's frame-index rows and a thumbnail of each colour image."""
        from sas_ray.datasets.frames import decode_color
        from sas_ray.datasets.rawfiles import read_url
        from sas_ray.prepared import read_frame_index
        from sas_ray.storage import Storage

        rows = read_frame_index(Storage(prepared, self.storage_options)).to_pylist()
        if not rows:
            raise InputError(f"simulated-label: {prepared} has no frames")
        thumbs = []
        for row in rows:
            unit = f"{row['scene']} frame {row['frame']}"
            rgb = decode_color(read_url(row["color_uri"], self.storage_options, unit), unit, row["color_uri"])
            thumbs.append(thumbnail(torch.from_numpy(rgb)[None])[0])
        return rows, torch.stack(thumbs)

    def match(self, images: torch.Tensor) -> list[dict | None]:
        """The frame-index row of each uint8 [B, H, W, 3] image, None for an image that is no frame of the dataset."""
        thumbs = thumbnail(images.cpu())
        rms = torch.cdist(thumbs, self._thumbnails) / thumbs.shape[1] ** 0.5
        best = rms.min(dim=1)
        return [self._rows[int(i)] if float(d) <= self.match_tolerance else None
                for d, i in zip(best.values, best.indices)]

    def class_map(self, row: dict) -> np.ndarray:
        """int64 [H, W] at the frame's stored size: the predicted class per pixel (255 = no label)."""
        from sas_ray.datasets.frames import read_frame
        from sas_ray.datasets.rawfiles import read_url
        from sas_ray.datasets.scannet import decode_label_png, label_uri

        frame = read_frame(row, self.storage_options)
        unit = f"{row['scene']} frame {row['frame']}"
        uri = label_uri(row["color_uri"])
        truth = decode_label_png(read_url(uri, self.storage_options, unit), self.label_set, unit, uri)
        if frame.depth is None or truth.shape != frame.depth.shape:
            raise InputError(f"{unit}: simulated-label needs depth and a label image of the frame's size ({uri})")
        return self.predict(truth, frame.depth, frame.intrinsic, frame.pose, row["scene"], row["frame"])

    def predict(self, truth: np.ndarray, depth: np.ndarray, intrinsic: np.ndarray, pose: np.ndarray, scene: str,
                frame: str) -> np.ndarray:
        """Steps 1-2 of the module docstring: true labels int [H, W] (255 = none), depth float [H, W] metres, K, pose
        (camera-to-world) -> int64 [H, W] predicted classes (255 where the truth has none)."""
        height, width = truth.shape
        v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        camera = np.stack([(u - intrinsic[0, 2]) / intrinsic[0, 0] * depth,
                           (v - intrinsic[1, 2]) / intrinsic[1, 1] * depth, depth], -1)
        world = camera @ pose[:3, :3].T + pose[:3, 3]
        cells = np.floor(world / self.cell).astype(np.int64)
        labelled = truth != IGNORE_LABEL
        region = _key("region", self.error_seed, scene)
        for value in (truth, cells[..., 0], cells[..., 1], cells[..., 2]):
            region = _mix(region, value)
        in_frame = _mix(region, _key("frame", frame))
        persistent = _uniform(_mix(in_frame, 1)) < self.persistence
        draw = np.where(persistent, _uniform(_mix(region, 2)), _uniform(_mix(in_frame, 3)))
        classes = np.where(labelled, truth, 0)
        predicted = (draw[..., None] >= self._cdf[classes]).sum(-1)
        predicted = np.where(labelled, predicted, IGNORE_LABEL)
        if self.boundary_noise > 0 and self.boundary_radius > 0:
            rng = np.random.default_rng([int(_key("boundary", self.error_seed, scene, frame))])
            moved = rng.random((height, width)) < self.boundary_noise
            dv, du = (rng.integers(-self.boundary_radius, self.boundary_radius + 1, (height, width)) for _ in "vu")
            source = predicted[np.clip(v + dv, 0, height - 1), np.clip(u + du, 0, width - 1)]
            predicted = np.where(moved, source, predicted)
        return predicted.astype(np.int64)

    def paint(self, predicted: np.ndarray, size: tuple[int, int], scene: str, frame: str) -> torch.Tensor:
        """Steps 3-5: a class map (any size) -> float32 features [H, W, dim] at `size` (H, W)."""
        height, width = size
        rows = ((np.arange(height) + 0.5) * predicted.shape[0] / height).astype(np.int64)  # nearest, as PIL
        cols = ((np.arange(width) + 0.5) * predicted.shape[1] / width).astype(np.int64)
        classes = predicted[rows[:, None], cols[None, :]]
        index = torch.from_numpy(np.where(classes == IGNORE_LABEL, len(self.labels), classes)).to(self.device)
        features = self._palette[index]                                                       # [H, W, dim]
        frame_key = _key("dropout", self.error_seed, scene, frame)
        block_v, block_u = np.meshgrid(np.arange(height) // self.block, np.arange(width) // self.block, indexing="ij")
        block = block_v * (-(-width // self.block)) + block_u
        unsure = _uniform(_mix(frame_key, block)) < self.dropout_regions
        if _uniform(_mix(frame_key, -1)) < self.dropout_frames:
            unsure[:] = True
        if unsure.any():
            generator = torch.Generator().manual_seed(int(frame_key) & 0x7FFFFFFFFFFFFFFF)
            directions = F.normalize(torch.randn(int(block.max()) + 1, self.dim, generator=generator), dim=-1)
            mask = torch.from_numpy(unsure & (classes != IGNORE_LABEL)).to(self.device)
            noise = directions.to(self.device)[torch.from_numpy(block).to(self.device)]
            noisy = self.dropout_keep * features + (1 - self.dropout_keep) * noise
            features = torch.where(mask[..., None], noisy, features)
        if self.blur:
            features = F.avg_pool2d(features.permute(2, 0, 1)[None], 2 * self.blur + 1, stride=1, padding=self.blur,
                                    count_include_pad=False)[0].permute(1, 2, 0)
        return features

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        frames_to_float(images[:0], self.device)  # validates uint8 [B, H, W, 3]
        batch, height, width = images.shape[:3]
        out = torch.zeros(batch, height, width, self.dim, device=self.device, dtype=self.dtype)
        for b, row in enumerate(self.match(images)):
            if row is not None:
                predicted = self.class_map(row)
                out[b] = self.paint(predicted, (height, width), row["scene"], row["frame"]).to(self.dtype)
        return out
