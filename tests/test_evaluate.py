"""Metrics and predictions against hand-computed numbers and a per-class loop transcribing OpenScene's metric."""

import math

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.evaluate import (
    NO_FEATURE, ConfusionMatrix, class_scores, ensemble_features, labels_from_scores, predict_distill,
    predict_ensemble, predict_fusion,
)
from sas_ray.labels import NUSCENES_16, NUSCENES_43, NUSCENES_43_TO_16
from sas_ray.scene import PointFeatures

CLASSES = ("a", "b", "c", "d")


def _openscene_reference(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Per-class loop written from OpenScene util/metric.py: no-feature rows dropped, sums / num_classes."""
    labelled = gt != 255
    pred, gt = pred[labelled], gt[labelled]
    miou = macc = 0.0
    for c in range(num_classes):
        n_gt = int((gt == c).sum())
        if n_gt == 0:
            continue
        tp = int(((pred == c) & (gt == c)).sum())
        fp = int(((pred == c) & (gt != c)).sum())
        fn = int(((pred != c) & (pred != NO_FEATURE) & (gt == c)).sum())
        miou += tp / (tp + fp + fn)
        macc += tp / n_gt
    return miou / num_classes, macc / num_classes


def test_hand_computed_metrics_with_absent_class_and_no_feature():
    gt = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 0])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 3, NO_FEATURE])
    cm = ConfusionMatrix(CLASSES)
    cm.update(pred, gt)
    # class a: TP 2, FP 1 (a c point), FN 1 (the b prediction; the no-feature point is not an FN) -> 2/4
    # class b: TP 1, FP 1, FN 1 -> 1/3;  class c: TP 2, FP 1, FN 1 -> 2/4;  class d: absent (its FP is ignored 255)
    np.testing.assert_allclose(cm.iou()[:3], [0.5, 1 / 3, 0.5])
    assert math.isnan(cm.iou()[3])
    assert cm.mean_iou() == pytest.approx((0.5 + 1 / 3 + 0.5) / 4)            # divided by ALL 4 classes
    # accuracy: a 2/4 (the no-feature point is a miss), b 1/2, c 2/3
    assert cm.mean_accuracy() == pytest.approx((2 / 4 + 1 / 2 + 2 / 3) / 4)
    assert cm.ground_truth_points.tolist() == [4, 2, 3, 0]
    assert cm.false_negatives.tolist() == [1, 1, 1, 0]
    assert (cm.mean_iou(), cm.mean_accuracy()) == pytest.approx(_openscene_reference(pred, gt, 4))


def test_class_seen_only_without_feature_has_iou_zero():
    # OpenScene's get_iou returns a bare NaN here and its caller then fails; we count the class as IoU 0.
    cm = ConfusionMatrix(CLASSES)
    cm.update(np.array([0, NO_FEATURE]), np.array([0, 1]))
    assert cm.iou()[1] == 0.0 and cm.accuracy()[1] == 0.0
    assert cm.mean_iou() == pytest.approx(1 / 4)


def test_absent_class_false_positives_do_not_enter_the_mean():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 3, 1, 1])          # class d is predicted but never in the ground truth
    cm = ConfusionMatrix(CLASSES)
    cm.update(pred, gt)
    assert cm.false_positives[3] == 1 and math.isnan(cm.iou()[3])
    assert cm.mean_iou() == pytest.approx((1 / 2 + 1.0) / 4)
    assert cm.mean_accuracy() == pytest.approx((1 / 2 + 1.0) / 4)


def test_random_scenes_match_reference_and_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    k = 7
    gt = rng.integers(0, k - 1, 5000)                      # the last class never appears
    gt[rng.random(5000) < 0.1] = 255
    pred = np.where(rng.random(5000) < 0.6, gt % k, rng.integers(0, k, 5000))
    pred[rng.random(5000) < 0.05] = NO_FEATURE
    names = tuple(str(c) for c in range(k))
    whole = ConfusionMatrix(names)
    whole.update(pred, gt)
    parts = [ConfusionMatrix(names) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(5000), 3)):
        part.update(torch.from_numpy(pred[idx]), torch.from_numpy(gt[idx]))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(merged.counts, whole.counts)
    assert (whole.mean_iou(), whole.mean_accuracy()) == pytest.approx(_openscene_reference(pred, gt, k))


def _perfect_setup(num_classes=6, num_points=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gt = torch.arange(num_points) % num_classes
    text = torch.eye(num_classes, 8)                       # unit text rows
    scale = 0.5 + torch.rand(num_points, 1, generator=gen)  # features are not unit: scores use them as they are
    features = text[gt] * scale + 0.01 * torch.randn(num_points, 8, generator=gen)
    return gt, text, features


def test_perfect_features_give_miou_100():
    gt, text, features = _perfect_setup()
    cm = ConfusionMatrix(tuple("abcdef"))
    cm.update(predict_distill(features, text), gt)
    assert 100 * cm.mean_iou() == pytest.approx(100.0)
    assert 100 * cm.mean_accuracy() == pytest.approx(100.0)


def test_one_confused_class_lowers_exactly_that_class_and_its_target():
    gt, text, features = _perfect_setup()
    features[gt == 2] = text[5] * 0.8                      # every class-2 point looks like class 5
    cm = ConfusionMatrix(tuple("abcdef"))
    cm.update(predict_distill(features, text), gt)
    n = 50                                                 # points per class
    expected = [1.0, 1.0, 0.0, 1.0, 1.0, n / (n + n)]     # class 5: TP 50, FP 50
    np.testing.assert_allclose(cm.iou(), expected)
    assert cm.mean_iou() == pytest.approx(sum(expected) / 6)


def test_fusion_prediction_marks_points_without_feature():
    gt, text, features = _perfect_setup(num_classes=3, num_points=12)
    mask = torch.tensor([True, True, True, False] * 3)  # one point of each class (period 3) has no feature
    fused = PointFeatures(feat=features[mask].half(), mask_full=mask)
    pred = predict_fusion(fused, text)
    assert pred[~mask].eq(NO_FEATURE).all() and torch.equal(pred[mask], gt[mask])
    cm = ConfusionMatrix(("a", "b", "c"))
    cm.update(pred, gt)
    assert cm.mean_iou() == pytest.approx(1.0)               # no-feature points are not FN ...
    assert cm.mean_accuracy() == pytest.approx(3 / 4)        # ... but are misses: 1 of the 4 points per class
    # without marking (OpenScene mark_no_feature_to_unknown False), zero features score 0 everywhere -> class 0
    assert predict_distill(fused.dense(), text)[~mask].eq(0).all()


def test_ensemble_rule_on_hand_made_points():
    text = torch.eye(3)
    mask = torch.tensor([True, True, False, False, True])
    fused_rows = torch.tensor([[2.0, 0.0, 0.0],      # cos 1.0 beats 3D 0.8      -> 2D, class 0
                               [0.5, 0.5, 0.0],      # cos 0.707 loses to 3D 1.0 -> 3D, class 2
                               [0.0, 1.0, 0.0]])     # point 4: cos 1 ties 3D cos 1 in fp16 -> 3D (strict >)
    distilled = torch.tensor([[0.6, 0.8, 0.0],
                              [0.0, 0.0, 3.0],
                              [-1.0, -1.0, -1.0],    # point 2, no 2D feature: zero cos 0 > -0.577 -> zero feature
                              [0.0, 1.0, 0.0],       # point 3, no 2D feature: 3D cos 1 > 0 -> 3D, class 1
                              [0.0, 0.0, 5.0]])
    fused = PointFeatures(feat=fused_rows.half(), mask_full=mask)
    feats = ensemble_features(fused, distilled, text)
    assert feats.dtype == torch.float16
    assert torch.equal(feats.float(), torch.tensor([[2.0, 0, 0], [0, 0, 3.0], [0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]]))
    assert predict_ensemble(fused, distilled, text).tolist() == [0, 2, 0, 1, 2]


def test_mapper_maps_detailed_nuscenes_prompts_to_16_classes():
    text = torch.eye(len(NUSCENES_43))
    prompts = ["grass", "bulldozer", "pedestrian", "tree trunk"]
    features = text[[NUSCENES_43.index(p) for p in prompts]]
    pred = labels_from_scores(class_scores(features, text), torch.tensor(NUSCENES_43_TO_16))
    assert [NUSCENES_16[i] for i in pred] == ["terrain", "construction vehicle", "person", "vegetation"]


def test_bad_labels_are_refused_naming_the_scene():
    cm = ConfusionMatrix(CLASSES)
    with pytest.raises(InputError, match="scene0009_00: ground-truth labels must be 0..3"):
        cm.update(np.array([0, 1]), np.array([0, 4]), unit="scene0009_00")
    with pytest.raises(InputError, match="scene0009_00: predictions must be 0..3 or 256"):
        cm.update(np.array([0, 255]), np.array([0, 1]), unit="scene0009_00")
    with pytest.raises(InputError, match="3 predictions for 2"):
        cm.update(np.array([0, 1, 2]), np.array([0, 1]), unit="scene0009_00")
    with pytest.raises(InputError, match="different classes"):
        cm.merge(ConfusionMatrix(("a", "b")))


def test_per_class_table_arrow_and_markdown():
    cm = ConfusionMatrix(CLASSES)
    cm.update(np.array([0, 0, 1, NO_FEATURE]), np.array([0, 1, 1, 0]))
    rows = cm.per_class()
    assert rows[0] == {"class": "a", "iou": 0.5, "accuracy": 0.5, "tp": 1, "fp": 1, "fn": 0, "gt_points": 2,
                       "no_feature_points": 1}
    assert rows[3]["iou"] is None and rows[3]["gt_points"] == 0
    table = cm.to_arrow()
    assert table.num_rows == 4 and table.column("iou").null_count == 2
    md = cm.to_markdown()
    assert "| a | 50.0 | 50.0 | 2 |" in md and "| d | - | - | 0 |" in md
    assert f"**{100 * (0.5 + 0.5) / 4:.1f}**" in md
