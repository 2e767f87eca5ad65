"""One training step of each distillation stage and the test-time prediction, as plain functions over a model, a
backend and a `Batch` (SPEC §3, §4, §5.7, §5.8). The Ray Train loop in `jobs/distill.py` only wires these up."""

from __future__ import annotations

import numpy as np
import torch

from sas_ray.distill.batch import Batch, SceneSample, collate, voxelize_scene
from sas_ray.distill.history import PredictionHistory
from sas_ray.distill.losses import SUPERVISION_LIMIT, random_subset, self_distillation_losses, superpoint_losses
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.sparse import SparseBackend

POLY_POWER = 0.9


def learning_rate(base_lr: float, progress: float, first_step: bool, global_batch: int, reference_batch: int,
                  x10_quirk: bool) -> float:
    """Poly decay (power 0.9) over training progress in [0, 1], linearly scaled to the global batch.

    `x10_quirk` reproduces OpenScene/SAS: `index_split = 0` makes their update loop set every param group to
    10 x poly_lr after each iteration, so all but the first step run at ~10x base_lr."""
    lr = base_lr * (global_batch / reference_batch)
    if first_step:
        return lr
    return lr * (10.0 if x10_quirk else 1.0) * max(0.0, 1.0 - progress) ** POLY_POWER


def forward(model: MinkUNet18A, backend: SparseBackend, batch: Batch, device: torch.device) -> torch.Tensor:
    """[V,C] per-voxel predictions for the batch's voxels."""
    x = backend.sparse_tensor(batch.coords.to(device), batch.input_features().to(device))
    return model(x)


def stage1_loss(pred: torch.Tensor, batch: Batch, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """SAS superpoint distillation on the supervised voxels (random 20k subset if more): L_p + L_sp."""
    device = pred.device
    mask = batch.supervised.to(device)
    pred, target, superpoints = pred[mask], batch.target.to(device), batch.superpoints.to(device)[mask]
    subset = random_subset(pred.shape[0], SUPERVISION_LIMIT, generator)
    if subset is not None:
        subset = subset.to(device)
        pred, target, superpoints = pred[subset], target[subset], superpoints[subset]
    loss_point, loss_superpoint = superpoint_losses(pred, target.float(), superpoints)
    return loss_point + loss_superpoint, {"loss_point": loss_point.item(), "loss_superpoint": loss_superpoint.item()}


def update_history(pred: torch.Tensor, batch: Batch, history: PredictionHistory, momentum: float) -> torch.Tensor:
    """Blend this step's per-point predictions into each scene's stored EMA, in batch order (a scene twice in a
    batch is blended twice, as SAS); returns the EMA at every voxel's representative point, fp32 [V,C]."""
    with torch.no_grad():
        points = pred.detach()[batch.inverse.to(pred.device)]
        offsets = batch.point_offsets.tolist()
        latest: dict[int, torch.Tensor] = {}
        for b, scene_id in enumerate(batch.scene_ids):
            latest[b] = history.update(scene_id, points[offsets[b]:offsets[b + 1]], momentum)
        ema = torch.cat([latest[b] for b in range(len(batch.scene_ids))])
        return ema[batch.representatives.to(pred.device)]


def stage2_loss(pred: torch.Tensor, batch: Batch, ema: torch.Tensor, text: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SAS self-distillation over all voxels (random 20k subset if more): CE to superpoint pseudo labels."""
    superpoints = batch.superpoints.to(pred.device)
    subset = random_subset(pred.shape[0], SUPERVISION_LIMIT, generator)
    if subset is not None:
        subset = subset.to(pred.device)
        pred, ema, superpoints = pred[subset], ema[subset], superpoints[subset]
    loss_point, loss_superpoint = self_distillation_losses(pred, ema, superpoints, text.to(pred.device))
    return loss_point + loss_superpoint, {"loss_point": loss_point.item(), "loss_superpoint": loss_superpoint.item()}


@torch.no_grad()
def predict_points(model: MinkUNet18A, backend: SparseBackend, sample: SceneSample, voxel_size: float,
                   repeats: int, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """fp32 [N,C]: per-point features averaged over `repeats` randomly rotated/scaled voxelizations (OpenScene
    sums the repeats' logits; logits are linear in the features, so the argmax is the same)."""
    model.eval()
    total = None
    for _ in range(repeats):
        scene = voxelize_scene(sample, voxel_size, rng, train=False)
        batch = collate([scene], None)
        points = forward(model, backend, batch, device)[batch.inverse.to(device)].float()
        total = points if total is None else total + points
    return total / repeats
