"""Triton kernels for the memory-bound parts of SAM's mask decoder over many prompts (`FastMaskDecoder`).

Over a frame's 1,024 point prompts the decoder's image side is 1,024 copies of [4096, 256] tokens, so its cost is
memory traffic, and two patterns waste most of it in PyTorch:
- `attend_add_norm`: each two-way block ends with the image tokens attending to a prompt's 7 tokens (head dim 16),
  the output projection, LayerNorm(keys + update) over 256 channels, and the next attention adds the positional
  encoding to the result. In PyTorch that is an attention kernel (a flash kernel tiles 7 keys as 64 or 128 and
  needs the heads transposed out and back), a matrix product, an add, a layer norm (slow on rows this short) and
  another add, each through memory. Here one program reads its rows of all heads once; all heads' scores and
  outputs are two matrix products with the keys and values laid out block diagonally (8 heads x 8 key slots), the
  7-way softmaxes in registers between them; the output projection, the residual, the norm and + pe follow in
  registers, and only the normed keys and keys + pe are written (measured on an H100: 1.05 ms per 256 prompts,
  against 1.34 ms as three kernels and a matrix product, docs/perf);
- `fused_mask_upscaling`: the upscaling (2x2 stride-2 transposed convolution to C/4 channels, LayerNorm2d + GELU, a
  second one to C/8 channels + GELU) and the product with the prompt's hypernetwork vectors [M, C/8] write 6 MB a
  prompt in PyTorch; here one program carries a block of a prompt's input pixels through both convolutions (each a
  matrix product: an input pixel owns its 2x2 output block), the norm, both GELUs and the product in registers, and
  writes only the M mask logits of its 4x4 output blocks.

The kernels run where Triton compiles for the tensors' device (CUDA), or anywhere under Triton's interpreter
(TRITON_INTERPRET=1, set before this module is imported: how the CPU tests run them); `available` says whether they
apply. The math is segment_anything's (exact erf GELU, biased variance, softmax scale 1/sqrt(head dim)), in float32
between half-precision loads and matrix products.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # FastMaskDecoder's PyTorch paths run instead
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# input pixels per upscaling program: 16 measured fastest on an H100 (docs/perf); at 64 Triton 3.6's Hopper wgmma
# path faults on this kernel (an illegal address, a known Triton issue with several dots in one kernel)
BLOCK = 16
NUM_WARPS = 4
# token rows per attend_add_norm program: 32 keeps its matrix products on the mma path that the upscaling kernel
# runs on (64 rows would take the wgmma path, see BLOCK)
ATTENTION_ROWS = 32


def available(x: torch.Tensor, *channels: int) -> bool:
    """Whether the kernels run on x: Triton present and able to run on x's device, x in half precision, and the
    given channel counts ones the kernels take (powers of two, >= 16)."""
    if triton is None or not (x.is_cuda or INTERPRETED) or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    return all(n >= 16 and n & (n - 1) == 0 for n in channels)


def attend_add_norm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, out_proj: torch.nn.Linear,
                    residual: torch.Tensor, norm: torch.nn.LayerNorm, pe: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-way block's image side in one pass: (y, y + pe) with y = norm(residual + out_proj(a)) and a the image
    tokens' attention to each prompt's few tokens, softmax(q_h k_h^T / sqrt(d)) v_h per head h, heads side by side:
    q [P or 1, N, heads * d] (one query set may serve every prompt), k and v [P, T, heads * d] with few keys T.
    residual [P or 1, N, C], pe [1, N, C]; all contiguous in one half dtype. The attention output and its
    projection stay in registers (float32 projection, no half rounding of the update before the norm)."""
    count, keys, width = k.shape
    tokens, channels = q.shape[1], out_proj.out_features
    out = q.new_empty(count, tokens, channels)
    out_pe = torch.empty_like(out)
    dim = width // heads
    weight = out_proj.weight.detach().t().to(q.dtype).contiguous()  # [H * D, C]
    f32 = [t.detach().float().contiguous() for t in (out_proj.bias, norm.weight, norm.bias)]
    _attend_add_norm_kernel[(triton.cdiv(tokens, ATTENTION_ROWS), count)](
        q, k, v, weight, f32[0], residual, f32[1], f32[2], pe, out, out_pe, tokens, keys,
        tokens * width if q.shape[0] > 1 else 0, tokens * channels if residual.shape[0] > 1 else 0,
        1.0 / math.sqrt(dim), float(norm.eps), H=heads, D=dim, T=triton.next_power_of_2(keys), C=channels,
        ROWS=ATTENTION_ROWS)
    return out, out_pe


