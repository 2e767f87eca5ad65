"""Pictures of results a person can open: coloured point clouds (PLY) and plots (PNG) of predictions, text queries,
teacher capabilities and confusion. Every function returns bytes; the caller writes them through storage.

Plots use matplotlib's Agg canvas on a private `Figure` (no pyplot state), so they are safe in worker threads.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sas_ray.datasets.ply import encode_ply
from sas_ray.errors import InputError
from sas_ray.evaluate import ConfusionMatrix

# The ScanNet benchmark colours of the 20 classes, in label order (OpenScene SCANNET_COLOR_MAP_20).
SCANNET_20_COLORS = (
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34), (140, 86, 75),
    (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189), (196, 156, 148), (23, 190, 207),
    (247, 182, 210), (219, 219, 141), (255, 127, 14), (158, 218, 229), (44, 160, 44), (112, 128, 144),
    (227, 119, 194), (82, 84, 163),
)
UNLABELLED_COLOR = (0, 0, 0)      # ignore (255), no feature (256), anything outside the palette
NO_VALUE_COLOR = (160, 160, 160)  # heatmap points without a value (no feature)
PNG_DPI = 100


def label_palette(num_classes: int) -> np.ndarray:
    """uint8 [K,3]: the ScanNet colours for the first 20 classes, then well-spread hues (golden-ratio steps)."""
    colors = list(SCANNET_20_COLORS[:num_classes])
    for i in range(len(colors), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3) / 2)
        colors.append((round(255 * r), round(255 * g), round(255 * b)))
    return np.asarray(colors, dtype=np.uint8).reshape(num_classes, 3)


def label_colors(labels, palette: np.ndarray) -> np.ndarray:
    """uint8 [N,3]: palette colour per label int [N]; labels outside the palette (255, 256) are black."""
    labels = _numpy(labels).astype(np.int64)
    colors = np.tile(np.asarray(UNLABELLED_COLOR, np.uint8), (len(labels), 1))
    known = (labels >= 0) & (labels < len(palette))
    colors[known] = palette[labels[known]]
    return colors


def label_ply(points: np.ndarray, labels, palette: np.ndarray | None = None) -> bytes:
    """Binary PLY of points [N,3] coloured by label (predictions or ground truth), with an int `label` property."""
    labels = _numpy(labels).astype(np.int64)
    _check_points(points, len(labels))
    if palette is None:
        palette = label_palette(int(labels[labels < 255].max(initial=-1)) + 1)
    return encode_ply(points, colors=label_colors(labels, palette), labels=labels)


def query_similarity(features: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """float32 [N]: cosine between each point's feature [N,C] and a free-form query embedding [C]; NaN where a
    point's feature is zero (no feature)."""
    if features.ndim != 2 or query.shape != (features.shape[1],):
        raise InputError(f"features {list(features.shape)} and query {list(query.shape)} must be [N,C] and [C]")
    feats = features.float()
    norms = feats.norm(dim=1)
    cosine = (feats @ query.float().to(feats.device)) / (norms * query.float().norm()).clamp_min(1e-12)
    return torch.where(norms > 0, cosine, torch.full_like(cosine, float("nan"))).cpu().numpy()


def heatmap_colors(values: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """uint8 [N,3]: values [N] min-max scaled over the finite ones through a matplotlib colormap; NaN is grey."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    colors = np.tile(np.asarray(NO_VALUE_COLOR, np.uint8), (len(values), 1))
    if finite.any():
        lo, hi = values[finite].min(), values[finite].max()
        scaled = (values[finite] - lo) / (hi - lo) if hi > lo else np.full(int(finite.sum()), 0.5)
        colors[finite] = np.round(255 * colormaps[colormap](scaled)[:, :3]).astype(np.uint8)
    return colors


def heatmap_ply(points: np.ndarray, values: np.ndarray, colormap: str = "turbo") -> bytes:
    """Binary PLY of points [N,3] coloured by a per-point value [N] (e.g. `query_similarity`)."""
    _check_points(points, len(values))
    return encode_ply(points, colors=heatmap_colors(values, colormap))


def heatmap_png(points: np.ndarray, values: np.ndarray, title: str, value_label: str = "cosine similarity",
                colormap: str = "turbo", size_inches: tuple[float, float] = (6.0, 5.0)) -> bytes:
    """PNG: top-down (x, y) scatter of the points coloured by value [N], higher points drawn over lower ones,
    with a colour bar; NaN points grey."""
    _check_points(points, len(values))
    order = np.argsort(points[:, 2], kind="stable")
    points, values = points[order], np.asarray(values, dtype=np.float64)[order]
    finite = np.isfinite(values)
    fig = _figure(size_inches)
    ax = fig.add_subplot()
    ax.scatter(points[~finite, 0], points[~finite, 1], s=1, c=[np.asarray(NO_VALUE_COLOR) / 255], linewidths=0,
               rasterized=True)
    dots = ax.scatter(points[finite, 0], points[finite, 1], s=1, c=values[finite], cmap=colormap, linewidths=0,
                      rasterized=True)
    if finite.any():
        fig.colorbar(dots, ax=ax, label=value_label)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title)
    return _png(fig)


def capability_png(capabilities, teacher_names: Sequence[str], class_names: Sequence[str],
                   size_inches: tuple[float, float] | None = None) -> bytes:
    """PNG: teachers x classes heatmap of capability values [T,K] with the numbers written in the cells."""
    caps = _numpy(capabilities).astype(np.float64)
    if caps.shape != (len(teacher_names), len(class_names)):
        raise InputError(f"capabilities are {list(caps.shape)} but there are {len(teacher_names)} teachers and "
                         f"{len(class_names)} classes")
    fig = _figure(size_inches or (max(6.0, 0.45 * len(class_names) + 2), 1.0 + 0.5 * len(teacher_names) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(caps, cmap="viridis", vmin=0.0, vmax=max(1.0, float(caps.max(initial=0))), aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(teacher_names)), teacher_names)
    if len(class_names) <= 40:
        for (t, k), value in np.ndenumerate(caps):
            ax.text(k, t, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=ax, label="capability")
    ax.set_title("teacher capability per class")
    return _png(fig)


def confusion_png(confusion: ConfusionMatrix, size_inches: tuple[float, float] | None = None) -> bytes:
    """PNG: the confusion matrix with each ground-truth row divided by its point count; the last column is
    'no feature'."""
    counts = confusion.counts.astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = confusion.num_classes
    side = max(5.0, 0.3 * k + 2)
    fig = _figure(size_inches or (side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = 8 if k <= 40 else 4
    ax.set_xticks(range(k + 1), [*confusion.class_names, "no feature"], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), confusion.class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion (row share)  mIoU {100 * confusion.mean_iou():.1f}  mAcc "
                 f"{100 * confusion.mean_accuracy():.1f}")
    fig.colorbar(image, ax=ax)
    return _png(fig)


def _figure(size_inches: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size_inches, dpi=PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _check_points(points: np.ndarray, count: int) -> None:
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must be a numpy array [N,3], got {getattr(points, 'shape', type(points))}")
    if len(points) != count:
        raise InputError(f"{len(points)} points but {count} per-point values")
