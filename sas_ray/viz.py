"""Pictures of results a person can open: coloured point clouds (PLY) and plots (PNG) of predictions, text queries,
teacher capabilities and confusion. Every function returns bytes; the caller writes them through storage.

Plots use matplotlib's Agg canvas on a private `Figure` (no pyplot state), so they are safe in worker threads.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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
    """uint8 [N,3]: values [N] through a matplotlib colormap, scaled from the median to the maximum of the finite
    ones (the lower half all take the colormap's first colour: a query's matches stand out, not the bulk of
    middling similarities); NaN is grey."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    colors = np.tile(np.asarray(NO_VALUE_COLOR, np.uint8), (len(values), 1))
    if finite.any():
        lo, hi = np.median(values[finite]), values[finite].max()
        scaled = np.clip((values[finite] - lo) / (hi - lo), 0, 1) if hi > lo else np.full(int(finite.sum()), 0.5)
        colors[finite] = np.round(255 * colormaps[colormap](scaled)[:, :3]).astype(np.uint8)
    return colors


def heatmap_ply(points: np.ndarray, values: np.ndarray, colormap: str = "turbo") -> bytes:
    """Binary PLY of points [N,3] coloured by a per-point value [N] (e.g. `query_similarity`)."""
    _check_points(points, len(values))
    return encode_ply(points, colors=heatmap_colors(values, colormap))


@dataclass(frozen=True)
class Panel:
    """One image of a picture: uint8 [H, W, 3] and its title."""

    title: str
    image: np.ndarray


