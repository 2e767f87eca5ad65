"""One training step of each distillation stage and the test-time prediction, as plain functions over a model, a
backend and a `Batch` (SPEC §3, §4, §5.7, §5.8); `training.train_stage` loops over them."""

from __future__ import annotations

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


def autocast(device: torch.device, mixed_precision: bool):
    """fp16 autocast when `mixed_precision` is asked for and the device is CUDA; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision and device.type == "cuda")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """Backward and update with loss scaling (a pass-through when the scaler is disabled)."""
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def forward(model: MinkUNet18A, backend: SparseBackend, batch: Batch, device: torch.device,
            rows: torch.Tensor | None = None, mixed_precision: bool = False, with_trunk: bool = False):
    """[V,C] per-voxel predictions for the batch's voxels (only `rows` when given; see `MinkUNet18A.forward`).
    `mixed_precision` runs the network under fp16 autocast on CUDA (ignored elsewhere); outputs come in the
    parameters' dtype."""
    dtype = next(model.parameters()).dtype
    x = backend.sparse_tensor(batch.coords.to(device), batch.input_features().to(device, dtype))
    rows = None if rows is None else rows.to(device)
    with autocast(device, mixed_precision):
        out = model(x, rows, with_trunk)
    return (out[0].to(dtype), out[1]) if with_trunk else out.to(dtype)


def stage1_rows(batch: Batch, limit: int = SUPERVISION_LIMIT, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(voxel rows, rows of `batch.target`) entering the stage-1 loss: the supervised voxels, a random `limit`
    of them if more (SAS); the subset `collate` drew, when it did."""
    if batch.loss_rows is not None:
        return batch.loss_rows, torch.arange(len(batch.loss_rows))
    voxels = batch.supervised.nonzero().squeeze(1)
    subset = random_subset(voxels.shape[0], limit, generator)
    if subset is None:
        return voxels, torch.arange(voxels.shape[0])
    return voxels[subset], subset


def stage1_loss(pred: torch.Tensor, batch: Batch, rows: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """SAS superpoint distillation, L_p + L_sp, for the predictions `pred` [S,C] of the voxels `stage1_rows` chose."""
    voxels, targets = rows
    target = batch.target[targets].to(pred.device)
    superpoints = batch.superpoints[voxels].to(pred.device)
    loss_point, loss_superpoint = superpoint_losses(pred, target.float(), superpoints)
    return loss_point + loss_superpoint, {"loss_point": loss_point.item(), "loss_superpoint": loss_superpoint.item()}


def stage1_step(model: MinkUNet18A, backend: SparseBackend, batch: Batch, device: torch.device,
                generator: torch.Generator | None = None, limit: int = SUPERVISION_LIMIT,
                mixed_precision: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1's loss for one batch; the network's head runs on the loss's voxels only."""
    rows = stage1_rows(batch, limit, generator)
    return stage1_loss(forward(model, backend, batch, device, rows[0], mixed_precision), batch, rows)


def update_history(pred: torch.Tensor, batch: Batch, history: PredictionHistory, momentum: float,
                   step: int | None = None) -> torch.Tensor:
    """Blend this step's per-point predictions into each scene's stored EMA, in batch order (a scene twice in a
    batch is blended twice, as SAS); with `step`, a step the history has already seen is not blended again.
    Returns the EMA at every voxel's representative point, fp32 [V,C]."""
    with torch.no_grad():
        points = pred.detach()[batch.inverse.to(pred.device)]
        offsets = batch.point_offsets.tolist()
        latest: dict[int, torch.Tensor] = {}
        for b, scene_id in enumerate(batch.scene_ids):
            latest[b] = history.update(scene_id, points[offsets[b]:offsets[b + 1]], momentum,
                                       None if step is None else (step, b))
        ema = torch.cat([latest[b] for b in range(len(batch.scene_ids))])
        return ema[batch.representatives.to(pred.device)]


def stage2_step(model: MinkUNet18A, backend: SparseBackend, batch: Batch, device: torch.device,
                history: PredictionHistory, momentum: float, text: torch.Tensor,
                generator: torch.Generator | None = None, limit: int = SUPERVISION_LIMIT,
                mixed_precision: bool = False, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SAS self-distillation for one batch (optimizer step `step`): every voxel's prediction (without gradients)
    updates the EMA history; CE to superpoint pseudo labels over all voxels, a random `limit` of them if more (the
    head's gradients only there)."""
    count = batch.coords.shape[0]
    subset = random_subset(count, limit, generator)
    rows = torch.arange(count) if subset is None else subset
    pred, trunk = forward(model, backend, batch, device, rows, mixed_precision, with_trunk=True)
    with torch.no_grad():
        head = getattr(model, "module", model).head
        with autocast(device, mixed_precision):
            every = head(trunk.detach()).float()
        ema = update_history(every, batch, history, momentum, step)[rows.to(device)]
    superpoints = batch.superpoints[rows].to(device)
    loss_point, loss_superpoint = self_distillation_losses(pred, ema, superpoints, text.to(device))
    return loss_point + loss_superpoint, {"loss_point": loss_point.item(), "loss_superpoint": loss_superpoint.item()}


@torch.no_grad()
def predict_points(model: MinkUNet18A, backend: SparseBackend, sample: SceneSample, voxel_size: float,
                   repeats: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """fp32 [N,C]: per-point features averaged over `repeats` randomly rotated/scaled voxelizations (OpenScene
    sums the repeats' logits; logits are linear in the features, so the argmax is the same)."""
    model.eval()
    total = None
    for _ in range(repeats):
        scene = voxelize_scene(sample, voxel_size, generator, train=False, device=device)
        batch = collate([scene], None)
        points = forward(model, backend, batch, device)[batch.inverse.to(device)].float()
        total = points if total is None else total + points
    return total / repeats
