"""The spconv backend against the torch backend (itself tested against dense convolutions): every op and the whole
MinkUNet18A, forward and weight/feature gradients, on CPU in float64 with the same ME-layout weights."""

import pytest
import torch

pytest.importorskip("spconv.pytorch")

from sas_ray.distill.minkunet import MinkUNet18A  # noqa: E402
from sas_ray.distill.sparse import TorchBackend  # noqa: E402
from sas_ray.distill.spconv_backend import SpconvBackend  # noqa: E402


def _random_voxels(n: int, seed: int, extent: int = 10, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, extent, (n, 3), generator=g) + shift
    return torch.unique(torch.cat([torch.randint(0, 2, (n, 1), generator=g), xyz], 1), dim=0)


def _leaves(*shapes, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for shape in shapes]


def _grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, leaves)


def _rows_by_coords(coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Feature rows in sorted coordinate order (backends may order a strided tensor's voxels differently)."""
    keys = ((coords[:, 0] * 4096 + coords[:, 1] + 1024) * 4096 + coords[:, 2] + 1024) * 4096 + coords[:, 3] + 1024
    return feats[torch.argsort(keys)]


@pytest.mark.parametrize("k", [3, 5])
def test_submanifold_conv_and_gradients_match_torch_backend(k):
    coords = _random_voxels(300, seed=k)
    outputs = []
    for backend in (TorchBackend(), SpconvBackend()):
        feats, kernel = _leaves((len(coords), 4), (k ** 3, 4, 6), seed=1)
        out = backend.conv(backend.sparse_tensor(coords, feats), kernel, k, 1)
        assert out.stride == 1 and torch.equal(out.coords, coords)
        probe = torch.randn(out.feats.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        outputs.append((out.feats, *_grads((out.feats * probe).sum(), [feats, kernel])))
    for ours, reference in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(ours, reference)


def test_strided_conv_and_transpose_match_torch_backend_with_negative_coordinates():
    coords = _random_voxels(300, seed=3, shift=-37)  # floor of negative coordinates, as ME
    results = []
    for backend in (TorchBackend(), SpconvBackend()):
        feats, down_w, up_w = _leaves((len(coords), 3), (8, 3, 5), (8, 5, 2), seed=4)
        x = backend.sparse_tensor(coords, feats)
        down = backend.conv(x, down_w, 2, 2)
        up = backend.conv_transpose(down.replace(torch.relu(down.feats)), up_w, 2, 2)
        assert down.stride == 2 and up.stride == 1 and torch.equal(up.coords, coords)
        probe = torch.randn(up.feats.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        results.append((torch.unique(down.coords, dim=0), _rows_by_coords(down.coords, down.feats), up.feats,
                        *_grads((up.feats * probe).sum(), [feats, down_w, up_w])))
    torch_result, spconv_result = results
    assert torch.equal(spconv_result[0], torch_result[0])
    for ours, reference in zip(spconv_result[1:], torch_result[1:]):
        torch.testing.assert_close(ours, reference)


def test_minkunet18a_forward_and_weight_gradients_match_torch_backend():
    coords = _random_voxels(400, seed=6, extent=24)
    torch.manual_seed(0)
    reference_model = MinkUNet18A(3, 8).double()  # train mode: batch statistics, as in training
    model = MinkUNet18A(3, 8).double()
    model.load_state_dict(reference_model.state_dict())
    probe = torch.randn(len(coords), 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    results = []
    for backend, net in ((TorchBackend(), reference_model), (SpconvBackend(), model)):
        out = net(backend.sparse_tensor(coords, torch.ones(len(coords), 3, dtype=torch.float64)))
        params = list(net.parameters())
        results.append((out, *_grads((out * probe).sum(), params)))
    for ours, reference in zip(results[1], results[0]):
        torch.testing.assert_close(ours, reference)


def test_strided_conv_is_right_with_several_threads():
    """spconv's CPU scatter-add races between OpenMP threads unless serialized (spconv_backend docstring)."""
    coords = _random_voxels(4000, seed=9, extent=24)
    feats, kernel = _leaves((len(coords), 32), (8, 32, 32), seed=10)
    reference = TorchBackend().conv(TorchBackend().sparse_tensor(coords, feats), kernel, 2, 2)
    expected = _rows_by_coords(reference.coords, reference.feats)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        for _ in range(30):
            backend = SpconvBackend()
            out = backend.conv(backend.sparse_tensor(coords, feats), kernel, 2, 2)
            torch.testing.assert_close(_rows_by_coords(out.coords, out.feats), expected)
    finally:
        torch.set_num_threads(threads)


def test_rejects_convolutions_it_cannot_map():
    coords = _random_voxels(50, seed=8)
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
    coords = _random_voxels(3000, seed=11, extent=20, shift=-7).cuda()
    results = []
    for backend, dtype in ((TorchBackend(), torch.float64), (SpconvBackend(), torch.float32)):
        leaves = [t.detach().to("cuda", dtype).requires_grad_()
                  for t in _leaves((len(coords), 16), (27, 16, 32), (8, 32, 32), (8, 32, 8), seed=12)]
        feats, subm_w, down_w, up_w = leaves
        x = backend.conv(backend.sparse_tensor(coords, feats), subm_w, 3, 1)
        down = backend.conv(x, down_w, 2, 2)
        up = backend.conv_transpose(down, up_w, 2, 2)
        probe = torch.randn(up.feats.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
        results.append([x.feats, _rows_by_coords(down.coords, down.feats), up.feats,
                        *_grads((up.feats.double() * probe.cuda()).sum(), leaves)])
    torch.manual_seed(0)
    state = MinkUNet18A(3, 16).state_dict()
    probe = torch.randn(len(coords), 16, generator=torch.Generator().manual_seed(14), dtype=torch.float64).cuda()
    for backend, dtype, result in ((TorchBackend(), torch.float64, results[0]),
                                   (SpconvBackend(), torch.float32, results[1])):
        net = MinkUNet18A(3, 16)
        net.load_state_dict(state)
        net = net.to("cuda", dtype).eval()
        out = net(backend.sparse_tensor(coords, torch.ones(len(coords), 3, device="cuda", dtype=dtype)))
        result.extend([out, *_grads((out.double() * probe).sum(), list(net.parameters()))])
    for ours, reference in zip(results[1], results[0]):
        _assert_close_relative(ours, reference, 1e-4)
