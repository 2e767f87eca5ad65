"""The MinkowskiEngine 0.5.4 sparse-conv backend (OpenScene's own library), computing the semantics of
`sas_ray.distill.sparse` with ME's coordinate manager and convolution functions on the same ME-layout weights.

One `ME.CoordinateManager` per forward pass holds a coordinate map per tensor stride:
- the input map is inserted from the given coordinates (unique rows keep their order: checked);
- a stride-1 convolution maps the input map onto itself (ME `MinkowskiConvolution`, stride 1);
- a strided convolution makes (or reuses) the map `manager.stride(in, s)`: the input floored to the coarser stride;
- a transposed convolution writes onto the existing finer map (ME `MinkowskiConvolutionTranspose`,
  `expand_coordinates=False`).
ME enumerates kernel offsets x fastest (`kernel_region::coordinate_at`), as `sparse.kernel_offsets`, so the weights
pass through unchanged (made contiguous, as ME requires). A 1x1x1 convolution is a matmul, as in ME (`use_mm`).
Gradients are ME's own backward kernels. `import MinkowskiEngine` appends its package folder to `sys.path` and,
on machines with more than 16 CPUs and no OMP_NUM_THREADS, sets OMP_NUM_THREADS=16; hence it is imported only here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

with warnings.catch_warnings():  # a CPU build says so on every import
    warnings.filterwarnings("ignore", "The MinkowskiEngine was compiled with CPU_ONLY")
    import MinkowskiEngine as ME
from MinkowskiEngineBackend._C import ConvolutionMode

from sas_ray.distill.sparse import Context, SparseTensor, pointwise_conv

DIMENSION = 3


@dataclass
class Level:
    """The coordinate map of one tensor stride."""

    key: ME.CoordinateMapKey
    coords: torch.Tensor  # int64 [V,4], in the map's row order


@dataclass
class CoordinateMaps:
    """Per-pass ME state: the coordinate manager and its map for each tensor stride."""

    manager: ME.CoordinateManager
    levels: dict[int, Level] = field(default_factory=dict)


def _kernel_generator(kernel_size: int, stride: int) -> ME.KernelGenerator:
    return ME.KernelGenerator(kernel_size=kernel_size, stride=stride, dilation=1, dimension=DIMENSION)


class MinkowskiBackend:
    """MinkowskiEngine convolutions on one coordinate manager per pass (module docstring)."""

    name = "minkowski"

    def sparse_tensor(self, coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
        coords = coords.to(torch.int64)
        map_type = ME.CoordinateMapType.CUDA if coords.is_cuda else ME.CoordinateMapType.CPU
        maps = CoordinateMaps(ME.CoordinateManager(D=DIMENSION, coordinate_map_type=map_type))
        key, (unique_map, _) = maps.manager.insert_and_map(coords.int(), tensor_stride=1)
        if not torch.equal(unique_map.long().cpu(), torch.arange(len(coords))):
            raise ValueError("MinkowskiEngine reordered or merged the input voxels; coordinates must be unique rows")
        maps.levels[1] = Level(key, coords)
        return SparseTensor(coords, feats, 1, Context(self, native=maps))

    def conv(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        if kernel_size == 1:
            return pointwise_conv(x, weight, stride)
        maps: CoordinateMaps = x.context.native
        source = maps.levels[x.stride]
        out_stride = x.stride * stride
        if out_stride not in maps.levels:  # ME floors the input coordinates to the coarser stride
            key = maps.manager.stride(source.key, stride)
            maps.levels[out_stride] = Level(key, maps.manager.get_coordinates(key).to(x.coords.device, torch.int64))
        out = maps.levels[out_stride]
        feats = ME.MinkowskiConvolutionFunction.apply(
            x.feats, weight.contiguous(), _kernel_generator(kernel_size, stride), ConvolutionMode.DEFAULT, source.key,
            out.key, maps.manager)
        return SparseTensor(out.coords, feats, out_stride, x.context)

    def conv_transpose(self, x: SparseTensor, weight: torch.Tensor, kernel_size: int, stride: int) -> SparseTensor:
        out_stride = x.stride // stride
        maps: CoordinateMaps = x.context.native
        if out_stride not in maps.levels:
            raise ValueError(f"transposed convolution to stride {out_stride}: no such coordinates in this pass")
        out = maps.levels[out_stride]
        feats = ME.MinkowskiConvolutionTransposeFunction.apply(
            x.feats, weight.contiguous(), _kernel_generator(kernel_size, stride), ConvolutionMode.DEFAULT,
            maps.levels[x.stride].key, out.key, maps.manager)
        return SparseTensor(out.coords, feats, out_stride, x.context)
