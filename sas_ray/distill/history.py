"""Stage 2's temporal ensemble (SPEC §5.8): one EMA of the network's per-point predictions per training scene,
kept in storage as fp16 (updates idempotent per step, so a restored run applies none twice), and the
scene-ownership rule that gives every scene a single writer.

SAS keeps `pred_history/<scene>.pth` on a shared disk and, with `loop 5` over DDP ranks, the same scene can be
loaded and rewritten by two ranks in one step (a race). Here each epoch partitions the scenes across ranks
(`scene_assignment`): a scene is visited only by its owner during the epoch, and every history write of a step
finishes before that step's gradient all-reduce, so the next owner (a later epoch, or after a resize) reads it.
"""

from __future__ import annotations

import numpy as np
import torch

from sas_ray.distill.losses import segment_mean
from sas_ray.errors import InputError
from sas_ray.storage import Storage, load_tensors, tensor_metadata

EMA_MOMENTUM = 0.9999


def superpoint_average(pred: torch.Tensor, superpoints: torch.Tensor) -> torch.Tensor:
    """[N,C]: every point gets the mean prediction of its superpoint (stage-2 initialisation)."""
    _, ids = torch.unique(superpoints, return_inverse=True)
    return segment_mean(pred, ids, int(ids.max()) + 1)[ids]


def ema_update(history: torch.Tensor, current: torch.Tensor, momentum: float = EMA_MOMENTUM) -> torch.Tensor:
    """fp32 momentum * history + (1 - momentum) * current."""
    return momentum * history.float() + (1 - momentum) * current.float()


class PredictionHistory:
    """{root}/{scene}.safetensors = {"pred": fp16 [N,C]} per scene, its metadata "update" = the (step, position in
    the batch) of the last update blended in.

    Updates are idempotent: an update whose (step, position) is not after the stored one is skipped. A run restored
    from a checkpoint repeats the steps after it; their updates are already in the history (the EMA is not
    checkpointed: at ScanNet size it is N x 512 x 2 bytes per scene, 180 GB), so no update is ever applied twice."""

    def __init__(self, root: Storage):
        self.root = root

    def _name(self, scene_id: str) -> str:
        return f"{scene_id}.safetensors"

    def exists(self, scene_id: str) -> bool:
        return self.root.exists(self._name(scene_id))

    def write(self, scene_id: str, pred: torch.Tensor, update: tuple[int, int] = (-1, -1)) -> None:
        self.root.write_tensors(self._name(scene_id), {"pred": pred.detach().half().cpu()},
                                {"scene": scene_id, "update": f"{update[0]}:{update[1]}"})

    def read(self, scene_id: str) -> torch.Tensor:
        return self._read(scene_id)[0]

    def _read(self, scene_id: str) -> tuple[torch.Tensor, tuple[int, int]]:
        rel = self._name(scene_id)
        blob, source = self.root.read_bytes(rel), self.root.url(rel)
        tensors = load_tensors(blob, source)
        if "pred" not in tensors:
            raise InputError(f"{source}: no 'pred' tensor (not a prediction history)")
        step, _, position = tensor_metadata(blob, source).get("update", "-1:-1").partition(":")
        return tensors["pred"], (int(step), int(position))

    def update(self, scene_id: str, current: torch.Tensor, momentum: float = EMA_MOMENTUM,
               update: tuple[int, int] | None = None) -> torch.Tensor:
        """Blend `current` [N,C] into the scene's history and store it (fp16), unless `update` = (step, position in
        the batch) is not after the stored one (a repeated step); returns the history (fp32)."""
        history, stored = self._read(scene_id)
        if history.shape != current.shape:
            raise InputError(f"scene {scene_id}: history {list(history.shape)} vs prediction {list(current.shape)}")
        if update is not None and update <= stored:
            return history.to(current.device).float()
        new = ema_update(history.to(current.device), current, momentum)
        self.write(scene_id, new, update or stored)
        return new


def scene_assignment(scene_ids: list[str], epoch: int, rank: int, world_size: int, loop: int,
                     seed: int) -> list[str]:
    """The scenes `rank` visits in `epoch`, in order.

    The epoch's permutation (seed + epoch) is dealt round-robin to ranks, each rank keeps the same number
    (len // world_size, as DistributedSampler with drop_last) and visits its own scenes `loop` times, each pass
    in a fresh order. Ranks' scene sets are disjoint."""
    if len(scene_ids) < world_size:
        raise InputError(f"{len(scene_ids)} training scenes cannot feed {world_size} workers")
    rng = np.random.default_rng([seed, epoch])
    order = [scene_ids[i] for i in rng.permutation(len(scene_ids))]
    own = order[rank::world_size][: len(scene_ids) // world_size]
    rank_rng = np.random.default_rng([seed, epoch, rank + 1])
    return [own[i] for _ in range(loop) for i in rank_rng.permutation(len(own))]


def steps_per_epoch(num_scenes: int, world_size: int, loop: int, batch_size: int) -> int:
    """Optimizer steps per epoch: every rank's assignment cut into full batches (drop_last)."""
    return (num_scenes // world_size) * loop // batch_size
