"""The spconv backend against the torch backend (itself tested against dense convolutions): every op and the whole
MinkUNet18A, forward and weight/feature gradients, on CPU in float64 with the same ME-layout weights."""

import pytest
import torch

pytest.importorskip("spconv.pytorch")

from sas_ray.distill.minkunet import MinkUNet18A  # noqa: E402
from sas_ray.distill.sparse import TorchBackend  # noqa: E402
from sas_ray.distill.spconv_backend import SpconvBackend  # noqa: E402

from backend_cases import (  # noqa: E402,I001
    assert_minkunet18a_matches_torch,
    assert_strided_conv_matches_torch,
    leaves,
    probe,
    random_voxels,
    rows_by_coords,
)


@pytest.mark.parametrize("k", [3, 5])
def test_submanifold_conv_and_gradients_match_torch_backend(k):
    coords = random_voxels(300, seed=k)
    outputs = []
    for backend in (TorchBackend(), SpconvBackend()):
        feats, kernel = leaves((len(coords), 4), (k ** 3, 4, 6), seed=1)
        out = backend.conv(backend.sparse_tensor(coords, feats), kernel, k, 1)
        assert out.stride == 1 and torch.equal(out.coords, coords)
        outputs.append((out.feats, *torch.autograd.grad((out.feats * probe(out.feats.shape, 2)).sum(),
                                                        [feats, kernel])))
    for ours, reference in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(ours, reference)


def test_strided_conv_and_transpose_match_torch_backend_with_negative_coordinates():
    assert_strided_conv_matches_torch(SpconvBackend(), 2)


def test_minkunet18a_forward_and_weight_gradients_match_torch_backend():
    assert_minkunet18a_matches_torch(SpconvBackend())


def test_strided_conv_is_right_with_several_threads():
    """spconv's CPU scatter-add races between OpenMP threads unless serialized (spconv_backend docstring)."""
    coords = random_voxels(4000, seed=9, extent=24)
    feats, kernel = leaves((len(coords), 32), (8, 32, 32), seed=10)
    reference = TorchBackend().conv(TorchBackend().sparse_tensor(coords, feats), kernel, 2, 2)
    expected = rows_by_coords(reference.coords, reference.feats)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        for _ in range(30):
            backend = SpconvBackend()
            out = backend.conv(backend.sparse_tensor(coords, feats), kernel, 2, 2)
            torch.testing.assert_close(rows_by_coords(out.coords, out.feats), expected)
    finally:
        torch.set_num_threads(threads)


def test_rejects_convolutions_it_cannot_map():
    coords = random_voxels(50, seed=8)
    backend = SpconvBackend()
    x = backend.sparse_tensor(coords, torch.ones(len(coords), 2))
    with pytest.raises(ValueError, match="kernel_size == stride"):
        backend.conv(x, torch.ones(27, 2, 2), 3, 2)
    with pytest.raises(ValueError, match="odd kernel"):
        backend.conv(x, torch.ones(8, 2, 2), 2, 1)
    with pytest.raises(ValueError, match="no such coordinates"):
        backend.conv_transpose(x, torch.ones(8, 2, 2), 2, 2)


def _assert_close_relative(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    error = (ours.double() - reference.double()).abs().max() / reference.double().abs().max()
    assert error <= tolerance, f"max error {error:.2e} of the reference's magnitude"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_implicit_gemm_matches_torch_backend():
    """On CUDA spconv takes other kernels (implicit GEMM, float32): ops and MinkUNet18A (eval mode, where float32
    is well conditioned) against the float64 torch backend."""
    coords = random_voxels(3000, seed=11, extent=20, shift=-7).cuda()
    results = []
    for backend, dtype in ((TorchBackend(), torch.float64), (SpconvBackend(), torch.float32)):
        inputs = [t.detach().to("cuda", dtype).requires_grad_()
                  for t in leaves((len(coords), 16), (27, 16, 32), (8, 32, 32), (8, 32, 8), seed=12)]
        feats, subm_w, down_w, up_w = inputs
        x = backend.conv(backend.sparse_tensor(coords, feats), subm_w, 3, 1)
        down = backend.conv(x, down_w, 2, 2)
        up = backend.conv_transpose(down, up_w, 2, 2)
        results.append([x.feats, rows_by_coords(down.coords, down.feats), up.feats,
                        *torch.autograd.grad((up.feats.double() * probe(up.feats.shape, 13).cuda()).sum(), inputs)])
    torch.manual_seed(0)
    state = MinkUNet18A(3, 16).state_dict()
    weights = probe((len(coords), 16), 14).cuda()
    for backend, dtype, result in ((TorchBackend(), torch.float64, results[0]),
                                   (SpconvBackend(), torch.float32, results[1])):
        net = MinkUNet18A(3, 16)
        net.load_state_dict(state)
        net = net.to("cuda", dtype).eval()
        out = net(backend.sparse_tensor(coords, torch.ones(len(coords), 3, device="cuda", dtype=dtype)))
        result.extend([out, *torch.autograd.grad((out.double() * weights).sum(), list(net.parameters()))])
    for ours, reference in zip(results[1], results[0]):
        _assert_close_relative(ours, reference, 1e-4)
