"""The spconv 2.x sparse-conv backend: spconv's hashed kernel maps and GEMM kernels computing exactly the
MinkowskiEngine semantics of `sas_ray.distill.sparse`, with the same ME-layout weights.

Mapping onto spconv (indices (batch, x, y, z) = (coords - origin) / tensor stride, int32):
- stride-1 convolution, odd K -> submanifold conv (`SubMConv3d` semantics), one indice key per (stride, K) so
  the kernel map is built once per pass; ME offset d is spconv kernel position d + K//2.
- stride-s convolution with K = s -> regular conv, padding 0: output index floor(i / s), i.e. ME's input floored
  to the coarser stride; ME offset d (0..K-1) is kernel position d. Keyed by its input stride.
- transposed convolution with K = s -> inverse conv (`SparseInverseConv3d`) reusing the pairs of the strided conv
  that made the coarse tensor, so it lands on exactly the finer voxels of the down path (ME
  `expand_coordinates=False`).
- ME kernel [K^3, C_in, C_out] (x fastest) -> spconv KRSC [C_out, Kx, Ky, Kz, C_in].
Coordinates are shifted to non-negative indices by an `origin` that is a multiple of `GRID_ALIGN`, and the spatial
shape is rounded up to a multiple of it, so every power-of-two stride up to it floors as in ME and no strided output
falls off spconv's grid. Convolutions MinkUNet does not use (strided with K != stride, stride-1 with even K) raise
ValueError. On CUDA spconv picks its kernels (implicit GEMM for K^3 <= 32); on CPU only its Native gather-GEMM-scatter
exists.

Two patches to spconv 2.3.8's CPU path, applied on import:
- `SpconvOps.scatter_add_cpu` shares its row pointers between OpenMP threads (captured by reference in
  `tv::kernel_1d`, `spconv/csrc/sparse/gather.py`), so with more than one thread rows are sometimes added to the
  wrong voxel (seen: a few % of convolutions wrong at 2 threads). It runs with one thread here.
- the CPU branch of `indice_conv_backward` asks for the current CUDA stream (and never uses it); without CUDA that
  raises, so there `get_current_stream` returns 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from spconv.core import ConvAlgo
from spconv.core_cc.csrc.sparse.all import SpconvOps
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import SparseConvTensor
from spconv.pytorch import ops as spconv_ops
from spconv.pytorch.conv import SparseConvolutionBase

from sas_ray.distill.sparse import Context, SparseTensor, compute_dtype, pointwise_conv
from sas_ray.errors import ConfigError

GRID_ALIGN = 64  # largest tensor stride supported (MinkUNet reaches 16)


def _one_thread(scatter_add):
    def run(out, inp, inds):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # sets OpenMP's thread count too, which tv::kernel_1d reads
        try:
            return scatter_add(out, inp, inds)
        finally:
            torch.set_num_threads(threads)

    return run


SpconvOps.scatter_add_cpu = staticmethod(_one_thread(SpconvOps.scatter_add_cpu))
if not torch.cuda.is_available():
    spconv_ops.get_current_stream = lambda: 0


@dataclass
class Level:
    """The voxels of one tensor stride in spconv's terms."""

    coords: torch.Tensor  # int64 [V,4], ME coordinates
    indices: torch.Tensor  # int32 [V,4], spconv indices
    spatial_shape: list[int]


@dataclass
class Grid:
    """Per-pass spconv state: the coordinate origin, the levels by stride, spconv's kernel-map cache."""

    origin: torch.Tensor  # int64 [3]
    batch_size: int
    levels: dict[int, Level] = field(default_factory=dict)
    indice_dict: dict = field(default_factory=dict)


