"""Scenes -> training batches for the 3D network: voxelize + augment each scene, attach the stage-1 targets and the
superpoints, and collate several scenes into one sparse input (SPEC §3, §5.7; OpenScene/SAS feature loader).

Voxelization and augmentation run on `device` (the training GPU: milliseconds a batch); the fused features stay on
the CPU and only the rows the stage-1 loss keeps are gathered there and copied to the device."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from sas_ray.distill.losses import random_subset
from sas_ray.distill.stored_features import StoredFeatures
from sas_ray.distill.voxelize import augment_points, random_flip, random_transform, voxelize
from sas_ray.errors import InputError
from sas_ray.scene import PointFeatures

TRANSLATION_VOXELS = 100  # per batch, U{0..99} voxels per axis (SAS `coords[:, 1:4] += rand(3) * 100`)


@dataclass
class SceneSample:
    """What one scene contributes: points f32 [N,3], superpoint ids int64 [N], fused 2D features (stage 1; left in
    storage and read by row, or in memory; a list = OpenScene chunk files, one picked at random per visit), GT
    labels int64 [N] (evaluation only)."""

    scene_id: str
    points: np.ndarray
    superpoints: np.ndarray
    features: StoredFeatures | PointFeatures | list[PointFeatures] | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        n = self.points.shape[0]
        if self.superpoints.shape != (n,):
            raise InputError(f"scene {self.scene_id}: {self.superpoints.shape[0]} superpoint ids for {n} points")
        chunks = self.features if isinstance(self.features, list) else [self.features] if self.features else []
        for chunk in chunks:
            if chunk.num_points != n:
                raise InputError(f"scene {self.scene_id}: features cover {chunk.num_points} points, scene has {n}")


@dataclass
class VoxelizedScene:
    """One scene after voxelization, on the device: coords int64 [V,3]; inverse int64 [N]; point_index int64 [V]
    (each voxel's representative point); superpoints int64 [V] (of the representative); for stage 1, supervised
    bool [V] and target_rows int64 [S]: the rows of `features` (fp16 [M,C] on the CPU or `StoredFeatures`, the
    chosen chunk's) of the supervised voxels (gathered by `collate`, only those the loss keeps)."""

    scene_id: str
    coords: torch.Tensor
    inverse: torch.Tensor
    point_index: torch.Tensor
    superpoints: torch.Tensor
    supervised: torch.Tensor | None = None
    target_rows: torch.Tensor | None = None
    features: torch.Tensor | StoredFeatures | None = None


def voxelize_scene(sample: SceneSample, voxel_size: float, generator: torch.Generator, train: bool,
                   device: torch.device | None = None) -> VoxelizedScene:
    """Training: elastic distortion + rotation/scale + flip. Otherwise rotation/scale only (OpenScene's Voxelizer
    augments every split; that is what makes test-time repeats differ). Draws come from `generator` (CPU)."""
    device = device or torch.device("cpu")
    points = torch.from_numpy(sample.points).to(device)
    if train:
        points = augment_points(points, generator)
    voxels = voxelize(points, voxel_size, random_transform(voxel_size, generator))
    coords = random_flip(voxels.coords, generator) if train else voxels.coords
    rep = voxels.point_index
    out = VoxelizedScene(sample.scene_id, coords, voxels.inverse, rep,
                         torch.from_numpy(sample.superpoints).to(device)[rep])
    if sample.features is not None:
        chunks = sample.features if isinstance(sample.features, list) else [sample.features]
        chunk = chunks[int(torch.randint(len(chunks), (), generator=generator))]
        mask = chunk.mask_full.to(device)
        out.supervised = mask[rep]
        row_of_point = torch.cumsum(mask.to(torch.int64), 0) - 1
        out.target_rows = row_of_point[rep[out.supervised]]
        out.features = chunk.feat if isinstance(chunk, PointFeatures) else chunk
    return out


@dataclass
class Batch:
    """Several voxelized scenes as one network input.

    coords int64 [V,4] (batch, x, y, z), translated; superpoints int64 [V], unique across scenes; voxel_offsets /
    point_offsets int64 [B+1]; inverse int64 [sum N] into the batch's voxels; representatives int64 [V] into the
    batch's points; supervised bool [V] + target [S,C] when every scene has features: the supervised voxels' targets,
    or with loss_rows int64 [L] (a subset drawn by `collate`) only those voxels' targets, row i for loss_rows[i]."""

    scene_ids: list[str]
    coords: torch.Tensor
    superpoints: torch.Tensor
    voxel_offsets: torch.Tensor
    point_offsets: torch.Tensor
    inverse: torch.Tensor
    representatives: torch.Tensor
    supervised: torch.Tensor | None
    target: torch.Tensor | None
    loss_rows: torch.Tensor | None = None

    def input_features(self) -> torch.Tensor:
        """The constant (1, 1, 1) per voxel: geometry-only input (`input_color: False`)."""
        return torch.ones(self.coords.shape[0], 3, device=self.coords.device)

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (the DataLoader's pinning thread calls it), for asynchronous copies."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn) -> Batch:
        return replace(self, **{k: fn(v) for k, v in vars(self).items() if isinstance(v, torch.Tensor)})


def collate(scenes: list[VoxelizedScene], translate: torch.Generator | None, limit: int | None = None,
            generator: torch.Generator | None = None) -> Batch:
    """Concatenate scenes; `translate` given = the per-batch random translation drawn from it. With `limit`, the
    stage-1 loss's random subset of the supervised voxels is drawn here (`random_subset` with `generator`, as
    `steps.stage1_rows` would draw it) and only its targets are gathered (on the CPU, then copied to the scenes'
    device): the loader's memory and time go to the 20k voxels the loss keeps, not to every supervised voxel's
    512-d feature."""
    coords, superpoints, inverse, representatives = [], [], [], []
    voxel_offsets, point_offsets = [0], [0]
    sp_base = 0
    device = scenes[0].coords.device
    for b, scene in enumerate(scenes):
        coords.append(torch.cat([torch.full((scene.coords.shape[0], 1), b, dtype=torch.int64, device=device),
                                 scene.coords], 1))
        _, sp = torch.unique(scene.superpoints, return_inverse=True)
        superpoints.append(sp + sp_base)
        sp_base += int(sp.max()) + 1 if sp.numel() else 0
        inverse.append(scene.inverse + voxel_offsets[-1])
        representatives.append(scene.point_index + point_offsets[-1])
        voxel_offsets.append(voxel_offsets[-1] + scene.coords.shape[0])
        point_offsets.append(point_offsets[-1] + scene.inverse.shape[0])
    coords = torch.cat(coords)
    if translate is not None:
        coords[:, 1:] += torch.randint(TRANSLATION_VOXELS, (3,), generator=translate).to(device)
    supervised = target = loss_rows = None
    if all(s.supervised is not None for s in scenes):
        supervised = torch.cat([s.supervised for s in scenes])
        rows = torch.cat([s.target_rows for s in scenes])
        owner = torch.repeat_interleave(torch.tensor([len(s.target_rows) for s in scenes]))  # scene of each row
        rows = rows.cpu()
        subset = None if limit is None else random_subset(len(rows), limit, generator)
        if subset is not None:
            loss_rows = supervised.nonzero().squeeze(1)[subset.to(device)]
            rows, owner = rows[subset], owner[subset]
        target = _gather_targets(scenes, rows, owner).to(device)
    return Batch([s.scene_id for s in scenes], coords, torch.cat(superpoints), torch.tensor(voxel_offsets),
                 torch.tensor(point_offsets), torch.cat(inverse), torch.cat(representatives), supervised, target,
                 loss_rows)


def _gather_targets(scenes: list[VoxelizedScene], rows: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Row `rows[i]` of scene `owner[i]`'s features, for every i, in that order."""
    target = torch.empty(len(rows), scenes[0].features.shape[1], dtype=torch.float16)
    for b, scene in enumerate(scenes):
        mine = (owner == b).nonzero().squeeze(1)
        target[mine] = scene.features[rows[mine]]
    return target
