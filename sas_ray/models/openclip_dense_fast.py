"""A faster forward of the dense OpenCLIP teacher over the same parameters: SDPA blocks, compiled fixed-size chunks,
and a batched half-precision upsample.

- `sdpa_block`: open_clip's ResidualAttentionBlock with one fused Q/K/V projection and `scaled_dot_product_attention`
  (the backend PyTorch picks, or `sdpa_backend`), so torch.compile sees plain ops instead of nn.MultiheadAttention.
- `CompiledChunks`: torch.compile(dynamic=False) compiles for one window batch (the first call's); longer batches
  run as chunks of that size and a shorter remainder (a scene's last frames) runs uncompiled: no recompilation.
- `upsample_unit`: bilinear interpolation is separable, so a whole batch is upsampled as two matrix products
  (rows, then columns; the mirrored frames take the columns reversed) straight into [B, H, W, C] in the features'
  dtype, normalised in place with float32 norms, instead of a float32 grid_sample per frame and a layout copy.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

from sas_ray.errors import ConfigError

SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # compiled outputs are overwritten by the next replay


def check_sdpa_blocks(blocks) -> None:
    """`sdpa_block` reproduces plain self-attention blocks only (no custom block, cross-attention or extra K/V)."""
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") or attn.bias_k is not None \
                or attn.add_zero_attn or not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            raise ConfigError(f"vision block {i} ({type(block).__name__}) is not a plain open_clip "
                              "ResidualAttentionBlock; the fast path needs one (use fast=False)")


def sdpa_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """`block(x)` for batch-first tokens [N, L, D], attention through scaled_dot_product_attention."""
    attn = block.attn
    batch, length, width = x.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # [N, heads, L, d]
    out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), as nn.MultiheadAttention
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(batch, length, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def sdpa_context(backend: str | None):
    """Restrict scaled_dot_product_attention to `backend` (a key of SDPA_BACKENDS); None: PyTorch's choice."""
    if backend is None:
        return contextlib.nullcontext()
    if backend not in SDPA_BACKENDS:
        raise ConfigError(f"unknown sdpa_backend {backend!r}; known: {sorted(SDPA_BACKENDS)}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


class CompiledChunks:
    """`fn` over the leading dimension in chunks of the first call's length through `compiled` (e.g.
    torch.compile(fn, dynamic=False)); a shorter remainder runs `fn` itself, so no shape is ever compiled twice."""

    def __init__(self, fn, compiled, clone: bool = False):
        self.fn = fn
        self.compiled = compiled
        self.clone = clone  # CUDA-graph outputs live in a pool the next replay overwrites
        self.chunk: int | None = None

    @classmethod
    def compile(cls, fn, mode: str) -> CompiledChunks:
        return cls(fn, torch.compile(fn, mode=mode, dynamic=False), clone=mode in CUDAGRAPH_MODES)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.chunk = self.chunk or len(x)
        full = len(x) // self.chunk * self.chunk
        outs = []
        for start in range(0, full, self.chunk):
            out = self.compiled(x[start:start + self.chunk])
            outs.append(out.clone() if self.clone else out)
        if full < len(x):
            outs.append(self.fn(x[full:]))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def bilinear_matrix(size: int, scaled: int, cells: int, patch: int, device=None) -> torch.Tensor:
    """float32 [size, cells]: row v holds the bilinear weights of frame pixel v over the patch cells.

    Pixel v sits at cell coordinate (v + 0.5) * scaled / (size * patch) - 0.5, clamped to [0, cells - 1] (the
    border rule of grid_sample with align_corners=False); its two neighbouring cells share the weight."""
    cell = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * scaled / (size * patch) - 0.5
    cell = cell.clamp(0, cells - 1)
    low = cell.floor()
    frac = (cell - low)[:, None]
    low = low.long()[:, None]
    weights = torch.zeros(size, cells, device=device)
    weights.scatter_add_(1, low, 1 - frac)
    return weights.scatter_add_(1, (low + 1).clamp(max=cells - 1), frac)


def upsample_unit(canvas: torch.Tensor, size: tuple[int, int], scaled: tuple[int, int], patch: int,
                  flip: bool, dtype: torch.dtype) -> torch.Tensor:
    """Patch features [N, gh, gw, C] -> unit per-pixel features [B, H, W, C] in `dtype`.

    Without `flip` B = N; with it the mirrored frames are the last B = N/2 canvases and each frame's features are
    its own unit features plus the mirror image of its twin's (norm <= 2)."""
    gh, gw, dim = canvas.shape[1:]
    rows = bilinear_matrix(size[0], scaled[0], gh, patch, canvas.device).to(dtype)
    cols = bilinear_matrix(size[1], scaled[1], gw, patch, canvas.device).to(dtype)
    by_row = torch.matmul(rows, canvas.to(dtype).flatten(2)).unflatten(2, (gw, dim))  # [N, H, gw, C]
    batch = len(canvas) // 2 if flip else len(canvas)
    out = _unit_(torch.matmul(cols, by_row[:batch]))  # [B, H, W, C]
    if flip:
        out += _unit_(torch.matmul(cols.flip(0), by_row[batch:]))  # reversed columns = the mirrored frame
    return out


def _unit_(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, 1e-12) along the last dimension, in place (F.normalize), norms in float32."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return x.mul_(norm.clamp_min_(1e-12).reciprocal_())
