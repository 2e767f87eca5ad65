"""The distillation losses of OpenScene and SAS (SPEC §3, §5.7, §5.8), over per-voxel predictions.

Superpoint means are `index_add_` sums over counts (torch-scatter's `scatter_mean`). Ids are re-indexed with
`unique(..., return_inverse=True)` after sub-sampling, as SAS does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPERVISION_LIMIT = 20000  # SAS: at most 20k voxels per (per-GPU) batch enter the loss


def random_subset(n: int, limit: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Indices of `limit` of `n` rows without replacement, or None when n <= limit (use all)."""
    if n <= limit:
        return None
    return torch.randperm(n, generator=generator)[:limit]


def segment_mean(values: torch.Tensor, ids: torch.Tensor, count: int) -> torch.Tensor:
    """[count, C]: mean of the rows of `values` [S,C] per id in 0..count-1 (every id present)."""
    sums = values.new_zeros(count, values.shape[1]).index_add_(0, ids, values)
    counts = torch.bincount(ids, minlength=count).clamp_(min=1).to(values.dtype)
    return sums / counts[:, None]


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OpenScene `loss_type: cosine`: mean(1 - cos(pred, target)) over rows."""
    return (1 - F.cosine_similarity(pred, target.to(pred.dtype), dim=1)).mean()


def superpoint_losses(pred: torch.Tensor, target: torch.Tensor, superpoints: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAS stage 1: (L_p, L_sp) for supervised voxels' predictions [S,C], 2D targets [S,C], superpoint ids [S].

    L_p = mean over voxels of 1 - cos(pred, mean target of its superpoint);
    L_sp = mean over superpoints of 1 - cos(mean pred, mean target)."""
    _, ids = torch.unique(superpoints, return_inverse=True)
    count = int(ids.max()) + 1
    target_mean = segment_mean(target.to(pred.dtype), ids, count)
    return cosine_loss(pred, target_mean[ids]), cosine_loss(segment_mean(pred, ids, count), target_mean)


def self_distillation_losses(pred: torch.Tensor, ema: torch.Tensor, superpoints: torch.Tensor,
                             text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAS stage 2: (L_p^ST, L_sp^ST) for voxel predictions [S,C], their EMA history [S,C], superpoint ids [S]
    and text embeddings [K,C]. Pseudo label of a superpoint = argmax of its mean EMA prediction · text; logits are
    raw dot products (no temperature)."""
    _, ids = torch.unique(superpoints, return_inverse=True)
    count = int(ids.max()) + 1
    text = text.to(pred.dtype)
    with torch.no_grad():
        labels = (segment_mean(ema.to(pred.dtype), ids, count) @ text.t()).argmax(dim=1)
    loss_point = F.cross_entropy(pred @ text.t(), labels[ids])
    loss_superpoint = F.cross_entropy(segment_mean(pred, ids, count) @ text.t(), labels)
    return loss_point, loss_superpoint
