"""SAM's mask decoder over 256 prompts on one H100/H200: each Triton kernel of sas_ray.models.sam_decoder_triton vs
the PyTorch it replaces, the token-to-image attention with its key and value projections absorbed vs projected, and
the whole FastMaskDecoder forward with and without the kernels, at SAM's real sizes (64x64 image tokens, 256
channels, 8 heads, 7 tokens a prompt), half precision, random inputs and weights.

  python -m benchmarks.sam_decoder_kernels --out docs/perf/sam-decoder-kernels-h100.jsonl

One JSON line per (part, path): median ms (triton.testing.do_bench) and the normwise error against float64 on the
same inputs. The upscaling is also timed at each block shape.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sas_ray.models  # noqa: E402,F401
from benchmarks import emit  # noqa: E402
from sas_ray.models import sam_decoder_triton as kernels  # noqa: E402
from sas_ray.models.sam_fast import FastMaskDecoder, _attend, _attend_image  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    import triton.testing
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: checks the script (TRITON_INTERPRET=1, no timing)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, dev, half = args.prompts, args.device, torch.float16
    decoder = MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(
        depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)).to(dev).eval()
    for param in decoder.parameters():
        param.data.normal_(0, 0.05)
    base = {"bench": "sam-decoder-kernels", "prompts": n,
            "device": torch.cuda.get_device_name() if dev == "cuda" else dev}

    def report(part, path, fn, ref=None, **extra):
        with torch.inference_mode():
            out = fn()
            out = out[0] if isinstance(out, tuple) else out
            err = None if ref is None else ((out.double() - ref).norm() / ref.norm()).item()
            ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") if dev == "cuda" else None
        emit({**base, "part": part, "path": path, **extra, "ms": ms, "rel_err_vs_float64": err}, args.out)

    r = lambda *shape: torch.randn(*shape, device=dev, dtype=half)  # noqa: E731
    # the closing image side of a block: the image tokens attend to each prompt's 7 tokens from projected
    # q [n, 4096, 128] and k, v [n, 7, 128], output projection, + residual, layer norm over 256 channels, + pe
    norm = copy.deepcopy(decoder.transformer.layers[0].norm4).to(half)
    attn = copy.deepcopy(decoder.transformer.layers[1].cross_attn_image_to_token).to(half)
    q_in, k_in, v_in = r(n, 4096, 256), r(n, 7, 256), r(n, 7, 256)
    residual, pe = r(n, 4096, 256), r(1, 4096, 256)
    q, k, v = (proj(x).contiguous() for proj, x in ((attn.q_proj, q_in), (attn.k_proj, k_in), (attn.v_proj, v_in)))
    heads = [x.double().unflatten(-1, (8, -1)).transpose(1, 2) for x in (q, k, v)]
    update = copy.deepcopy(attn.out_proj).double()(
        (torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / 4.0, -1) @ heads[2]).transpose(1, 2).flatten(2))
    ref = F.layer_norm(residual.double() + update, (256,), norm.weight.double(), norm.bias.double(), norm.eps)
    report("image_side", "torch (SDPA)", lambda: (lambda y: (y, y + pe))(norm(residual + _attend(attn, q_in, k_in,
                                                                                             v_in))), ref)
    report("image_side", "triton", lambda: kernels.attend_add_norm(q, k, v, 8, attn.out_proj, residual, norm, pe),
           ref)
    # a block's token side reading the image: each prompt's 7 tokens attend to its own 4096 image tokens
    cross = copy.deepcopy(decoder.transformer.layers[1].cross_attn_token_to_image).to(half)
    tokens, keys_pe, keys = r(n, 7, 256), r(n, 4096, 256), r(n, 4096, 256)
    ref = _attend(copy.deepcopy(cross).double(), tokens.double(), keys_pe.double(), keys.double())
    report("token_to_image", "projected (SDPA, head dim 16)", lambda: _attend(cross, tokens, keys_pe, keys), ref)
    report("token_to_image", "absorbed (SDPA, head dim 256)", lambda: _attend_image(cross, tokens, keys_pe, keys),
           ref)
    # the upscaling + hypernetwork product of every prompt
    up1, unorm, _, up2, _ = decoder.output_upscaling
    for param in unorm.parameters():
        param.data.normal_(0, 0.3)
    keys, hyper = r(n, 64, 64, 256), r(n, 3, 32)
    ref = FastMaskDecoder(copy.deepcopy(decoder).double(), triton=False)._masks_torch(hyper[:8].double(),
                                                                                       keys[:8].double())
    torch_half = FastMaskDecoder(copy.deepcopy(decoder), dtype=half, triton=False)
    report("upscaling", "torch", lambda: torch_half._masks_torch(hyper, keys)[:8], ref)
    default = kernels.BLOCK, kernels.NUM_WARPS
    for block in (16, 32):  # 64 and up: Triton 3.6's Hopper wgmma path faults on this kernel
        for warps in (2, 4):
            kernels.BLOCK, kernels.NUM_WARPS = block, warps
            report("upscaling", "triton", lambda: kernels.fused_mask_upscaling(keys, hyper, None, up1, unorm,
                                                                               up2)[:8], ref, block=block,
                   warps=warps)
    kernels.BLOCK, kernels.NUM_WARPS = default
    # the whole decoder forward over n prompts of one image (every prompt's masks computed)
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                   mask_in_chans=16).to(dev).eval()
    with torch.inference_mode():
        sparse, dense = prompt_encoder(points=(torch.rand(n, 1, 2, device=dev) * 1024,
                                               torch.ones(n, 1, dtype=torch.int, device=dev)), boxes=None, masks=None)
        image, image_pe = torch.randn(1, 256, 64, 64, device=dev), prompt_encoder.get_dense_pe()
        ref = copy.deepcopy(decoder).double()(image.double(), image_pe.double(), sparse.double()[:8],
                                              dense.double()[:8], True)[0]
    for triton_on in (False, True):
        fast = FastMaskDecoder(copy.deepcopy(decoder), dtype=half, triton=triton_on)
        report("decoder", "triton" if triton_on else "torch",
               lambda: fast(image, image_pe, sparse, dense, True)[0][:8], ref)


if __name__ == "__main__":
    main()