def fused_mask_upscaling(keys: torch.Tensor, hyper: torch.Tensor, wanted: torch.Tensor | None,
                         up1: torch.nn.ConvTranspose2d, norm: torch.nn.Module, up2: torch.nn.ConvTranspose2d,
                         ) -> torch.Tensor:
    """Mask logits [P, M, 4h, 4w] (keys' dtype) of the prompts where `wanted` (bool [P]; None: all) holds, zero for
    the rest. The flags are read on the device (a program of an unwanted prompt returns at once): no host sync.

    keys: every prompt's image tokens [P, h, w, C] after the two-way transformer; hyper: [P, M, C/8] the
    hypernetwork outputs of the mask tokens wanted; `up1`, `norm` (LayerNorm2d), `up2` the decoder's upscaling
    layers (GELU after the norm and after `up2`, as in SAM)."""
    count, height, width, channels = keys.shape
    masks_per_prompt, c2 = hyper.shape[1:]
    keys = keys.contiguous()
    # weight [C_in, C_out, 2, 2] -> the first as [2*2 sub-pixels, C_in, C_out] (one matrix per position in the
    # output block), the second as [C_in, 2*2 * C_out] (all four positions in one product)
    w1 = up1.weight.permute(2, 3, 0, 1).reshape(4, up1.in_channels, up1.out_channels).to(keys.dtype).contiguous()
    w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, 4 * c2).to(keys.dtype).contiguous()
    # the hypernetwork product of all four positions at once: block diagonal [4 * C2, 4 * MP], MP >= 16 columns
    cols = max(16, triton.next_power_of_2(masks_per_prompt))
    blocks = keys.new_zeros(count, 4, c2, 4, cols)
    for t in range(4):
        blocks[:, t, :, t, :masks_per_prompt] = hyper.transpose(1, 2)
    out = keys.new_zeros(count, masks_per_prompt, 4 * height, 4 * width)
    wanted = keys.new_ones(count, dtype=torch.int8) if wanted is None else wanted.to(keys.device, torch.int8)
    if count:
        f32 = [t.detach().float().contiguous() for t in (up1.bias, norm.weight, norm.bias)]
        bias2 = up2.bias.detach().float().repeat(4).contiguous()
        grid = (triton.cdiv(height * width, BLOCK), count)
        _upscale_kernel[grid](keys, w1, f32[0], f32[1], f32[2], w2, bias2, blocks.flatten(1, 2).flatten(2),
                              wanted.contiguous(), out, height * width, width, masks_per_prompt, float(norm.eps),
                              C=channels, C1=up1.out_channels, C2=c2, MP=cols, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


if triton is not None:
    @triton.jit
    def _gelu(x):
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))

    @triton.jit
    def _upscale_kernel(x_ptr, w1_ptr, b1_ptr, g_ptr, beta_ptr, w2_ptr, b2_ptr, h_ptr, wanted_ptr, out_ptr,
                        pixels, width, masks, eps,
                        C: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, MP: tl.constexpr, BLOCK: tl.constexpr):
        prompt = tl.program_id(1).to(tl.int64)
        if tl.load(wanted_ptr + prompt) == 0:
            return
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < pixels
        cin, c1, c2x4, mpx4 = tl.arange(0, C), tl.arange(0, C1), tl.arange(0, 4 * C2), tl.arange(0, 4 * MP)
        x = tl.load(x_ptr + prompt * pixels * C + rows[:, None] * C + cin[None, :], mask=row_ok[:, None], other=0.0)
        b1, gamma, beta = tl.load(b1_ptr + c1), tl.load(g_ptr + c1), tl.load(beta_ptr + c1)
        w2 = tl.load(w2_ptr + c1[:, None] * (4 * C2) + c2x4[None, :])  # [C1, 4 * C2], column t * C2 + channel
        b2 = tl.load(b2_ptr + c2x4)
        hyper = tl.load(h_ptr + prompt * 16 * C2 * MP + c2x4[:, None] * (4 * MP) + mpx4[None, :])  # block diagonal
        # column j of a product with `hyper`: mask j % MP at position t = j // MP of the second 2x2 block
        t, mask = mpx4 // MP, mpx4 % MP
        plane = 16 * pixels  # output pixels per mask
        out_w = 4 * width
        y4, x4 = 4 * (rows // width), 4 * (rows % width)
        store_ok = row_ok[:, None] & (mask[None, :] < masks)
        base = out_ptr + prompt * masks * plane + mask[None, :] * plane
        for s in tl.static_range(4):  # the first convolution's 2x2 block: (s // 2, s % 2)
            w1 = tl.load(w1_ptr + s * C * C1 + cin[:, None] * C1 + c1[None, :])
            a = tl.dot(x, w1) + b1[None, :]  # float32 [BLOCK, C1]
            mean = tl.sum(a, axis=1) / C1
            centred = a - mean[:, None]
            var = tl.sum(centred * centred, axis=1) / C1
            a = centred * tl.rsqrt(var + eps)[:, None] * gamma[None, :] + beta[None, :]
            a = _gelu(a).to(x.dtype)
            b = _gelu(tl.dot(a, w2) + b2[None, :]).to(x.dtype)  # [BLOCK, 4 * C2]
            logits = tl.dot(b, hyper)  # float32 [BLOCK, 4 * MP]
            oy = y4[:, None] + 2 * (s // 2) + (t // 2)[None, :]
            ox = x4[:, None] + 2 * (s % 2) + (t % 2)[None, :]
            tl.store(base + oy * out_w + ox, logits.to(out_ptr.dtype.element_ty), mask=store_ok)

    @triton.jit
    def _few_key_rows(q_ptr, k_ptr, v_ptr, n, n_ok, keys, scale, H: tl.constexpr, D: tl.constexpr,
                      T: tl.constexpr, ROWS: tl.constexpr):
        """float32 [rows, H * D]: rows n of one prompt's queries (q_ptr at the prompt's first row) attending to its
        `keys` tokens (k_ptr, v_ptr at its first token), all heads side by side."""
        c, j = tl.arange(0, H * D), tl.arange(0, H * T)  # channel h * D + d; column h * T + key
        q = tl.load(q_ptr + n[:, None] * (H * D) + c[None, :], mask=n_ok[:, None], other=0.0)
        # all heads in two matrix products: keys and values block diagonal, key t of head h in column h * T + t
        key_ok = (j % T) < keys
        diag = ((c[:, None] // D) == (j[None, :] // T)) & key_ok[None, :]  # [H * D, H * T]
        k = tl.load(k_ptr + (j % T)[None, :] * (H * D) + c[:, None], mask=diag, other=0.0)
        v = tl.load(v_ptr + (j % T)[:, None] * (H * D) + c[None, :], mask=tl.trans(diag), other=0.0)
        scores = tl.dot(q, k) * scale  # float32 [rows, H * T]
        scores = tl.reshape(tl.where(key_ok[None, :], scores, float("-inf")), (ROWS, H, T))
        weights = tl.exp(scores - tl.max(scores, axis=2)[:, :, None])
        weights = tl.reshape(weights / tl.sum(weights, axis=2)[:, :, None], (ROWS, H * T))
        return tl.dot(weights.to(v.dtype), v)

    @triton.jit
    def _attend_add_norm_kernel(q_ptr, k_ptr, v_ptr, wo_ptr, bo_ptr, res_ptr, w_ptr, b_ptr, pe_ptr, out_ptr,
                                out_pe_ptr, tokens, keys, q_stride, res_stride, scale, eps, H: tl.constexpr,
                                D: tl.constexpr, T: tl.constexpr, C: tl.constexpr, ROWS: tl.constexpr):
        prompt = tl.program_id(1).to(tl.int64)
        n = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        n_ok = n < tokens
        first = prompt * keys * H * D
        o = _few_key_rows(q_ptr + prompt * q_stride, k_ptr + first, v_ptr + first, n, n_ok, keys, scale, H, D, T,
                          ROWS)
        hd, c = tl.arange(0, H * D), tl.arange(0, C)
        wo = tl.load(wo_ptr + hd[:, None] * C + c[None, :])  # [H * D, C]
        x = tl.dot(o.to(wo.dtype), wo) + tl.load(bo_ptr + c)[None, :]  # float32 [ROWS, C]
        x += tl.load(res_ptr + prompt * res_stride + n[:, None] * C + c[None, :], mask=n_ok[:, None],
                     other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        centred = x - mean[:, None]
        var = tl.sum(centred * centred, axis=1) / C
        y = centred * tl.rsqrt(var + eps)[:, None] * tl.load(w_ptr + c)[None, :] + tl.load(b_ptr + c)[None, :]
        y = y.to(out_ptr.dtype.element_ty)
        at = prompt * tokens * C + n[:, None] * C + c[None, :]
        tl.store(out_ptr + at, y, mask=n_ok[:, None])
        pe = tl.load(pe_ptr + n[:, None] * C + c[None, :], mask=n_ok[:, None], other=0.0)
        tl.store(out_pe_ptr + at, (y + pe).to(out_ptr.dtype.element_ty), mask=n_ok[:, None])
