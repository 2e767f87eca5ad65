"""The torch sparse-conv backend against dense torch convolutions on a voxel grid (an independent reference)."""

import pytest
import torch
import torch.nn.functional as F

from sas_ray.distill.sparse import TorchBackend, kernel_offsets

GRID = 8


def _random_voxels(n: int, seed: int, batches: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batches, (n, 1), generator=g), torch.randint(0, GRID, (n, 3), generator=g)], 1)
    return torch.unique(coords, dim=0)


def _dense(coords: torch.Tensor, feats: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """[B, C, X, Y, Z] grid at `stride`."""
    grid = torch.zeros(2, feats.shape[1], GRID // stride, GRID // stride, GRID // stride, dtype=feats.dtype)
    c = coords[:, 1:] // stride
    grid[coords[:, 0], :, c[:, 0], c[:, 1], c[:, 2]] = feats
    return grid


def _dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME layout [K^3, in, out] -> conv3d [out, in, kx, ky, kz] via the documented offset order (x fastest)."""
    w = torch.zeros(kernel.shape[2], kernel.shape[1], k, k, k, dtype=kernel.dtype)
    for index, (dx, dy, dz) in enumerate(kernel_offsets(k).tolist()):
        shift = 0 if k % 2 == 0 else k // 2
        w[:, :, dx + shift, dy + shift, dz + shift] = kernel[index].t()
    return w


def _at(grid: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    c = coords[:, 1:] // stride
    return grid[coords[:, 0], :, c[:, 0], c[:, 1], c[:, 2]]


def test_kernel_offsets_follow_minkowski_order():
    assert kernel_offsets(3)[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert kernel_offsets(2).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                          [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize("k", [3, 5])
def test_submanifold_conv_matches_dense_conv3d(k):
    coords = _random_voxels(120, seed=k)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(len(coords), 4, generator=g, dtype=torch.float64)
    kernel = torch.randn(k ** 3, 4, 6, generator=g, dtype=torch.float64)
    out = TorchBackend().conv(TorchBackend().sparse_tensor(coords, feats), kernel, k, 1)
    dense = F.conv3d(_dense(coords, feats), _dense_weight(kernel, k), padding=k // 2)
    assert out.stride == 1 and torch.equal(out.coords, coords)
    torch.testing.assert_close(out.feats, _at(dense, coords, 1))


def test_strided_conv_and_transpose_match_dense():
    coords = _random_voxels(150, seed=3)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(len(coords), 3, generator=g, dtype=torch.float64)
    down_w = torch.randn(8, 3, 5, generator=g, dtype=torch.float64)
    up_w = torch.randn(8, 5, 2, generator=g, dtype=torch.float64)
    backend = TorchBackend()
    x = backend.sparse_tensor(coords, feats)
    down = backend.conv(x, down_w, 2, 2)
    # Output voxels: the input's, floored to even coordinates.
    expected = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2 * 2], 1), dim=0)
    assert down.stride == 2 and torch.equal(torch.unique(down.coords, dim=0), expected)
    dense_down = F.conv3d(_dense(coords, feats), _dense_weight(down_w, 2), stride=2)
    torch.testing.assert_close(down.feats, _at(dense_down, down.coords, 2))
    # Transposed back onto the stride-1 voxels: conv_transpose3d sampled at the existing fine voxels.
    up = backend.conv_transpose(down, up_w, 2, 2)
    assert up.stride == 1 and torch.equal(up.coords, coords)
    dense_up = F.conv_transpose3d(_dense(down.coords, down.feats, 2), _dense_weight(up_w, 2).transpose(0, 1),
                                  stride=2)
    torch.testing.assert_close(up.feats, _at(dense_up, coords, 1))


def test_gradients_flow_to_features_and_kernel():
    coords = _random_voxels(60, seed=5)
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    backend = TorchBackend()
    assert torch.autograd.gradcheck(lambda f, w: backend.conv(backend.sparse_tensor(coords, f), w, 3, 1).feats,
                                    (feats, kernel))
