"""Open-vocabulary 3D segmentation metrics with OpenScene's exact semantics (SPEC §4).

Read from OpenScene `run/evaluate.py` and `util/metric.py`:
- Points whose ground truth is 255 are ignored. A point predicted "no feature" (256; fusion mode, no 2D view) is
  left out of the IoU confusion matrix (no FN) but still counts in its class's #GT, so it is a miss for accuracy.
- IoU_c = TP / (TP + FP + FN). mIoU = the sum of IoU over classes present in the ground truth divided by the TOTAL
  number of classes (absent classes count 0). mAcc likewise: the sum over present classes of TP / #GT, divided by
  the total number of classes. A present class whose points all lack a feature and which is never predicted has
  IoU 0 here (OpenScene's get_iou returns a bare NaN there and its caller fails).
- Scores = feature (un-normalised) · text^T in fp16 (text: unit rows), argmax; an optional mapper (nuScenes 43
  detailed prompts -> 16 classes) is applied to the argmax, and "no feature" is marked after mapping.
- Ensemble: per point, cosine-normalised fused 2D and 3D features (x / (|x| + 1e-5)) each take their max over
  classes; the fused 2D feature (un-normalised) replaces the 3D one where its max is strictly larger. Points with no
  2D feature have a zero fused feature, as in OpenScene. (The normalisation runs in fp32; OpenScene runs it in the
  fused features' fp16 storage dtype.)
Test-time repeats sum the scores of the repeats before the argmax: add `class_scores` outputs, then
`labels_from_scores`. `ConfusionMatrix` accumulates over scenes; scenes evaluated in parallel merge by addition.
Caller's note: OpenScene evaluates fusion features after voxelization (each point takes its voxel's first point's
feature and mask); this module scores whatever per-point features it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from sas_ray.errors import InputError
from sas_ray.scene import IGNORE_LABEL, PointFeatures

NO_FEATURE = 256
ENSEMBLE_EPS = 1e-5


def class_scores(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """fp16 [N,K]: features [N,C] · text [K,C]^T in fp16, as OpenScene."""
    if features.ndim != 2 or text.ndim != 2 or features.shape[1] != text.shape[1]:
        raise InputError(f"features {list(features.shape)} and text {list(text.shape)} must be [N,C] and [K,C] "
                         "with the same C")
    return features.half() @ text.to(features.device).half().t()


def labels_from_scores(scores: torch.Tensor, mapper: torch.Tensor | None = None,
                       has_feature: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: argmax of scores [N,K'], mapped through mapper int64 [K'] (e.g. 43 -> 16) if given,
    NO_FEATURE where has_feature bool [N] is False."""
    labels = scores.float().argmax(dim=1)
    if mapper is not None:
        labels = mapper.to(labels.device, torch.int64)[labels]
    if has_feature is not None:
        labels = torch.where(has_feature.to(labels.device), labels, torch.full_like(labels, NO_FEATURE))
    return labels


