"""The Triton kernels of SAM's mask decoder (sas_ray.models.sam_decoder_triton) against float64 references, on the CPU
through Triton's interpreter: the module reads TRITON_INTERPRET at import, so the checks run in a child process."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _checks() -> dict:
    """Run in the child (TRITON_INTERPRET=1): normwise relative errors of the fused paths against float64."""
    import copy

    import torch

    import sas_ray.models  # noqa: F401  (the CPU torchvision shim)
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    from sas_ray.models import sam_decoder_triton as kernels
    from sas_ray.models.sam_fast import FastMaskDecoder

    torch.manual_seed(0)
    size = 16  # image tokens a side (SAM: 64); channels are SAM's real 256 / 64 / 32
    prompts = PromptEncoder(embed_dim=256, image_embedding_size=(size, size), input_image_size=(4 * size,) * 2,
                            mask_in_chans=16).eval()
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                        num_heads=8)).eval()
    up1, norm, _, up2, _ = decoder.output_upscaling
    for module in (up1, norm, up2):  # SAM's init leaves the norm at (1, 0): draw it too
        for param in module.parameters():
            param.data.normal_(0, 0.3)
    errors = {}

    def rel(out, ref):
        return ((out.double() - ref).norm() / ref.norm()).item()

    with torch.inference_mode():
        # the kernel alone: half inputs, float64 reference of the same inputs; prompt 1 not wanted stays zero
        keys = torch.randn(3, size, size, 256).half()
        hyper = torch.randn(3, 3, 32).half()
        out = kernels.fused_mask_upscaling(keys, hyper, torch.tensor([True, False, True]), up1, norm, up2)
        ref = FastMaskDecoder(copy.deepcopy(decoder).double(), triton=False)._masks_torch(
            hyper.double(), keys.double())
        errors["upscaling"] = max(rel(out[p], ref[p]) for p in (0, 2))
        errors["upscaling_unwanted_zero"] = bool((out[1] == 0).all())
        errors["upscaling_wanted_written"] = bool((out[[0, 2]] != 0).all())
        errors["available"] = kernels.available(keys, 256, 64, 32) and not kernels.available(keys.float(), 256)
        # the image tokens' attention to each prompt's 7 tokens, its output projection, a residual and the norm (+ pe)
        # in one kernel: queries and residual shared (first block) or per prompt
        layer = decoder.transformer.layers[0].norm4
        for param in layer.parameters():
            param.data.normal_(0, 0.5)
        attn = decoder.transformer.layers[0].cross_attn_image_to_token
        k, v = torch.randn(3, 7, 128).half(), torch.randn(3, 7, 128).half()
        pe = torch.randn(1, size * size, 256).half()
        for name, count in (("shared", 1), ("per_prompt", 3)):
            q, residual = torch.randn(count, size * size, 128).half(), torch.randn(count, size * size, 256).half()
            y, y_pe = kernels.attend_add_norm(q, k, v, attn.num_heads, attn.out_proj, residual, layer, pe)
            heads = [x.double().unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for x in (q, k, v)]
            weights = torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / 4.0, dim=-1)  # head dim 16
            update = copy.deepcopy(attn.out_proj).double()((weights @ heads[2]).transpose(1, 2).flatten(2))
            ref = torch.nn.functional.layer_norm(residual.double() + update, (256,), layer.weight.double(),
                                                 layer.bias.double(), layer.eps)
            errors[f"attend_norm_{name}"] = max(rel(y, ref), rel(y_pe, ref + pe.double()))
        # the whole decoder in half precision, fused vs PyTorch upscaling, both against float64 SAM
        g = torch.Generator().manual_seed(1)
        image = torch.randn(1, 256, size, size, generator=g)
        coords = torch.rand(6, 1, 2, generator=g) * 4 * size
        sparse, dense = prompts(points=(coords, torch.ones(6, 1, dtype=torch.int)), boxes=None, masks=None)
        pe = prompts.get_dense_pe()
        ref_masks, ref_iou = copy.deepcopy(decoder).double()(image.double(), pe.double(), sparse.double(),
                                                             dense.double(), True)
        for upscaling, triton in (("fused", True), ("torch", False)):
            fast = FastMaskDecoder(copy.deepcopy(decoder), dtype=torch.float16, triton=triton)
            masks, iou = fast(image, pe, sparse, dense, True)
            cut = iou.max(dim=1).values.float().median().item()
            wanted = (iou > cut).any(dim=1)
            errors[f"decoder_{upscaling}"] = rel(masks, ref_masks)
            skipped, _ = fast(image, pe, sparse, dense, True, skip_below=cut)
            errors[f"skip_{upscaling}"] = rel(skipped[wanted], ref_masks[wanted])
            errors[f"skip_zero_{upscaling}"] = bool((skipped[~wanted] == 0).all()) and 0 < int(wanted.sum()) < 6
            single, _ = fast(image, pe, sparse, dense, False)
            errors[f"single_{upscaling}"] = rel(single, copy.deepcopy(decoder).double()(
                image.double(), pe.double(), sparse.double(), dense.double(), False)[0])
    return errors


@pytest.fixture(scope="module")
def checks() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_equal_float64_references(checks):
    # half operands and half intermediates (after each GELU) bound the upscaling's error near 2^-11 per rounding,
    # ~1e-3 in all; the norm and the attention round only their half outputs (~3e-4). A wrong sub-pixel order, norm
    # axis, head split, broadcast or hypernetwork row gives errors of order 1
    assert checks["available"]
    assert checks["upscaling"] < 2e-3
    assert checks["upscaling_unwanted_zero"] and checks["upscaling_wanted_written"]
    for name in ("shared", "per_prompt"):
        assert checks[f"attend_norm_{name}"] < 1e-3, name


def test_decoder_with_kernels_is_as_close_to_sam_as_the_pytorch_path(checks):
    # both run in half precision; the kernels round less, so the decoder with them may not be further from float64
    # SAM than the PyTorch decoder is (10% slack for rounding that lands either way)
    for case in ("decoder", "skip", "single"):
        assert checks[f"{case}_fused"] <= 1.1 * checks[f"{case}_torch"] + 1e-4, case
        assert checks[f"{case}_torch"] < 5e-3, case
    assert checks["skip_zero_fused"] and checks["skip_zero_torch"]


def test_decoder_falls_back_to_pytorch_when_the_kernels_cannot_run(monkeypatch):
    """Told the kernels apply where Triton cannot launch them (CPU tensors, no interpreter), the decoder warns once,
    answers with its PyTorch path (the same masks) and stays there."""
    import copy

    import torch

    import sas_ray.models.sam_fast as sam_fast
    from test_sam_masks import sam_decoder

    prompts, decoder = sam_decoder()
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 256, 64, 64, generator=g)
    with torch.inference_mode():
        sparse, dense = prompts(points=(torch.rand(3, 1, 2, generator=g) * 1024, torch.ones(3, 1, dtype=torch.int)),
                                boxes=None, masks=None)
        pe = prompts.get_dense_pe()
        expected = sam_fast.FastMaskDecoder(copy.deepcopy(decoder), triton=False)(image, pe, sparse, dense, True)
        fast = sam_fast.FastMaskDecoder(copy.deepcopy(decoder), triton=True)
        monkeypatch.setattr(sam_fast, "available", lambda *args: True)
        with pytest.warns(RuntimeWarning, match="Triton kernels failed"):
            masks, iou = fast(image, pe, sparse, dense, True)
    assert not fast.triton
    torch.testing.assert_close(masks, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(iou, expected[1], rtol=0, atol=0)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(json.dumps(_checks()))