def panels_png(title: str, panels: Sequence[Panel], legend: Sequence[tuple[str, np.ndarray]] = (),
               colorbar: str | None = None, colormap: str = "turbo", panel_inches: float = 3.6,
               columns: int = 5) -> bytes:
    """PNG: the panels side by side (at most `columns` a row, each `panel_inches` wide at its aspect), below them a
    legend of (name, uint8 colour) entries and, with `colorbar`, a small low-to-high colour bar of that label."""
    rows = -(-len(panels) // columns)
    cols = min(columns, len(panels))
    aspect = max(p.image.shape[0] / p.image.shape[1] for p in panels)
    footer = 0.2 * -(-len(legend) // 6) + 0.35 if legend or colorbar else 0.0
    fig = _figure((panel_inches * cols, (panel_inches * aspect + 0.3) * rows + 0.4 + footer))
    fig.suptitle(title)
    grid = fig.add_gridspec(rows + (1 if footer else 0), cols,
                            height_ratios=[panel_inches * aspect + 0.3] * rows + ([footer] if footer else []))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(panel.image, interpolation="nearest")
        ax.set_title(panel.title, fontsize=9)
        ax.set_axis_off()
    if footer:
        split = grid[rows, :].subgridspec(1, 2, width_ratios=[3, 1] if colorbar and legend else [1, 1e-3])
        if legend:
            ax = fig.add_subplot(split[0])
            ax.set_axis_off()
            handles = [Patch(color=np.asarray(color) / 255, label=name) for name, color in legend]
            ax.legend(handles=handles, loc="center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
        if colorbar:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            ax = fig.add_subplot(split[1] if legend else split[0])
            ax.set_axis_off()
            cax = ax.inset_axes((0.05, 0.55, 0.9, 0.2))
            bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormap), cax=cax, orientation="horizontal",
                               ticks=[0, 1])
            bar.ax.set_xticklabels(["median", "highest"], fontsize=7)
            bar.set_label(colorbar, fontsize=7)
    return _png(fig)


@dataclass(frozen=True)
class PointLayers:
    """What a scene's pictures paint, per point: predicted and true labels, and each text query's similarity."""

    scene_id: str
    points: np.ndarray  # float [N, 3]
    predicted: np.ndarray  # int [N]
    truth: np.ndarray  # int [N]
    class_names: Sequence[str]
    queries: dict[str, np.ndarray]  # query text -> float [N] (NaN: no feature)

    def colored(self) -> list[tuple[str, np.ndarray]]:
        """(panel title, uint8 [N, 3] colours): prediction, ground truth, then one per query."""
        palette = label_palette(len(self.class_names))
        layers = [("prediction", label_colors(self.predicted, palette)),
                  ("ground truth", label_colors(self.truth, palette))]
        return layers + [(f'"{query}"', heatmap_colors(values)) for query, values in self.queries.items()]

    def legend(self, shown: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Legend entries of the classes predicted or labelled at the `shown` point indices, and the black of
        'ignore / no feature' when any shows."""
        palette = label_palette(len(self.class_names))
        present = np.union1d(self.predicted[shown], self.truth[shown])
        entries = [(self.class_names[k], palette[k]) for k in present if 0 <= k < len(self.class_names)]
        if (present >= len(self.class_names)).any() or (present < 0).any():
            entries.append(("ignored / no feature", np.asarray(UNLABELLED_COLOR, np.uint8)))
        return entries


def camera_view_png(layers: PointLayers, frame) -> bytes:
    """PNG: the frame's RGB beside the prediction, the ground truth and each query's similarity, painted into that
    camera's view (pixels showing no point keep a dimmed copy of the frame)."""
    from sas_ray.views import NO_POINT, camera_view, paint

    view = camera_view(layers.points, frame)
    dimmed = (0.35 * frame.rgb + 0.65 * 200).astype(np.uint8)
    panels = [Panel(f"frame {frame.frame_id}", frame.rgb)]
    panels += [Panel(title, paint(view, colors, dimmed)) for title, colors in layers.colored()]
    shown = np.unique(view[view != NO_POINT])
    return panels_png(f"{layers.scene_id}, camera of frame {frame.frame_id}", panels, layers.legend(shown),
                      colorbar="query similarity (each panel: its median to its highest)" if layers.queries else None)


def birdseye_png(layers: PointLayers) -> bytes:
    """PNG: the scene from above (a plan cut below the ceiling), prediction, ground truth and each query."""
    from sas_ray.views import NO_POINT, birdseye_view, paint

    view, cell = birdseye_view(layers.points)
    panels = [Panel(title, paint(view, colors, (255, 255, 255))) for title, colors in layers.colored()]
    shown = np.unique(view[view != NO_POINT])
    return panels_png(f"{layers.scene_id} from above ({cell * view.shape[1]:.1f} m across)", panels,
                      layers.legend(shown),
                      colorbar="query similarity (each panel: its median to its highest)" if layers.queries else None)


def capability_png(capabilities, teacher_names: Sequence[str], class_names: Sequence[str], measured=None,
                   size_inches: tuple[float, float] | None = None) -> bytes:
    """PNG: teachers x classes heatmap of capability values [T,K] with the numbers written in the cells; cells
    where `measured` (bool [T,K]) is False are grey and marked '–' (no image measured them: not a zero)."""
    caps = _numpy(capabilities).astype(np.float64)
    if caps.shape != (len(teacher_names), len(class_names)):
        raise InputError(f"capabilities are {list(caps.shape)} but there are {len(teacher_names)} teachers and "
                         f"{len(class_names)} classes")
    measured = np.ones(caps.shape, bool) if measured is None else _numpy(measured).astype(bool)
    shown = np.ma.masked_array(caps, mask=~measured)
    colormap = colormaps["viridis"].with_extremes(bad=(0.85, 0.85, 0.85))
    fig = _figure(size_inches or (max(6.0, 0.45 * len(class_names) + 2), 1.0 + 0.5 * len(teacher_names) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap=colormap, vmin=0.0, vmax=max(1.0, float(caps[measured].max(initial=0))),
                      aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(teacher_names)), teacher_names)
    if len(class_names) <= 40:
        for (t, k), value in np.ndenumerate(caps):
            text, color = (f"{value:.2f}", "white" if value < 0.5 else "black") if measured[t, k] else ("–", "black")
            ax.text(k, t, text, ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=ax, label="capability")
    ax.set_title("teacher capability per class" + ("" if measured.all() else " (– = not measured)"))
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
