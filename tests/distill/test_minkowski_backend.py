"""The MinkowskiEngine backend against the torch backend (itself tested against dense convolutions): every op and the
whole MinkUNet18A, forward and weight/feature gradients, on CPU in float64 with the same ME-layout weights; a
checkpoint moved between them; and the torch backend against ME's own `MinkowskiConvolution` modules (the library
OpenScene trains with) holding the same weights."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

ME = pytest.importorskip("MinkowskiEngine")

from sas_ray.distill.backends import get_backend  # noqa: E402
from sas_ray.distill.checkpoint import model_tensors  # noqa: E402
from sas_ray.distill.minkowski_backend import MinkowskiBackend  # noqa: E402
from sas_ray.distill.minkunet import MinkUNet18A  # noqa: E402
from sas_ray.distill.sparse import TorchBackend  # noqa: E402

from backend_cases import (  # noqa: E402,I001
    assert_minkunet18a_matches_torch,
    assert_strided_conv_matches_torch,
    leaves,
    probe,
    random_voxels,
    rows_by_coords,
)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_stride1_conv_and_gradients_match_torch_backend(k):
    coords = random_voxels(300, seed=k, shift=-4)
    shape = (4, 6) if k == 1 else (k ** 3, 4, 6)
    outputs = []
    for backend in (TorchBackend(), MinkowskiBackend()):
        feats, kernel = leaves((len(coords), 4), shape, seed=1)
        out = backend.conv(backend.sparse_tensor(coords, feats), kernel, k, 1)
        assert out.stride == 1 and torch.equal(out.coords, coords)
        outputs.append((out.feats, *torch.autograd.grad((out.feats * probe(out.feats.shape, 2)).sum(),
                                                        [feats, kernel])))
    for ours, reference in zip(outputs[1], outputs[0]):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("k", [2, 3])
def test_strided_conv_and_transpose_match_torch_backend_with_negative_coordinates(k):
    assert_strided_conv_matches_torch(MinkowskiBackend(), k)


def test_minkunet18a_forward_and_weight_gradients_match_torch_backend():
    assert_minkunet18a_matches_torch(MinkowskiBackend())


def test_checkpoint_trained_on_one_backend_gives_the_same_outputs_on_the_other(tmp_path):
    coords = random_voxels(300, seed=8, extent=20)
    torch.manual_seed(1)
    trained = MinkUNet18A(3, 8)
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2)
    backend = MinkowskiBackend()
    for _ in range(2):  # float32 training steps: the checkpoint is no longer the initialisation
        loss = trained(backend.sparse_tensor(coords, torch.ones(len(coords), 3))).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_file(model_tensors(trained), str(tmp_path / "model.safetensors"))
    restored = MinkUNet18A(3, 8)
    restored.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    feats = torch.ones(len(coords), 3, dtype=torch.float64)
    with torch.no_grad():  # eval mode (running statistics), float64: equal up to summation order
        on_me = trained.double().eval()(backend.sparse_tensor(coords, feats))
        on_torch = restored.double().eval()(TorchBackend().sparse_tensor(coords, feats))
    torch.testing.assert_close(on_torch, on_me)


@pytest.mark.parametrize("k, stride", [(1, 1), (3, 1), (5, 1), (2, 2), (3, 2)])
def test_torch_backend_conv_equals_me_convolution_module_with_the_same_weights(k, stride):
    """ME's `MinkowskiConvolution` (as in OpenScene's mink_unet.py) given our kernel: the independent reference for
    the kernel offset order and the strided output voxels."""
    coords = random_voxels(300, seed=9 + k, shift=-5)
    feats, kernel = leaves((len(coords), 4), (4, 6) if k == 1 else (k ** 3, 4, 6), seed=10)
    conv = ME.MinkowskiConvolution(4, 6, kernel_size=k, stride=stride, dimension=3).double()
    with torch.no_grad():
        conv.kernel.copy_(kernel)
        me_out = conv(ME.SparseTensor(feats, coordinates=coords.int()))
        backend = TorchBackend()
        out = backend.conv(backend.sparse_tensor(coords, feats), kernel, k, stride)
    assert me_out.tensor_stride == [stride] * 3
    assert torch.equal(torch.unique(out.coords, dim=0), torch.unique(me_out.C.long(), dim=0))
    torch.testing.assert_close(rows_by_coords(out.coords, out.feats), rows_by_coords(me_out.C.long(), me_out.F))


def test_torch_backend_transpose_equals_me_convolution_transpose_module_with_the_same_weights():
    """ME's `MinkowskiConvolutionTranspose` (expand_coordinates=False, as OpenScene) after a strided ME convolution:
    the up path lands on the existing finer voxels with the same kernel offsets."""
    coords = random_voxels(300, seed=12, shift=-5)
    feats, down_kernel, up_kernel = leaves((len(coords), 4), (8, 4, 6), (8, 6, 3), seed=13)
    down = ME.MinkowskiConvolution(4, 6, kernel_size=2, stride=2, dimension=3).double()
    up = ME.MinkowskiConvolutionTranspose(6, 3, kernel_size=2, stride=2, dimension=3).double()
    with torch.no_grad():
        down.kernel.copy_(down_kernel)
        up.kernel.copy_(up_kernel)
        me_out = up(down(ME.SparseTensor(feats, coordinates=coords.int())))
        backend = TorchBackend()
        x = backend.conv(backend.sparse_tensor(coords, feats), down_kernel, 2, 2)
        out = backend.conv_transpose(x, up_kernel, 2, 2)
    assert torch.equal(torch.unique(out.coords, dim=0), torch.unique(me_out.C.long(), dim=0))
    torch.testing.assert_close(rows_by_coords(out.coords, out.feats), rows_by_coords(me_out.C.long(), me_out.F))


def test_minkowski_is_chosen_by_name_only_and_imported_lazily():
    assert get_backend("minkowski").name == "minkowski"
    if not torch.cuda.is_available():
        assert get_backend("auto").name == "torch"
    code = "import sys, sas_ray.distill.backends, sas_ray.distill.minkunet; sys.exit('MinkowskiEngine' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_rejects_duplicate_voxels_and_missing_finer_coordinates():
    coords = random_voxels(50, seed=14)
    backend = MinkowskiBackend()
    with pytest.raises(ValueError, match="unique rows"):
        backend.sparse_tensor(torch.cat([coords, coords[:3]]), torch.ones(len(coords) + 3, 2))
    with pytest.raises(ValueError, match="no such coordinates"):
        backend.conv_transpose(backend.sparse_tensor(coords, torch.ones(len(coords), 2)), torch.ones(8, 2, 2), 2, 2)
