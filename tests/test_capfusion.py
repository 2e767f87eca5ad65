"""Capability-guided fusion against hand-computed weights (SPEC §5.5) and the baselines (§5.10)."""

import math

import pytest
import torch

from sas_ray.capfusion import (
    add_point_features, candidate_classes, capability_fusion, capability_fusion_pair, capability_weights,
    direct_add, fuse_point_features, linear_fusion, linear_point_features,
)
from sas_ray.errors import ConfigError, InputError
from sas_ray.scene import PointFeatures

# Vocabulary: 4 orthogonal unit text vectors; class 3 is "other".
TEXT = torch.eye(4)
OTHER = 3
CAP_FIRST = torch.tensor([0.8, 0.2, 0.5, 0.0])
CAP_SECOND = torch.tensor([0.4, 0.9, 0.3, 0.0])


def _softmax_first(a_first: float, a_second: float, tau: float = 0.05) -> float:
    """Weight of the first teacher: softmax([a1, a2] / (a1 + a2) / tau)[0], written out."""
    n1, n2 = a_first / (a_first + a_second), a_second / (a_first + a_second)
    return math.exp(n1 / tau) / (math.exp(n1 / tau) + math.exp(n2 / tau))


def _hand_example():
    first = torch.tensor([
        [0.9, 0.1, 0.0, 0.0],    # votes 0
        [0.0, 0.0, 1.0, 0.0],    # votes 2
        [0.1, 0.0, 0.0, 0.8],    # votes 3 = other -> keep first
        [0.0, 0.6, 0.2, 0.0],    # votes 1
    ])
    second = torch.tensor([
        [0.2, 0.7, 0.0, 0.0],    # votes 1
        [0.1, 0.0, 0.5, 0.0],    # votes 2
        [0.0, 0.9, 0.0, 0.0],    # votes 1 (ignored: first says other)
        [0.0, 0.1, 0.0, 0.7],    # votes 3 = other
    ])
    # Point 0: a_first = S1[0] + S1[1] = 0.8 + 0.2 = 1.0; a_second = S2[1] + S2[0] = 0.9 + 0.4 = 1.3.
    # Point 1: both vote 2: a_first = 0.5 + 0.5 = 1.0; a_second = 0.3 + 0.3 = 0.6.
    # Point 3: votes (1, 3): a_first = 0.2 + 0.0 = 0.2; a_second = 0.0 + 0.9 = 0.9.
    w0 = _softmax_first(1.0, 1.3)
    w1 = _softmax_first(1.0, 0.6)
    w3 = _softmax_first(0.2, 0.9)
    expected_w = torch.tensor([[w0, 1 - w0], [w1, 1 - w1], [1.0, 0.0], [w3, 1 - w3]])
    return first, second, expected_w


def test_hand_computed_weights_and_features():
    first, second, expected_w = _hand_example()
    assert math.isclose(expected_w[0, 0].item(), 1 / (1 + math.exp(0.3 / 2.3 / 0.05)), rel_tol=1e-6)
    weights = capability_weights([first, second], [CAP_FIRST, CAP_SECOND], TEXT, OTHER)
    torch.testing.assert_close(weights, expected_w, rtol=1e-5, atol=1e-6)
    expected = expected_w[:, :1] * first + expected_w[:, 1:] * second
    expected[2] = first[2]
    for fused in (capability_fusion([first, second], [CAP_FIRST, CAP_SECOND], TEXT, OTHER),
                  capability_fusion_pair(first, second, CAP_FIRST, CAP_SECOND, TEXT, OTHER)):
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    # Fusion never re-normalises: point 1's fused norm is a weighted mix of norms 1 and ~0.51.
    assert not math.isclose(expected[1].norm().item(), 1.0, rel_tol=1e-3)


def test_other_rule_keeps_first_feature_exactly_and_can_be_disabled():
    first, second, _ = _hand_example()
    first, second = first.half(), second.half()
    fused = capability_fusion([first, second], [CAP_FIRST, CAP_SECOND], TEXT, OTHER)
    assert torch.equal(fused[2], first[2])
    assert fused.dtype == torch.float16
    # Without the rule, point 2 is scored like any other: votes (3, 1) -> a_first 0.0 + 0.2, a_second 0.0 + 0.9.
    weights = capability_weights([first, second], [CAP_FIRST, CAP_SECOND], TEXT, None)
    assert math.isclose(weights[2, 0].item(), _softmax_first(0.2, 0.9), rel_tol=1e-5)


def test_zero_capability_everywhere_gives_equal_weights_not_nan():
    first, second, _ = _hand_example()
    zero = torch.zeros(4)
    weights = capability_weights([first, second], [zero, zero], TEXT, OTHER)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[[0, 1, 3]], torch.full((3, 2), 0.5))


def test_temperature_is_applied():
    first, second, _ = _hand_example()
    weights = capability_weights([first, second], [CAP_FIRST, CAP_SECOND], TEXT, OTHER, temperature=1.0)
    assert math.isclose(weights[0, 0].item(), _softmax_first(1.0, 1.3, tau=1.0), rel_tol=1e-5)


