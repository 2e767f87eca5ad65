"""MinkUNet18A: MinkowskiEngine/OpenScene parameter names and shapes, output shape and invariances."""

import pytest
import torch

from sas_ray.distill.minkunet import MinkUNet18A, load_openscene_state_dict
from sas_ray.distill.sparse import TorchBackend
from sas_ray.errors import InputError


def _openscene_shapes(out_channels: int) -> dict[str, tuple]:
    """The learnable tensors OpenScene's mink_unet.MinkUNet18A(in=3, out) creates on ME 0.5, written out from its
    network_initialization: ME conv kernels [K^3, in, out] ([in, out] for K=1), MinkowskiBatchNorm -> .bn.*"""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.kernel"] = (cin, cout) if k == 1 else (k ** 3, cin, cout)

    def bn(name, c):
        shapes[f"{name}.bn.weight"] = shapes[f"{name}.bn.bias"] = (c,)

    def layer(name, inplanes, planes):
        for i in range(2):
            cin = inplanes if i == 0 else planes
            conv(f"{name}.{i}.conv1", cin, planes, 3); bn(f"{name}.{i}.norm1", planes)
            conv(f"{name}.{i}.conv2", planes, planes, 3); bn(f"{name}.{i}.norm2", planes)
        if inplanes != planes:
            conv(f"{name}.0.downsample.0", inplanes, planes, 1); bn(f"{name}.0.downsample.1", planes)

    conv("conv0p1s1", 3, 32, 5); bn("bn0", 32)
    conv("conv1p1s2", 32, 32, 2); bn("bn1", 32); layer("block1", 32, 32)
    conv("conv2p2s2", 32, 32, 2); bn("bn2", 32); layer("block2", 32, 64)
    conv("conv3p4s2", 64, 64, 2); bn("bn3", 64); layer("block3", 64, 128)
    conv("conv4p8s2", 128, 128, 2); bn("bn4", 128); layer("block4", 128, 256)
    conv("convtr4p16s2", 256, 128, 2); bn("bntr4", 128); layer("block5", 128 + 128, 128)
    conv("convtr5p8s2", 128, 128, 2); bn("bntr5", 128); layer("block6", 128 + 64, 128)
    conv("convtr6p4s2", 128, 96, 2); bn("bntr6", 96); layer("block7", 96 + 32, 96)
    conv("convtr7p2s2", 96, 96, 2); bn("bntr7", 96); layer("block8", 96 + 32, 96)
    conv("final", 96, out_channels, 1)
    return shapes


def test_parameters_match_openscene_minkunet18a():
    model = MinkUNet18A(3, 512)
    ours = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert ours == _openscene_shapes(512)


def _scene(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.zeros(n, 1, dtype=torch.int64), torch.randint(0, 24, (n, 3), generator=g)], 1)
    return torch.unique(coords, dim=0)


def test_forward_shape_and_translation_invariance_by_multiples_of_16():
    torch.manual_seed(0)
    model = MinkUNet18A(3, 8).eval()
    backend = TorchBackend()
    coords = _scene()
    with torch.no_grad():
        out = model(backend.sparse_tensor(coords, torch.ones(len(coords), 3)))
        shifted = coords.clone()
        shifted[:, 1:] += torch.tensor([16, 32, 48])
        out_shifted = model(backend.sparse_tensor(shifted, torch.ones(len(coords), 3)))
    assert out.shape == (len(coords), 8)
    torch.testing.assert_close(out, out_shifted)  # strides are powers of 2 up to 16: the grid aligns again


def test_loads_a_ddp_disnet_state_dict_and_rejects_others():
    source = MinkUNet18A(3, 16)
    state = {f"module.net3d.{k}": v.clone() for k, v in source.state_dict().items()}
    target = MinkUNet18A(3, 16)
    load_openscene_state_dict(target, state, "ckpt.pth.tar")
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    with pytest.raises(InputError, match="ckpt"):
        load_openscene_state_dict(MinkUNet18A(3, 32), state, "ckpt.pth.tar")
    with pytest.raises(InputError, match="missing"):
        load_openscene_state_dict(target, {"net3d.final.kernel": state["module.net3d.final.kernel"]}, "x")
