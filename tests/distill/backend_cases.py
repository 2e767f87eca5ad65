"""Inputs and the whole-network check shared by the native backends' tests (each against the torch backend)."""

import torch

from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.sparse import TorchBackend


def random_voxels(n: int, seed: int, extent: int = 10, shift: int = 0) -> torch.Tensor:
    """Unique (batch, x, y, z) rows over 2 batch items."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, extent, (n, 3), generator=g) + shift
    return torch.unique(torch.cat([torch.randint(0, 2, (n, 1), generator=g), xyz], 1), dim=0)


def leaves(*shapes, seed: int) -> list[torch.Tensor]:
    """float64 random tensors that require gradients."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for shape in shapes]


def probe(shape, seed: int) -> torch.Tensor:
    """Random float64 weights turning an output into a scalar whose gradients check every element."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rows_by_coords(coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Feature rows in sorted coordinate order (backends may order a strided tensor's voxels differently)."""
    keys = ((coords[:, 0] * 4096 + coords[:, 1] + 1024) * 4096 + coords[:, 2] + 1024) * 4096 + coords[:, 3] + 1024
    return feats[torch.argsort(keys)]


def assert_strided_conv_matches_torch(backend, k: int) -> None:
    """A stride-2 convolution of kernel `k` then its transpose, on voxels with negative coordinates (their floor, as
    ME): `backend`'s output coordinates, features and gradients equal the torch backend's."""
    coords = random_voxels(300, seed=3, shift=-37)
    results = []
    for each in (TorchBackend(), backend):
        feats, down_w, up_w = leaves((len(coords), 3), (k ** 3, 3, 5), (k ** 3, 5, 2), seed=4)
        down = each.conv(each.sparse_tensor(coords, feats), down_w, k, 2)
        up = each.conv_transpose(down.replace(torch.relu(down.feats)), up_w, k, 2)
        assert down.stride == 2 and up.stride == 1 and torch.equal(up.coords, coords)
        grads = torch.autograd.grad((up.feats * probe(up.feats.shape, 5)).sum(), [feats, down_w, up_w])
        results.append((torch.unique(down.coords, dim=0), rows_by_coords(down.coords, down.feats), up.feats, *grads))
    reference, ours = results
    assert torch.equal(ours[0], reference[0])
    for mine, theirs in zip(ours[1:], reference[1:]):
        torch.testing.assert_close(mine, theirs)


def assert_minkunet18a_matches_torch(backend) -> None:
    """MinkUNet18A in float64, train mode (batch statistics, as in training): `backend`'s output and every weight
    gradient equal the torch backend's for the same weights."""
    coords = random_voxels(400, seed=6, extent=24)
    torch.manual_seed(0)
    reference_model = MinkUNet18A(3, 8).double()
    model = MinkUNet18A(3, 8).double()
    model.load_state_dict(reference_model.state_dict())
    weights = probe((len(coords), 8), 7)
    results = []
    for each, net in ((TorchBackend(), reference_model), (backend, model)):
        out = net(each.sparse_tensor(coords, torch.ones(len(coords), 3, dtype=torch.float64)))
        results.append((out, *torch.autograd.grad((out * weights).sum(), list(net.parameters()))))
    for ours, reference in zip(results[1], results[0]):
        torch.testing.assert_close(ours, reference)
