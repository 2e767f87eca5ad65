"""Capability arithmetic on hand-made masks with known answers: counts, SAS's dataset-level IoU, the paper's
per-image mean, 'other' = 0, teacher class maps (incl. mask-level teachers), and the table `fuse` reads."""

import numpy as np
import pytest
import torch

from sas_ray.capability import (NO_CLASS, aggregate, capability_table, class_slug, decode_mask_png, encode_png,
                                label_counts, mask_counts, teacher_class_map)
from sas_ray.capability_table import CAPABILITY_FILE, read_capabilities
from sas_ray.errors import InputError
from sas_ray.storage import Storage


def _box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_mask_counts_of_overlapping_boxes():
    pred = _box((10, 10), (0, 4), (0, 5))  # 20 pixels
    ref = _box((10, 10), (2, 6), (0, 5))  # 20 pixels, rows 2-3 shared: 10
    assert mask_counts(pred, ref) == (10, 30)
    assert mask_counts(pred, np.zeros((10, 10), bool)) == (0, 20)
    with pytest.raises(InputError, match="different sizes"):
        mask_counts(pred, ref[:5])


def test_dataset_level_iou_differs_from_the_per_image_mean():
    # class 1 on three images: IoU 10/30, 40/40 and 0/10 -> SAS: 50/80; paper: (1/3 + 1 + 0) / 3.
    # class 0 ('other' here) would be 1.0 but is zeroed; class 2 never occurs; class 3 only in an empty image.
    counts = [(1, 10, 30), (1, 40, 40), (1, 0, 10), (0, 5, 5), (3, 0, 0)]
    k, inter, union = (list(c) for c in zip(*counts))
    result = aggregate(k, inter, union, num_classes=4, other_index=0)
    np.testing.assert_allclose(result.capability, [0.0, 50 / 80, 0.0, 0.0])
    np.testing.assert_allclose(result.per_image_miou, [0.0, (1 / 3 + 1 + 0) / 3, 0.0, 0.0])
    assert result.intersection.tolist() == [5, 50, 0, 0] and result.union.tolist() == [5, 80, 0, 0]
    assert result.images.tolist() == [1, 3, 0, 0]  # images with a non-empty union
    assert aggregate(k, inter, union, 4, None).capability[0] == 1.0


@pytest.mark.parametrize("counts, message", [
    (([0], [3], [2]), "intersection <= union"),
    (([5], [0], [1]), "0..3"),
    (([0, 1], [0], [1]), "one length"),
])
def test_aggregate_refuses_impossible_counts(counts, message):
    with pytest.raises(InputError, match=message):
        aggregate(*counts, num_classes=4, other_index=None)


def test_label_counts_match_a_per_class_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (30, 40))
    labels[rng.random((30, 40)) < 0.2] = 255  # not annotated
    class_map = rng.integers(-1, 5, (30, 40))  # -1 = the teacher predicts nothing
    counts = label_counts(class_map, labels, num_classes=5)
    valid = labels != 255
    expected = {}
    for j in range(5):
        pred, ref = (class_map == j) & valid, labels == j
        if (pred | ref).any():
            expected[j] = ((pred & ref).sum(), (pred | ref).sum())
    assert counts.class_index.tolist() == sorted(expected)
    assert list(zip(counts.intersection.tolist(), counts.union.tolist())) == [expected[j] for j in sorted(expected)]


def test_label_counts_of_a_hand_made_frame():
    labels = np.array([[0, 0, 1, 255]])
    class_map = np.array([[0, 1, 1, 2]])  # right, wrong, right, on an unannotated pixel
    counts = label_counts(class_map, labels, num_classes=3)
    assert counts.class_index.tolist() == [0, 1]  # class 2 only predicted on an unannotated pixel: not counted
    assert counts.intersection.tolist() == [1, 1] and counts.union.tolist() == [2, 2]


def test_class_map_is_the_vocabulary_argmax_and_zero_features_predict_nothing():
    text = torch.eye(3)
    features = torch.tensor([[[0.2, 0.9, 0.1], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [-1.0, -2.0, -0.5]]])
    assert teacher_class_map(features, text).tolist() == [[1, NO_CLASS, 0, 2]]  # ties: lowest index
    with pytest.raises(InputError, match="text space"):
        teacher_class_map(features, torch.eye(4))


def test_mask_level_teacher_maps_its_classes_like_sas():
    # SEEM paints each segment with its class's text embedding; SAS maps each of its classes to the vocabulary by
    # argmax(seem_text @ vocab.T). Painting and taking the pixel argmax must give that mapping on every pixel.
    g = torch.Generator().manual_seed(0)
    vocab = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    seem_text = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=1)
    segments = torch.randint(0, 9, (12, 10), generator=g)
    sas_mapping = (seem_text @ vocab.t()).argmax(dim=1)
    assert torch.equal(teacher_class_map(seem_text[segments], vocab), sas_mapping[segments])


def test_table_is_what_fuse_reads(tmp_path):
    names = ("wall", "chair", "other")
    results = {"a": aggregate([0, 1, 2], [1, 3, 2], [4, 4, 2], 3, other_index=2),
               "b": aggregate([1], [2], [8], 3, other_index=2)}
    root = Storage(str(tmp_path))
    root.write_table(CAPABILITY_FILE, capability_table(results, names))
    caps = read_capabilities(root, ["a", "b"], 3, names)
    assert caps["a"].tolist() == [0.25, 0.75, 0.0] and caps["b"].tolist() == [0.0, 0.25, 0.0]
    rows = root.read_table(CAPABILITY_FILE).to_pylist()
    assert [(r["teacher"], r["class_name"], r["images"]) for r in rows[:3]] == [("a", "wall", 1), ("a", "chair", 1),
                                                                               ("a", "other", 1)]


def test_mask_png_round_trip_and_slugs():
    mask = _box((7, 9), (1, 5), (2, 8))
    assert np.array_equal(decode_mask_png(encode_png(mask), "m.png"), mask)
    with pytest.raises(InputError, match="grayscale"):
        decode_mask_png(encode_png(np.zeros((4, 4, 3), np.uint8)), "rgb.png")
    assert class_slug("shower curtain") == "shower_curtain"
    with pytest.raises(InputError):
        class_slug("a/b")