def ensemble_features(fused: PointFeatures, distilled: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """fp16 [N,C]: per point the fused 2D feature where its best cosine to the vocabulary beats the 3D one's,
    else the distilled 3D feature [N,C]."""
    if distilled.shape != (fused.num_points, fused.dim):
        raise InputError(f"distilled features are {list(distilled.shape)} but the fused features cover "
                         f"{fused.num_points} points of dim {fused.dim}")
    fused_dense = fused.dense().to(distilled.device)
    best_2d = class_scores(fused_dense / (fused_dense.norm(dim=-1, keepdim=True) + ENSEMBLE_EPS), text).max(dim=-1)[0]
    best_3d = class_scores(distilled / (distilled.norm(dim=-1, keepdim=True) + ENSEMBLE_EPS), text).max(dim=-1)[0]
    use_2d = best_3d < best_2d
    return torch.where(use_2d[:, None], fused_dense.half(), distilled.half())


def predict_fusion(fused: PointFeatures, text: torch.Tensor, mapper: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: labels from fused 2D features, NO_FEATURE for points without one (mark_no_feature_to_unknown).
    For OpenScene without that flag use `predict_distill(fused.dense(), ...)`."""
    return labels_from_scores(class_scores(fused.dense(), text), mapper, fused.mask_full)


def predict_distill(features: torch.Tensor, text: torch.Tensor, mapper: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: labels from dense per-point features [N,C] (the 3D network's output)."""
    return labels_from_scores(class_scores(features, text), mapper)


def predict_ensemble(fused: PointFeatures, distilled: torch.Tensor, text: torch.Tensor,
                     mapper: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: labels from the 2D-3D ensemble feature (OpenScene `ensemble`)."""
    return labels_from_scores(class_scores(ensemble_features(fused, distilled, text), text), mapper)


@dataclass
class ConfusionMatrix:
    """Point counts over labelled points: counts int64 [K, K+1], row = ground-truth class, column = predicted class,
    last column = predicted NO_FEATURE."""

    class_names: tuple[str, ...]
    counts: np.ndarray | None = None  # zeros if not given

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        k = len(self.class_names)
        if self.counts is None:
            self.counts = np.zeros((k, k + 1), dtype=np.int64)
        if self.counts.shape != (k, k + 1):
            raise InputError(f"confusion counts must be [{k},{k + 1}] for {k} classes, got {list(self.counts.shape)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, pred, gt, unit: str = "scene") -> None:
        """Add one scene: pred int [N] in 0..K-1 or NO_FEATURE; gt int [N] in 0..K-1 or 255 (ignored)."""
        pred, gt = _as_int64(pred).reshape(-1), _as_int64(gt).reshape(-1)
        k = self.num_classes
        if pred.shape != gt.shape:
            raise InputError(f"{unit}: {pred.size} predictions for {gt.size} ground-truth labels")
        labelled = gt != IGNORE_LABEL
        pred, gt = pred[labelled], gt[labelled]
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            raise InputError(f"{unit}: ground-truth labels must be 0..{k - 1} or {IGNORE_LABEL}, "
                             f"got {gt.min()}..{gt.max()}")
        bad = ((pred < 0) | (pred >= k)) & (pred != NO_FEATURE)
        if bad.any():
            raise InputError(f"{unit}: predictions must be 0..{k - 1} or {NO_FEATURE} (no feature), "
                             f"got {pred[bad][0]}")
        column = np.where(pred == NO_FEATURE, k, pred)
        self.counts += np.bincount(gt * (k + 1) + column, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """A new matrix with both matrices' counts (scenes evaluated apart, summed)."""
        if other.class_names != self.class_names:
            raise InputError(f"cannot merge confusion matrices over different classes: {self.num_classes} "
                             f"classes {self.class_names[:3]}... vs {other.num_classes} {other.class_names[:3]}...")
        return ConfusionMatrix(self.class_names, self.counts + other.counts)

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.counts[:, :-1]).copy()

    @property
    def false_positives(self) -> np.ndarray:
        return self.counts[:, :-1].sum(axis=0) - self.true_positives

    @property
    def false_negatives(self) -> np.ndarray:
        """Labelled points of the class predicted as another class (NO_FEATURE points excluded)."""
        return self.counts[:, :-1].sum(axis=1) - self.true_positives

    @property
    def ground_truth_points(self) -> np.ndarray:
        """#GT per class, NO_FEATURE points included."""
        return self.counts.sum(axis=1)

    @property
    def present(self) -> np.ndarray:
        return self.ground_truth_points > 0

    def iou(self) -> np.ndarray:
        """float64 [K]: IoU per class, NaN for classes absent from the ground truth."""
        tp = self.true_positives
        denominator = tp + self.false_positives + self.false_negatives
        return np.where(self.present, tp / np.maximum(denominator, 1), np.nan)

    def accuracy(self) -> np.ndarray:
        """float64 [K]: TP / #GT per class, NaN for classes absent from the ground truth."""
        return np.where(self.present, self.true_positives / np.maximum(self.ground_truth_points, 1), np.nan)

    def mean_iou(self) -> float:
        """Sum of IoU over present classes / number of classes (OpenScene)."""
        return float(np.nansum(self.iou()) / self.num_classes)

    def mean_accuracy(self) -> float:
        """Sum of accuracy over present classes / number of classes (OpenScene)."""
        return float(np.nansum(self.accuracy()) / self.num_classes)

    def per_class(self) -> list[dict]:
        """One row per class: class, iou, accuracy (None if absent), tp, fp, fn, gt_points, no_feature_points."""
        iou, acc = self.iou(), self.accuracy()
        tp, fp, fn, gt = self.true_positives, self.false_positives, self.false_negatives, self.ground_truth_points
        return [{"class": name,
                 "iou": None if np.isnan(iou[c]) else float(iou[c]),
                 "accuracy": None if np.isnan(acc[c]) else float(acc[c]),
                 "tp": int(tp[c]), "fp": int(fp[c]), "fn": int(fn[c]), "gt_points": int(gt[c]),
                 "no_feature_points": int(self.counts[c, -1])}
                for c, name in enumerate(self.class_names)]

    def to_arrow(self) -> pa.Table:
        """The per-class table as pyarrow (iou/accuracy null for absent classes)."""
        rows = self.per_class()
        schema = pa.schema([("class", pa.string()), ("iou", pa.float64()), ("accuracy", pa.float64()),
                            ("tp", pa.int64()), ("fp", pa.int64()), ("fn", pa.int64()), ("gt_points", pa.int64()),
                            ("no_feature_points", pa.int64())])
        return pa.Table.from_pylist(rows, schema=schema)

    def to_markdown(self) -> str:
        """Per-class IoU / accuracy in percent, absent classes as '-', then the mIoU / mAcc line."""
        lines = ["| class | IoU (%) | Acc (%) | GT points |", "|---|---:|---:|---:|"]
        for row in self.per_class():
            iou = "-" if row["iou"] is None else f"{100 * row['iou']:.1f}"
            acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}"
            lines.append(f"| {row['class']} | {iou} | {acc} | {row['gt_points']} |")
        lines.append(f"| **mean ({self.num_classes} classes)** | **{100 * self.mean_iou():.1f}** | "
                     f"**{100 * self.mean_accuracy():.1f}** | {int(self.counts.sum())} |")
        return "\n".join(lines) + "\n"


def _as_int64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"labels must be integers, got {values.dtype}")
    return values.astype(np.int64)
