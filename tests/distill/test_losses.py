"""Stage-1 and stage-2 losses against per-superpoint loops written from SPEC §5.7–5.8."""

import math

import torch

from sas_ray.distill.losses import random_subset, self_distillation_losses, superpoint_losses


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_superpoint_losses_match_a_loop():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g,
                                                                                       dtype=torch.float64)
    superpoints = torch.randint(0, 6, (30,), generator=g) * 7 + 100  # sparse, unordered ids
    loss_p, loss_sp = superpoint_losses(pred, target, superpoints)
    means = {int(s): target[superpoints == s].mean(0) for s in superpoints.unique()}
    expected_p = sum(1 - _cos(pred[i], means[int(superpoints[i])]) for i in range(30)) / 30
    expected_sp = sum(1 - _cos(pred[superpoints == s].mean(0), m) for s, m in means.items()) / len(means)
    assert math.isclose(loss_p.item(), expected_p, rel_tol=1e-9)
    assert math.isclose(loss_sp.item(), expected_sp, rel_tol=1e-9)


def test_self_distillation_losses_match_a_loop():
    g = torch.Generator().manual_seed(1)
    pred, ema = torch.randn(25, 4, generator=g, dtype=torch.float64), torch.randn(25, 4, generator=g,
                                                                                  dtype=torch.float64)
    text = torch.randn(3, 4, generator=g, dtype=torch.float64)
    superpoints = torch.randint(0, 5, (25,), generator=g)
    loss_p, loss_sp = self_distillation_losses(pred, ema, superpoints, text)
    ids = superpoints.unique().tolist()
    label = {s: int((ema[superpoints == s].mean(0) @ text.t()).argmax()) for s in ids}

    def ce(logits, y):
        return float(torch.logsumexp(logits, 0) - logits[y])

    expected_p = sum(ce(pred[i] @ text.t(), label[int(superpoints[i])]) for i in range(25)) / 25
    expected_sp = sum(ce(pred[superpoints == s].mean(0) @ text.t(), label[s]) for s in ids) / len(ids)
    assert math.isclose(loss_p.item(), expected_p, rel_tol=1e-9)
    assert math.isclose(loss_sp.item(), expected_sp, rel_tol=1e-9)


def test_random_subset():
    assert random_subset(10, 20) is None
    idx = random_subset(50, 20, torch.Generator().manual_seed(0))
    assert len(idx) == 20 and len(idx.unique()) == 20 and int(idx.max()) < 50
