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