def spconv_weight(kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """ME [K^3, C_in, C_out] (offsets x fastest) -> spconv KRSC [C_out, Kx, Ky, Kz, C_in], contiguous."""
    k = kernel_size
    return kernel.reshape(k, k, k, kernel.shape[1], kernel.shape[2]).permute(4, 2, 1, 0, 3).contiguous()


class SpconvBackend:
    """spconv 2.x submanifold / strided / inverse convolutions (module docstring)."""

    name = "spconv"

    def __init__(self):
        self._convs: dict[tuple, SparseConvolutionBase] = {}

    def sparse_tensor(self, coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
        coords = coords.to(torch.int64)
        origin = torch.div(coords[:, 1:].min(0).values, GRID_ALIGN, rounding_mode="floor") * GRID_ALIGN
        grid = Grid(origin, int(coords[:, 0].max()) + 1)
        indices = torch.cat([coords[:, :1], coords[:, 1:] - origin], 1)
        shape = (torch.div(indices[:, 1:].max(0).values, GRID_ALIGN, rounding_mode="floor") + 1) * GRID_ALIGN
        grid.levels[1] = Level(coords, indices.int(), shape.tolist())
        return SparseTensor(coords, feats, 1, Context(self, native=grid))

    def _conv_op(self, kind: str, c_in: int, c_out: int, kernel_size: int, key: str,
                 device: torch.device) -> SparseConvolutionBase:
        """A weightless spconv convolution (its `_conv_forward` takes the weight as an argument), cached."""
        spec = (kind, c_in, c_out, kernel_size, key, device.type)
        if spec not in self._convs:
            if device.type == "cuda" and CPU_ONLY_BUILD:
                raise ConfigError("the installed spconv is the CPU-only wheel; for CUDA install spconv-cu12x "
                                  "(e.g. spconv-cu126) instead")
            algo = ConvAlgo.Native if device.type != "cuda" else None
            stride = kernel_size if kind == "down" else 1
            self._convs[spec] = SparseConvolutionBase(
                3, c_in, c_out, kernel_size, stride, bias=False, subm=kind == "subm", inverse=kind == "inverse",
                indice_key=key, algo=algo)
        return self._convs[spec]

    def _run(self, x: SparseTensor, level: Level, weight: torch.Tensor, kernel_size: int, kind: str, key: str):
        grid: Grid = x.context.native
        op = self._conv_op(kind, weight.shape[1], weight.shape[2], kernel_size, key, x.feats.device)
        dtype = compute_dtype(x.feats)  # spconv's autograd functions are not autocast-aware: cast here
        source = SparseConvTensor(x.feats.to(dtype).contiguous(), level.indices, level.spatial_shape,
                                  grid.batch_size, indice_dict=grid.indice_dict)
        out = op._conv_forward(torch.is_grad_enabled(), source, spconv_weight(weight.to(dtype), kernel_size), None)
        grid.indice_dict = out.indice_dict
        return out

    def conv(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        if kernel_size == 1:
            return pointwise_conv(x, weight, stride)
        grid: Grid = x.context.native
        level = grid.levels[x.stride]
        if stride == 1:
            if kernel_size % 2 == 0:
                raise ValueError(f"spconv backend: stride-1 convolution needs an odd kernel, got {kernel_size}")
            out = self._run(x, level, weight, kernel_size, "subm", f"subm{x.stride}k{kernel_size}")
            return x.replace(out.features)
        if kernel_size != stride:
            raise ValueError(f"spconv backend: strided convolution needs kernel_size == stride, got "
                             f"{kernel_size}/{stride}")
        out_stride = x.stride * stride
        if out_stride > GRID_ALIGN:
            raise ValueError(f"spconv backend: tensor stride {out_stride} > {GRID_ALIGN} (GRID_ALIGN)")
        if out_stride in grid.levels:
            raise ValueError(f"spconv backend: stride {out_stride} was already made in this pass")
        out = self._run(x, level, weight, kernel_size, "down", f"down{x.stride}")
        indices = out.indices.long()
        coords = torch.cat([indices[:, :1], indices[:, 1:] * out_stride + grid.origin], 1)
        grid.levels[out_stride] = Level(coords, out.indices, list(out.spatial_shape))
        return SparseTensor(coords, out.features, out_stride, x.context)

    def conv_transpose(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        out_stride = x.stride // stride
        grid: Grid = x.context.native
        if out_stride not in grid.levels:
            raise ValueError(f"transposed convolution to stride {out_stride}: no such coordinates in this pass")
        if kernel_size != stride:
            raise ValueError(f"spconv backend: transposed convolution needs kernel_size == stride, got "
                             f"{kernel_size}/{stride}")
        out = self._run(x, grid.levels[x.stride], weight, kernel_size, "inverse", f"down{out_stride}")
        return SparseTensor(grid.levels[out_stride].coords, out.features, out_stride, x.context)
