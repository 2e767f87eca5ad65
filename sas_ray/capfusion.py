"""Capability-guided fusion of several 2D teachers' point features (SPEC §5.5) and the ablation baselines (§5.10).

Each teacher votes for a class (argmax of its feature against the vocabulary); each teacher is then scored by its
capability on all voted classes, the scores are normalised to sum 1, and a softmax with temperature 0.05 gives the
per-point weights of the teachers' features. For two teachers this is exactly SAS `feat_fusion/fusion_scannet.py`
(`capability_fusion_pair` transcribes it line by line, plus the zero-sum guard below); `capability_fusion` is the
N-teacher form and gives bit-identical results for N = 2.

Choices, where SAS leaves something open:
- The vocabulary argmax is an fp16 matmul (fp16 features @ fp16 vocabulary, as SAS), on CPU or GPU; ties resolve to
  the lowest class index.
- Capabilities are float32; the weights and the weighted sum are float32 (SAS multiplies fp16 features by fp32
  weights, which promotes to fp32), cast back to the first teacher's dtype at the end. No re-normalisation.
- A point whose capability scores are all 0 (every voted class has capability 0 for every teacher) gets equal
  weights; SAS divides 0 by 0 there and writes NaN features.
- Points where the first teacher votes for `other_index` keep the first teacher's feature unchanged (SAS: LSeg
  voting "other"). `other_index=None` disables the rule.
- Fusion needs all teachers in one text space: equal feature dims, equal to the vocabulary's, and (for
  `PointFeatures`) the same `mask_full`; anything else is refused with an `InputError` naming the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sas_ray.errors import ConfigError, InputError
from sas_ray.scene import PointFeatures

FUSION_TEMPERATURE = 0.05


def candidate_classes(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """int64 [M]: argmax over the vocabulary of features [M,C] · text [K,C]^T, computed in fp16 like SAS."""
    return (features.half() @ text.to(features.device).half().t()).argmax(dim=-1)


def capability_weights(features: Sequence[torch.Tensor], capabilities: Sequence[torch.Tensor], text: torch.Tensor,
                       other_index: int | None, temperature: float = FUSION_TEMPERATURE,
                       names: Sequence[str] | None = None, unit: str = "features") -> torch.Tensor:
    """float32 [M,T]: the weight of each of the T teachers' features [M,C] per point.

    capabilities: T vectors [K] (teacher t's capability on each vocabulary class); text: the vocabulary [K,C]."""
    caps = _check_inputs(features, capabilities, text, other_index, temperature, names, unit)
    votes = torch.stack([candidate_classes(f, text) for f in features], dim=1)             # [M,T] voted classes
    scores = torch.stack([cap[votes].sum(dim=1) for cap in caps], dim=1)                   # capability on all votes
    total = scores.sum(dim=1, keepdim=True)
    normalised = torch.where(total > 0, scores / total, torch.zeros_like(scores))
    weights = torch.softmax(normalised / temperature, dim=-1)
    if other_index is not None:
        keep_first = votes[:, 0] == other_index
        weights[keep_first] = 0.0
        weights[keep_first, 0] = 1.0
    return weights


def capability_fusion(features: Sequence[torch.Tensor], capabilities: Sequence[torch.Tensor], text: torch.Tensor,
                      other_index: int | None, temperature: float = FUSION_TEMPERATURE,
                      names: Sequence[str] | None = None, unit: str = "features") -> torch.Tensor:
    """[M,C] in the first teacher's dtype: the capability-weighted sum of T >= 2 teachers' features [M,C]."""
    weights = capability_weights(features, capabilities, text, other_index, temperature, names, unit)
    # fp16 * fp32 promotes to fp32, as in SAS; rows weighted (1, 0, ...) reproduce the first feature exactly.
    fused = features[0] * weights[:, 0:1]
    for t in range(1, len(features)):
        fused = fused + features[t] * weights[:, t:t + 1]
    return fused.to(features[0].dtype)


def capability_fusion_pair(first: torch.Tensor, second: torch.Tensor, first_capability: torch.Tensor,
                           second_capability: torch.Tensor, text: torch.Tensor, other_index: int | None,
                           temperature: float = FUSION_TEMPERATURE) -> torch.Tensor:
    """SAS fusion_scannet.py for two teachers (first = LSeg, second = SEEM), same order of operations."""
    cap_first, cap_second = _check_inputs([first, second], [first_capability, second_capability], text,
                                          other_index, temperature, None, "features")
    vote_first, vote_second = candidate_classes(first, text), candidate_classes(second, text)
    fused_rows = torch.ones_like(vote_first, dtype=torch.bool) if other_index is None else vote_first != other_index
    vote_first, vote_second = vote_first[fused_rows], vote_second[fused_rows]
    weight_first = cap_first[vote_first] + cap_first[vote_second]
    weight_second = cap_second[vote_second] + cap_second[vote_first]
    weight_sum = weight_first + weight_second
    weight_first = torch.where(weight_sum > 0, weight_first / weight_sum, torch.zeros_like(weight_first))
    weight_second = torch.where(weight_sum > 0, weight_second / weight_sum, torch.zeros_like(weight_second))
    weight = torch.softmax(torch.cat([weight_first[:, None], weight_second[:, None]], dim=-1) / temperature, dim=-1)
    fused = first.clone()
    fused[fused_rows] = (first[fused_rows] * weight[:, 0, None]
                         + second[fused_rows] * weight[:, 1, None]).to(first.dtype)
    return fused


def linear_fusion(features: Sequence[torch.Tensor], weights: Sequence[float],
                  names: Sequence[str] | None = None, unit: str = "features") -> torch.Tensor:
    """[M,C] in the first teacher's dtype: sum_t weights[t] · features[t] with fixed weights (the SAS ablation
    "linear fusion" is (w, 1-w); "direct add" is `direct_add`)."""
    _check_features(features, names, unit)
    if len(weights) != len(features):
        raise ConfigError(f"linear fusion got {len(weights)} weights for {len(features)} teachers")
    fused = features[0].float() * float(weights[0])
    for t in range(1, len(features)):
        fused = fused + features[t].float() * float(weights[t])
    return fused.to(features[0].dtype)


def direct_add(features: Sequence[torch.Tensor], names: Sequence[str] | None = None,
               unit: str = "features") -> torch.Tensor:
    """[M,C]: f_1 + ... + f_T (the SAS ablation "direct add"; no normalisation)."""
    return linear_fusion(features, [1.0] * len(features), names, unit)


def fuse_point_features(teachers: Mapping[str, PointFeatures], capabilities: Mapping[str, torch.Tensor],
                        text: torch.Tensor, other_index: int | None, unit: str,
                        temperature: float = FUSION_TEMPERATURE) -> PointFeatures:
    """Capability-guided fusion of one scene's teachers (name -> features; the first entry plays SAS's LSeg role).

    capabilities: teacher name -> [K] over the vocabulary text [K,C]. Raises InputError naming `unit` and the
    teacher if the teachers don't share mask_full and feature dim."""
    names = list(teachers)
    _check_shared_points(teachers, unit)
    missing = [n for n in names if n not in capabilities]
    if missing:
        raise ConfigError(f"{unit}: no capability vector for teacher(s) {missing}; have {sorted(capabilities)}")
    fused = capability_fusion([teachers[n].feat for n in names], [capabilities[n] for n in names], text,
                              other_index, temperature, names, unit)
    return PointFeatures(feat=fused.half(), mask_full=teachers[names[0]].mask_full.clone())


def add_point_features(teachers: Mapping[str, PointFeatures], unit: str) -> PointFeatures:
    """The "direct add" baseline on one scene's teachers."""
    names = list(teachers)
    _check_shared_points(teachers, unit)
    fused = direct_add([teachers[n].feat for n in names], names, unit)
    return PointFeatures(feat=fused.half(), mask_full=teachers[names[0]].mask_full.clone())


def linear_point_features(teachers: Mapping[str, PointFeatures], weights: Mapping[str, float],
                          unit: str) -> PointFeatures:
    """The fixed-weight "linear fusion" baseline on one scene's teachers (weights by teacher name)."""
    names = list(teachers)
    _check_shared_points(teachers, unit)
    if set(weights) != set(names):
        raise ConfigError(f"{unit}: linear fusion weights are for {sorted(weights)} but the teachers are {names}")
    fused = linear_fusion([teachers[n].feat for n in names], [weights[n] for n in names], names, unit)
    return PointFeatures(feat=fused.half(), mask_full=teachers[names[0]].mask_full.clone())


def _check_shared_points(teachers: Mapping[str, PointFeatures], unit: str) -> None:
    if len(teachers) < 2:
        raise InputError(f"{unit}: fusion needs at least 2 teachers, got {list(teachers)}")
    (first_name, first), *rest = teachers.items()
    for name, other in rest:
        if other.num_points != first.num_points:
            raise InputError(f"{unit}: teacher '{name}' has mask_full over {other.num_points} points but teacher "
                             f"'{first_name}' over {first.num_points} (expected the same scene points)")
        if not torch.equal(other.mask_full.cpu(), first.mask_full.cpu()):
            differ = int((other.mask_full.cpu() != first.mask_full.cpu()).sum())
            raise InputError(f"{unit}: teacher '{name}' mask_full differs from teacher '{first_name}' at {differ} "
                             "points (fusion needs features of the same points)")
        if other.dim != first.dim:
            raise InputError(f"{unit}: teacher '{name}' features are {other.dim}-d but teacher '{first_name}' "
                             f"features are {first.dim}-d (fusion needs one shared text space)")


def _check_features(features: Sequence[torch.Tensor], names: Sequence[str] | None, unit: str) -> list[str]:
    names = list(names) if names is not None else [f"teacher {t}" for t in range(len(features))]
    if len(features) < 2 or len(names) != len(features):
        raise InputError(f"{unit}: fusion needs at least 2 teachers with one name each, got {len(features)} "
                         f"feature tensors and names {names}")
    shape = tuple(features[0].shape)
    for name, f in zip(names, features):
        if f.ndim != 2 or not f.is_floating_point():
            raise InputError(f"{unit}: teacher '{name}' features must be a float tensor [M,C], "
                             f"got {f.dtype} {list(f.shape)}")
        if tuple(f.shape) != shape:
            raise InputError(f"{unit}: teacher '{name}' features are {list(f.shape)} but teacher '{names[0]}' "
                             f"features are {list(shape)} (fusion needs the same points in one shared text space)")
    return names


def _check_inputs(features, capabilities, text, other_index, temperature, names, unit) -> list[torch.Tensor]:
    """Validate, then return the capabilities as float32 [K] tensors on the features' device."""
    names = _check_features(features, names, unit)
    if text.ndim != 2 or text.shape[1] != features[0].shape[1]:
        raise InputError(f"{unit}: teacher features are {features[0].shape[1]}-d but the vocabulary is "
                         f"{list(text.shape)} (fusion needs one shared text space)")
    num_classes = text.shape[0]
    if len(capabilities) != len(features):
        raise ConfigError(f"{unit}: {len(capabilities)} capability vectors for {len(features)} teachers")
    caps = [torch.as_tensor(c).to(device=features[0].device, dtype=torch.float32) for c in capabilities]
    for name, cap in zip(names, caps):
        if cap.shape != (num_classes,):
            raise ConfigError(f"{unit}: capability of teacher '{name}' has shape {list(cap.shape)}, expected "
                              f"[{num_classes}] (one value per vocabulary class)")
        if not torch.isfinite(cap).all() or (cap < 0).any():
            raise ConfigError(f"{unit}: capability of teacher '{name}' must be finite and >= 0")
    if other_index is not None and not 0 <= other_index < num_classes:
        raise ConfigError(f"{unit}: other_index {other_index} is outside the vocabulary 0..{num_classes - 1}")
    if not temperature > 0:
        raise ConfigError(f"fusion temperature must be > 0, got {temperature}")
    return caps
