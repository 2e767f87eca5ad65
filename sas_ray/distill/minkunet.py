"""MinkUNet18A (SPEC §3), the 3D student of OpenScene and SAS, written once over `sas_ray.distill.sparse`.

Module and parameter names and shapes are those of OpenScene's `models/mink_unet.py` on MinkowskiEngine 0.5
(`conv0p1s1.kernel` [125, 3, 32], `bn0.bn.weight`, `block1.0.conv1.kernel` [27, 32, 32], `block5.0.downsample.0
.kernel` [256, 128], `final.kernel` [96, C] ...), so `load_openscene_state_dict` loads a released OpenScene/SAS
checkpoint (`DisNet.net3d.*`, optionally behind DDP's `module.`) into this model, whatever the backend.
Initialisation follows ME: Kaiming-normal (fan_out as ME counts it) for convolutions, ME's uniform reset for
transposed convolutions, BN weight 1 / bias 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from sas_ray.distill.sparse import SparseTensor
from sas_ray.errors import InputError

INIT_DIM = 32
PLANES = (32, 64, 128, 256, 128, 128, 96, 96)
LAYERS = (2, 2, 2, 2, 2, 2, 2, 2)


class SparseConv(nn.Module):
    """ME `MinkowskiConvolution` / `MinkowskiConvolutionTranspose` (no bias): parameter `kernel` in ME layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 transpose: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.transpose = kernel_size, stride, transpose
        volume = kernel_size ** 3
        shape = (in_channels, out_channels) if volume == 1 else (volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        with torch.no_grad():
            if transpose:  # ME reset_parameters(is_transpose=True)
                bound = 1.0 / math.sqrt(out_channels * volume)
                self.kernel.uniform_(-bound, bound)
            else:  # ME.utils.kaiming_normal_(mode="fan_out", nonlinearity="relu") as OpenScene's ResNetBase
                fan_out = in_channels if volume == 1 else out_channels * volume
                self.kernel.normal_(0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.transpose:
            return x.backend.conv_transpose(x, self.kernel, self.kernel_size, self.stride)
        return x.backend.conv(x, self.kernel, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, k={self.kernel_size}, stride={self.stride}, " \
               f"transpose={self.transpose}"


class SparseBatchNorm(nn.Module):
    """ME `MinkowskiBatchNorm`: a BatchNorm1d named `bn` over the feature rows."""

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.feats))


def relu(x: SparseTensor) -> SparseTensor:
    return x.replace(torch.relu(x.feats))


def cat(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """ME.cat: features side by side on the same voxels."""
    if a.stride != b.stride or a.feats.shape[0] != b.feats.shape[0]:
        raise ValueError(f"cat needs the same voxels: strides {a.stride}/{b.stride}, rows "
                         f"{a.feats.shape[0]}/{b.feats.shape[0]}")
    return a.replace(torch.cat([a.feats, b.feats], dim=1))


class BasicBlock(nn.Module):
    """ME `modules.resnet_block.BasicBlock` (expansion 1, stride 1 here)."""

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = SparseConv(inplanes, planes, 3)
        self.norm1 = SparseBatchNorm(planes)
        self.conv2 = SparseConv(planes, planes, 3)
        self.norm2 = SparseBatchNorm(planes)
        self.downsample = downsample

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return relu(out.replace(out.feats + residual.feats))


def _layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    """OpenScene `ResNetBase._make_layer` at stride 1: a 1x1 conv + BN shortcut when the width changes."""
    downsample = None
    if inplanes != planes:
        downsample = nn.Sequential(SparseConv(inplanes, planes, 1), SparseBatchNorm(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, downsample), *[BasicBlock(planes, planes)
                                                                      for _ in range(blocks - 1)])


class MinkUNet18A(nn.Module):
    """Sparse UNet: k=5 stem, 4 stride-2 downs, 4 transposed ups with skip concat, 1x1 head (SPEC §3)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 512):
        super().__init__()
        self.out_channels = out_channels
        p = PLANES
        self.conv0p1s1, self.bn0 = SparseConv(in_channels, INIT_DIM, 5), SparseBatchNorm(INIT_DIM)
        self.conv1p1s2, self.bn1 = SparseConv(INIT_DIM, INIT_DIM, 2, 2), SparseBatchNorm(INIT_DIM)
        self.block1 = _layer(INIT_DIM, p[0], LAYERS[0])
        self.conv2p2s2, self.bn2 = SparseConv(p[0], p[0], 2, 2), SparseBatchNorm(p[0])
        self.block2 = _layer(p[0], p[1], LAYERS[1])
        self.conv3p4s2, self.bn3 = SparseConv(p[1], p[1], 2, 2), SparseBatchNorm(p[1])
        self.block3 = _layer(p[1], p[2], LAYERS[2])
        self.conv4p8s2, self.bn4 = SparseConv(p[2], p[2], 2, 2), SparseBatchNorm(p[2])
        self.block4 = _layer(p[2], p[3], LAYERS[3])
        self.convtr4p16s2, self.bntr4 = SparseConv(p[3], p[4], 2, 2, transpose=True), SparseBatchNorm(p[4])
        self.block5 = _layer(p[4] + p[2], p[4], LAYERS[4])
        self.convtr5p8s2, self.bntr5 = SparseConv(p[4], p[5], 2, 2, transpose=True), SparseBatchNorm(p[5])
        self.block6 = _layer(p[5] + p[1], p[5], LAYERS[5])
        self.convtr6p4s2, self.bntr6 = SparseConv(p[5], p[6], 2, 2, transpose=True), SparseBatchNorm(p[6])
        self.block7 = _layer(p[6] + p[0], p[6], LAYERS[6])
        self.convtr7p2s2, self.bntr7 = SparseConv(p[6], p[7], 2, 2, transpose=True), SparseBatchNorm(p[7])
        self.block8 = _layer(p[7] + INIT_DIM, p[7], LAYERS[7])
        self.final = SparseConv(p[7], out_channels, 1)

    def forward(self, x: SparseTensor, rows: torch.Tensor | None = None, with_trunk: bool = False):
        """[V, out_channels] features in the row order of the input voxels; only voxels `rows` when given (the
        1x1 head is pointwise, so a loss over a 20k subset need not hold V x 512 outputs and their gradients).
        `with_trunk` also returns the [V, 96] features the head reads (for outputs needed without gradients)."""
        out_p1 = relu(self.bn0(self.conv0p1s1(x)))
        out_b1p2 = self.block1(relu(self.bn1(self.conv1p1s2(out_p1))))
        out_b2p4 = self.block2(relu(self.bn2(self.conv2p2s2(out_b1p2))))
        out_b3p8 = self.block3(relu(self.bn3(self.conv3p4s2(out_b2p4))))
        out = self.block4(relu(self.bn4(self.conv4p8s2(out_b3p8))))
        out = self.block5(cat(relu(self.bntr4(self.convtr4p16s2(out))), out_b3p8))
        out = self.block6(cat(relu(self.bntr5(self.convtr5p8s2(out))), out_b2p4))
        out = self.block7(cat(relu(self.bntr6(self.convtr6p4s2(out))), out_b1p2))
        out = self.block8(cat(relu(self.bntr7(self.convtr7p2s2(out))), out_p1))
        trunk = out.feats
        pred = self.head(trunk if rows is None else trunk[rows])
        return (pred, trunk) if with_trunk else pred

    def head(self, trunk: torch.Tensor) -> torch.Tensor:
        """The final 1x1 convolution (no bias, as OpenScene's) on trunk feature rows."""
        return trunk @ self.final.kernel.to(trunk.dtype)


def load_openscene_state_dict(model: MinkUNet18A, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load an OpenScene/SAS checkpoint's `state_dict` (keys `[module.]net3d.<name>` or bare) strictly."""
    stripped = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "net3d."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    try:
        result = model.load_state_dict(stripped, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise InputError(f"{source}: not a MinkUNet18A state dict of this width: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{source}: not a MinkUNet18A state dict: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
