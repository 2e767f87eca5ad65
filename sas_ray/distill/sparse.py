"""The small sparse-convolution interface MinkUNet is written against, and the pure-PyTorch reference backend.

A `SparseTensor` is integer voxel coordinates (batch, x, y, z) at a tensor stride plus one feature row per voxel,
in MinkowskiEngine's conventions (SPEC §3): a stride-s tensor's coordinates are multiples of s; a strided
convolution's output coordinates are the input's floored to multiples of the new stride; a transposed convolution
writes onto the finer coordinates that already exist (ME `expand_coordinates=False`); a convolution reads input
`out + offset_k * in_stride` for kernel offset k, offsets enumerated with x fastest, then y, then z, each in
`-(K//2)..K//2` for odd K and `0..K-1` for even K. Weights are ME's layout: `[K^3, C_in, C_out]`, or `[C_in, C_out]`
when K = 1. Every backend computes exactly this, so one state dict serves all of them.

`TorchBackend` builds kernel maps by sorting packed coordinate keys and binary-searching neighbours
(`torch.searchsorted`), then gathers, multiplies and scatter-adds (`index_add_`) per offset. Slow but exact, on
any device; the oracle for the native backends.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import torch

from sas_ray.errors import InputError

_AXIS_BITS = 18  # each packed coordinate axis holds [-2^17, 2^17)
_AXIS_BIAS = 1 << (_AXIS_BITS - 1)
_MAX_BATCH = 1 << (63 - 3 * _AXIS_BITS)


def kernel_offsets(kernel_size: int) -> torch.Tensor:
    """int64 [K^3, 3]: ME's hypercube offsets in units of the input stride, x fastest."""
    axis = list(range(kernel_size)) if kernel_size % 2 == 0 else list(range(-(kernel_size // 2), kernel_size // 2 + 1))
    return torch.tensor([(x, y, z) for z, y, x in itertools.product(axis, axis, axis)], dtype=torch.int64)


def pack_coords(coords: torch.Tensor) -> torch.Tensor:
    """int64 [V]: one sortable key per (batch, x, y, z) row."""
    xyz = coords[:, 1:] + _AXIS_BIAS
    if coords.numel() and (int(xyz.min()) < 0 or int(xyz.max()) >= 1 << _AXIS_BITS
                           or int(coords[:, 0].min()) < 0 or int(coords[:, 0].max()) >= _MAX_BATCH):
        raise InputError(f"voxel coordinates must lie in [-{_AXIS_BIAS}, {_AXIS_BIAS}) and batch indices in "
                         f"[0, {_MAX_BATCH}); got {coords.min(0).values.tolist()}..{coords.max(0).values.tolist()}")
    key = coords[:, 0]
    for axis in range(3):
        key = (key << _AXIS_BITS) | xyz[:, axis]
    return key


class CoordinateSet:
    """The voxels of one tensor stride, with a sorted key index for neighbour lookups."""

    def __init__(self, coords: torch.Tensor):
        self.coords = coords
        self.sorted_keys, self.order = torch.sort(pack_coords(coords))

    def __len__(self) -> int:
        return self.coords.shape[0]

    def find(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For query rows [Q,4]: (indices of the queries that exist, their row in this set)."""
        keys = pack_coords(queries)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=max(len(self) - 1, 0))
        hit = self.sorted_keys[pos] == keys if len(self) else torch.zeros_like(keys, dtype=torch.bool)
        return hit.nonzero().squeeze(1), self.order[pos[hit]]


@dataclass
class Context:
    """State shared by every tensor of one forward pass: the backend, coordinate sets per stride, kernel maps."""

    backend: SparseBackend
    coordinate_sets: dict[int, CoordinateSet] = field(default_factory=dict)
    kernel_maps: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    native: object = None  # a backend's own state (ME coordinate manager, spconv indice cache)


@dataclass
class SparseTensor:
    """coords int64 [V,4] (batch, x, y, z), multiples of `stride`; feats [V,C]."""

    coords: torch.Tensor
    feats: torch.Tensor
    stride: int
    context: Context

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same voxels, new features."""
        return SparseTensor(self.coords, feats, self.stride, self.context)

    @property
    def backend(self) -> SparseBackend:
        return self.context.backend


class SparseBackend(Protocol):
    """What MinkUNet needs from a sparse-conv library. Weights in ME layout (module docstring)."""

    name: str

    def sparse_tensor(self, coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
        """The network input: coords int [V,4] (batch, x, y, z) at stride 1, unique rows; feats [V,C]."""

    def conv(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor: ...

    def conv_transpose(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        ...


def strided_coords(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Unique rows of `coords` floored to multiples of `stride` (batch column kept)."""
    out = coords.clone()
    out[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    return torch.unique(out, dim=0)


def pointwise_conv(x: SparseTensor, weight: torch.Tensor, stride: int) -> SparseTensor:
    """A 1x1x1 convolution: the same matmul on the same voxels in every backend (ME's `use_mm`)."""
    if stride != 1:
        raise ValueError("a 1x1x1 convolution with stride > 1 is not part of MinkUNet")
    return x.replace(x.feats @ weight)


def compute_dtype(feats: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of `feats` computes in: autocast's when it is on for their device (mixed precision),
    else their own."""
    device = feats.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else feats.dtype


class TorchBackend:
    """Pure-PyTorch gather/matmul/scatter sparse convolution (module docstring)."""

    name = "torch"

    def sparse_tensor(self, coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
        coords = coords.to(torch.int64)
        context = Context(self)
        context.coordinate_sets[1] = CoordinateSet(coords)
        return SparseTensor(coords, feats, 1, context)

    def _coordinate_set(self, x: SparseTensor, stride: int) -> CoordinateSet:
        sets = x.context.coordinate_sets
        if stride not in sets:
            finest = sets[min(sets)]
            sets[stride] = CoordinateSet(strided_coords(finest.coords, stride))
        return sets[stride]

    def _pairs(self, base: CoordinateSet, target: CoordinateSet, kernel_size: int, step: int):
        """Per kernel offset k: (rows b of `base`, rows t of `target`) with target = base + offset_k * step."""
        offsets = kernel_offsets(kernel_size).to(base.coords.device) * step
        pairs = []
        for offset in offsets:
            queries = base.coords.clone()
            queries[:, 1:] += offset
            pairs.append(target.find(queries))
        return pairs

    def conv(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        out_stride = x.stride * stride
        if kernel_size == 1:
            return pointwise_conv(x, weight, stride)
        source = self._coordinate_set(x, x.stride)
        out = self._coordinate_set(x, out_stride)
        key = ("conv", x.stride, out_stride, kernel_size)
        if key not in x.context.kernel_maps:
            x.context.kernel_maps[key] = self._pairs(out, source, kernel_size, x.stride)
        feats = x.feats.new_zeros(len(out), weight.shape[-1], dtype=compute_dtype(x.feats))
        for w, (out_rows, in_rows) in zip(weight, x.context.kernel_maps[key]):
            feats.index_add_(0, out_rows, x.feats[in_rows] @ w)
        return SparseTensor(out.coords, feats, out_stride, x.context)

    def conv_transpose(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        out_stride = x.stride // stride
        if out_stride not in x.context.coordinate_sets:
            raise ValueError(f"transposed convolution to stride {out_stride}: no such coordinates in this pass")
        source = self._coordinate_set(x, x.stride)
        out = x.context.coordinate_sets[out_stride]
        key = ("transpose", x.stride, out_stride, kernel_size)
        if key not in x.context.kernel_maps:
            x.context.kernel_maps[key] = self._pairs(source, out, kernel_size, out_stride)
        feats = x.feats.new_zeros(len(out), weight.shape[-1], dtype=compute_dtype(x.feats))
        for w, (in_rows, out_rows) in zip(weight, x.context.kernel_maps[key]):
            feats.index_add_(0, out_rows, x.feats[in_rows] @ w)
        return SparseTensor(out.coords, feats, out_stride, x.context)
