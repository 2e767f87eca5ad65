"""A faster forward of segment_anything's ViT image encoder over the same parameters (fused attention, half weights).

Eager segment_anything materialises every attention matrix ([B * heads, L, L]; L = 4096 tokens in the global
blocks of a 1024 px image), adds the decomposed relative-position terms through views and, under autocast, runs the
softmax in float32 and casts the fp32 weights on every call. `FastImageEncoder` runs the same blocks with
`scaled_dot_product_attention` and weights cast once, in place. The bias rel_h[q, kh] + rel_w[q, kw] (unscaled
query against the relative-position tables, as SAM adds it) reaches SDPA in one of two ways:

- "mask": materialised as `attn_mask` [B, heads, L, L] (memory-efficient or cuDNN kernel; O(L^2) bias memory);
- "fold": appended to the head dimension, q' = [q * scale, rel_h, rel_w], k' = [k, onehot(kh), onehot(kw)], v' = [v, 0],
  so q'.k' = scale q.k + rel_h + rel_w and the flash kernel applies with no L^2 tensor (head dim 80 -> 208 in the
  ViT-H global blocks, 108 -> 112 in the 14x14 windows).
Window partition and its padding reuse segment_anything's functions; under torch.compile they fuse with the norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Block, get_rel_pos, window_partition, window_unpartition

from sas_ray.errors import ConfigError

REL_POS_MODES = ("mask", "fold")


class FastImageEncoder(torch.nn.Module):
    """`vit`'s forward with SDPA attention; `dtype` casts `vit` in place (no copy), `rel_pos` is "mask" or "fold".

    Drop-in for `Sam.image_encoder`: float [B, 3, S, S] -> [B, out_chans, S/patch, S/patch] in the input's dtype,
    computed in the weights' dtype with autocast off. Compile with `.compile(mode=...)` (torch.nn.Module.compile)."""

    def __init__(self, vit: ImageEncoderViT, dtype: torch.dtype | None = None, rel_pos: str = "mask"):
        super().__init__()
        if rel_pos not in REL_POS_MODES:
            raise ConfigError(f"unknown rel_pos mode {rel_pos!r}; known: {REL_POS_MODES}")
        self.vit = vit.to(dtype=dtype)  # in place: the same Parameters
        for conv in (vit.patch_embed, vit.neck):
            conv.to(memory_format=torch.channels_last)  # NHWC kernels; pos_embed (also 4-d) keeps its layout
        self.img_size = vit.img_size
        self.rel_pos = rel_pos

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        dtype = vit.patch_embed.proj.weight.dtype
        with torch.autocast(images.device.type, enabled=False):
            x = vit.patch_embed(images.to(dtype=dtype, memory_format=torch.channels_last))  # [B, H, W, C]
            if vit.pos_embed is not None:
                x = x + vit.pos_embed
            for block in vit.blocks:
                x = x + self._attention(block, block.norm1(x))
                x = x + block.mlp(block.norm2(x))
            out = vit.neck(x.permute(0, 3, 1, 2))  # an NCHW view of NHWC memory: channels-last convolutions
        return out.to(images.dtype)

    def _attention(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        """The block's attention on normed tokens [B, H, W, C], windowed (zero padded) when the block is."""
        attn = block.attn
        window = block.window_size
        if window > 0:
            height, width = x.shape[1:3]
            x, padded = window_partition(x, window)
        batch, h, w, _ = x.shape
        q, k, v = attn.qkv(x).reshape(batch, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if not attn.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            r_q = q.unflatten(2, (h, w))  # [B, heads, h, w, d]
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, attn.rel_pos_h)).flatten(2, 3)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, attn.rel_pos_w)).flatten(2, 3)
            attend = _attend_bias_mask if self.rel_pos == "mask" else _attend_bias_folded
            out = attend(q, k, v, rel_h, rel_w, attn.scale)
        out = attn.proj(out.transpose(1, 2).reshape(batch, h, w, -1))
        if window > 0:
            out = window_unpartition(out, window, padded, (height, width))
        return out


def _attend_bias_mask(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """softmax(scale q k^T + rel_h[q, key row] + rel_w[q, key col]) v with the bias materialised as attn_mask.

    q, k, v [B, heads, L, d]; rel_h [B, heads, L, kh], rel_w [B, heads, L, kw] with L = kh * kw (row-major keys)."""
    bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).flatten(-2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _attend_bias_folded(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """The same attention with the bias folded into the head dimension (no [L, L] tensor, flash-eligible)."""
    kh, kw, d = rel_h.shape[-1], rel_w.shape[-1], q.shape[-1]
    extra = -(-(d + kh + kw) // 8) * 8 - (d + kh + kw)  # head dims a multiple of 8 for the fused kernels
    lead = k.shape[:3]  # B, heads, L
    zeros = q.new_zeros(()).expand(*lead, extra)
    eye_h = torch.eye(kh, dtype=k.dtype, device=k.device)
    eye_w = torch.eye(kw, dtype=k.dtype, device=k.device)
    key_rows = eye_h.repeat_interleave(kw, dim=0).expand(*lead, kh)  # key j -> onehot(j // kw)
    key_cols = eye_w.repeat(kh, 1).expand(*lead, kw)  # key j -> onehot(j % kw)
    q_aug = torch.cat([q * scale, rel_h, rel_w, zeros], dim=-1)
    k_aug = torch.cat([k, key_rows, key_cols, zeros], dim=-1)
    v_aug = torch.cat([v, q.new_zeros(()).expand(*lead, kh + kw + extra)], dim=-1)
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :d]