def test_three_teachers_score_on_all_candidate_classes():
    first = torch.tensor([[1.0, 0.0, 0.0, 0.0]])    # votes 0
    second = torch.tensor([[0.0, 1.0, 0.0, 0.0]])   # votes 1
    third = torch.tensor([[0.0, 0.0, 1.0, 0.0]])    # votes 2
    caps = [CAP_FIRST, CAP_SECOND, torch.tensor([0.1, 0.1, 0.7, 0.0])]
    a = [0.8 + 0.2 + 0.5, 0.4 + 0.9 + 0.3, 0.1 + 0.1 + 0.7]
    total = sum(a)
    e = [math.exp(x / total / 0.05) for x in a]
    expected = torch.tensor([[x / sum(e) for x in e]])
    weights = capability_weights([first, second, third], caps, TEXT, OTHER)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-7)
    fused = capability_fusion([first, second, third], caps, TEXT, OTHER)
    torch.testing.assert_close(fused, expected[:, :3].reshape(1, 3) @ torch.eye(3, 4), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_general_path_equals_sas_pair_path_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    num_classes, dim = 6, 16
    text = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    first = (torch.randn(2000, dim, generator=gen) * 0.3).to(dtype)
    second = (torch.randn(2000, dim, generator=gen) * 0.3).to(dtype)
    caps = [torch.rand(num_classes, generator=gen), torch.rand(num_classes, generator=gen)]
    caps[0][4] = caps[1][4] = 0.0
    pair = capability_fusion_pair(first, second, caps[0], caps[1], text, other_index=4)
    general = capability_fusion([first, second], caps, text, other_index=4)
    votes = candidate_classes(first, text)
    assert 0 < int((votes == 4).sum()) < 2000                 # the "other" rule is exercised
    assert pair.dtype == general.dtype == dtype
    assert torch.equal(pair, general)


def test_candidate_classes_use_fp16_matmul_and_lowest_index_on_ties():
    text = torch.eye(3)
    feats = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 1.0 + 1e-5]])  # 1+1e-5 rounds to 1.0 in fp16 -> tie
    assert candidate_classes(feats, text).tolist() == [0, 1]


def test_baselines_direct_add_and_linear():
    first, second, _ = _hand_example()
    torch.testing.assert_close(direct_add([first, second]), first + second)
    torch.testing.assert_close(linear_fusion([first, second], [0.3, 0.7]), 0.3 * first + 0.7 * second)


def _point_features(rows: torch.Tensor, mask: list[bool]) -> PointFeatures:
    return PointFeatures(feat=rows.half(), mask_full=torch.tensor(mask))


def test_point_features_fusion_and_baselines():
    first, second, expected_w = _hand_example()
    mask = [True, False, True, True, False, True]
    teachers = {"lseg": _point_features(first, mask), "seem": _point_features(second, mask)}
    fused = fuse_point_features(teachers, {"seem": CAP_SECOND, "lseg": CAP_FIRST}, TEXT, OTHER, unit="scene0000_00")
    assert torch.equal(fused.mask_full, torch.tensor(mask))
    expected = expected_w[:, :1] * first.half().float() + expected_w[:, 1:] * second.half().float()
    expected[2] = first[2].half().float()
    torch.testing.assert_close(fused.feat.float(), expected, rtol=2e-3, atol=2e-3)
    added = add_point_features(teachers, unit="scene0000_00")
    torch.testing.assert_close(added.feat.float(), (first.half().float() + second.half().float()), atol=2e-3, rtol=0)
    linear = linear_point_features(teachers, {"lseg": 0.25, "seem": 0.75}, unit="scene0000_00")
    torch.testing.assert_close(linear.feat.float(), 0.25 * first + 0.75 * second, atol=2e-3, rtol=0)


def test_mismatched_teachers_are_refused_naming_the_teacher():
    first, second, _ = _hand_example()
    mask = [True, False, True, True, False, True]
    caps = {"lseg": CAP_FIRST, "seem": CAP_SECOND}
    other_mask = _point_features(second, [True, True, False, True, False, True])
    with pytest.raises(InputError, match=r"scene0001_00: teacher 'seem' mask_full differs .* at 2 points"):
        fuse_point_features({"lseg": _point_features(first, mask), "seem": other_mask}, caps, TEXT, OTHER,
                            unit="scene0001_00")
    other_size = _point_features(second, mask + [False])
    with pytest.raises(InputError, match="teacher 'seem' has mask_full over 7 points"):
        fuse_point_features({"lseg": _point_features(first, mask), "seem": other_size}, caps, TEXT, OTHER,
                            unit="scene0001_00")
    other_dim = _point_features(torch.zeros(4, 5), mask)
    with pytest.raises(InputError, match="teacher 'seem' features are 5-d but teacher 'lseg' features are 4-d"):
        fuse_point_features({"lseg": _point_features(first, mask), "seem": other_dim}, caps, TEXT, OTHER,
                            unit="scene0001_00")
    with pytest.raises(InputError, match="vocabulary is"):
        capability_fusion([first, second], [CAP_FIRST, CAP_SECOND], torch.eye(5), OTHER)
    with pytest.raises(ConfigError, match="capability of teacher 'teacher 1' has shape"):
        capability_fusion([first, second], [CAP_FIRST, torch.ones(3)], TEXT, OTHER)
    with pytest.raises(ConfigError, match="no capability vector"):
        fuse_point_features({"lseg": _point_features(first, mask), "seem": _point_features(second, mask)},
                            {"lseg": CAP_FIRST}, TEXT, OTHER, unit="scene0001_00")
    with pytest.raises(InputError, match="at least 2 teachers"):
        capability_fusion([first], [CAP_FIRST], TEXT, OTHER)
