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

`FastMaskDecoder` is the mask decoder's forward for many point prompts on one image: the image tokens are the same
for every prompt until the first block's image-to-token attention writes into them, so that block's image-side
projections run once per image instead of once per prompt (a quarter of the decoder's multiply-adds); later, where a
prompt's few tokens read its own image tokens, the key and value projections move to the query side
(`_attend_image`: the image tokens are never projected); attention runs through SDPA in the weights' dtype, except
each block's closing image side (the image tokens' attention to a prompt's few tokens, its output projection, the
residual add and layer norm), which, like the whole mask upscaling with its hypernetwork product, runs as one Triton
kernel where one applies (`sam_decoder_triton`; `triton=False`: PyTorch throughout, each 2x2 stride-2 transposed
convolution one matrix product); and given `skip_below`, prompts whose predicted IoUs (known before any upscaling)
all fail that threshold skip the upscaling and mask product altogether (over half the decoder's work at SAM's 0.88
on a real frame).
"""

from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder
from segment_anything.modeling.image_encoder import Block, get_rel_pos, window_partition, window_unpartition
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

from sas_ray.errors import ConfigError
from sas_ray.models.openclip_dense_fast import CUDAGRAPH_MODES, CompiledChunks
from sas_ray.models.sam_decoder_triton import attend_add_norm, available, fused_mask_upscaling

REL_POS_MODES = ("mask", "fold")
# errors that leave the device unusable or are not the kernels' doing: never answered by the PyTorch fallback
DEVICE_FAULTS = (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.OutOfMemoryError))


class FastImageEncoder(torch.nn.Module):
    """`vit`'s forward with SDPA attention; `dtype` casts `vit` in place (no copy), `rel_pos` is "mask" or "fold".

    Drop-in for `Sam.image_encoder`: float [B, 3, S, S] -> [B, out_chans, S/patch, S/patch] in the input's dtype,
    computed in the weights' dtype with autocast off. `.compile(mode=...)` compiles its blocks (see `compile`)."""

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
            out = vit.neck(self._blocks(x).permute(0, 3, 1, 2))  # NCHW view of NHWC memory: channels-last convs
        return out.to(images.dtype)

    def compile(self, mode: str | None = None, **options) -> None:
        """Regional compilation: torch.compile(dynamic=False) of one block's forward, which every block calls, so the
        blocks share two graphs (windowed and global attention) instead of one graph of all blocks unrolled (ViT-H:
        32), compiled in a fraction of the time; the rest of the forward stays eager. The graphs are for the first
        call's batch length: longer batches run in chunks of it, a shorter remainder eagerly (`CompiledChunks`)."""
        block = torch.compile(self._block, mode=mode, dynamic=False, **options)
        self._blocks = CompiledChunks(self._blocks, partial(self._blocks, block=block),
                                      clone=mode in CUDAGRAPH_MODES)

    def _blocks(self, x: torch.Tensor, block=None) -> torch.Tensor:
        for layer in self.vit.blocks:
            x = (block or self._block)(layer, x)
        return x

    def _block(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(block, block.norm1(x))
        return x + block.mlp(block.norm2(x))

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


class FastMaskDecoder(torch.nn.Module):
    """Drop-in for `Sam.mask_decoder` when every prompt of a call is on one image and has no mask input: same
    arguments and outputs, computed in the weights' dtype (`dtype` casts `decoder` in place) with autocast off.
    `triton`: use the Triton kernels where they apply; if they fail to build or launch on this machine (no compiler,
    an unsupported GPU), a warning says so once and the decoder continues in PyTorch."""

    def __init__(self, decoder: MaskDecoder, dtype: torch.dtype | None = None, triton: bool = True):
        super().__init__()
        first, *rest = decoder.transformer.layers
        ups = [m for m in decoder.output_upscaling if isinstance(m, torch.nn.ConvTranspose2d)]
        if any(m.kernel_size != (2, 2) or m.stride != (2, 2) or m.padding != (0, 0) for m in ups):
            raise ConfigError("FastMaskDecoder: expected SAM's 2x2 stride-2 transposed convolutions")
        if not first.skip_first_layer_pe or any(layer.skip_first_layer_pe for layer in rest):
            raise ConfigError("FastMaskDecoder: expected SAM's two-way transformer (positional terms skipped in "
                              "the first block only)")
        self.decoder = decoder.to(dtype=dtype)  # in place: the same Parameters
        self.triton = triton  # the kernels of sam_decoder_triton where they apply (else PyTorch throughout)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool,
                skip_below: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings and image_pe [1, C, h, w], sparse [P, T, C], dense [P, C, h, w] equal for all prompts
        (the "no mask" embedding) -> masks [P, 3 or 1, 4h, 4w] and predicted IoU [P, 3 or 1] in the weights' dtype.
        `skip_below`: the masks of prompts whose returned IoUs are all <= it are left zero (not computed)."""
        if image_embeddings.shape[0] != 1 or (dense_prompt_embeddings.shape[0] > 1
                                              and dense_prompt_embeddings.stride(0) != 0):
            raise ValueError("FastMaskDecoder: one image per call and no mask prompts (use SAM's own decoder)")
        args = image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output, \
            skip_below
        try:
            return self._forward(*args)
        except Exception as err:  # noqa: BLE001  (a kernel that cannot build or launch here: PyTorch instead)
            if not self.triton or isinstance(err, DEVICE_FAULTS):
                raise
            warnings.warn(f"FastMaskDecoder: its Triton kernels failed here ({type(err).__name__}: {err}); the "
                          "decoder runs in PyTorch from now on", RuntimeWarning, stacklevel=2)
            self.triton = False
            return self._forward(*args)

    def _forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                 multimask_output, skip_below):
        dec = self.decoder
        dtype = dec.iou_token.weight.dtype
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        with torch.autocast(image_embeddings.device.type, enabled=False):
            sparse = sparse_prompt_embeddings.to(dtype)
            tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).expand(len(sparse), -1, -1)
            tokens = torch.cat([tokens, sparse], dim=1)  # [P, T, C]
            src = (image_embeddings + dense_prompt_embeddings[:1]).to(dtype).flatten(2).transpose(1, 2)  # [1, N, C]
            pos = image_pe.to(dtype).flatten(2).transpose(1, 2)
            queries, keys = self._two_way(src, pos, tokens)
            iou_pred = dec.iou_prediction_head(queries[:, 0])[:, chosen]
            height, width = image_embeddings.shape[-2:]
            wanted = None if skip_below is None else (iou_pred > skip_below).any(dim=1)
            hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i])
                                 for i in range(dec.num_mask_tokens)[chosen]], dim=1)  # [P, M, C/8]
            masks = self._masks(hyper, keys.unflatten(1, (height, width)), wanted)
        return masks, iou_pred

    def _masks(self, hyper: torch.Tensor, keys: torch.Tensor, wanted: torch.Tensor | None) -> torch.Tensor:
        """Mask logits [P, M, 4h, 4w] from the hypernetwork outputs of the chosen mask tokens [P, M, C/8] and the
        image tokens [P, h, w, C]; prompts where `wanted` (bool [P]) is False are left zero."""
        up1, norm, _, up2, _ = self.decoder.output_upscaling
        if self.triton and available(keys, up1.in_channels, up1.out_channels, up2.out_channels):
            return fused_mask_upscaling(keys, hyper, wanted, up1, norm, up2)
        if wanted is None:
            return self._masks_torch(hyper, keys)
        prompts = wanted.nonzero()[:, 0]
        masks = keys.new_zeros(len(keys), hyper.shape[1], 4 * keys.shape[1], 4 * keys.shape[2])
        return masks.index_copy_(0, prompts, self._masks_torch(hyper[prompts], keys[prompts]))

    def _masks_torch(self, hyper: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The same in PyTorch: channels-last upscaling (LayerNorm2d as F.layer_norm over the last dim: the same
        biased statistics) and the product with the hypernetwork outputs hyper [P, M, C/8]."""
        up1, norm, act1, up2, act2 = self.decoder.output_upscaling
        x = act1(F.layer_norm(_upsample2x(up1, keys), (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        x = act2(_upsample2x(up2, x))  # [P, 4h, 4w, C/8]
        return (x.flatten(1, 2) @ hyper.transpose(1, 2)).transpose(1, 2).unflatten(2, x.shape[1:3])

    def _two_way(self, src: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor):
        """TwoWayTransformer's forward; src and pos [1, N, C] shared by the prompts' tokens [P, T, C]."""
        transformer = self.decoder.transformer
        first, *rest = transformer.layers
        image_keys = src + pos
        queries = first.norm1(_attend(first.self_attn, tokens, tokens, tokens))
        queries = first.norm2(queries + _attend_shared_image(first.cross_attn_token_to_image, queries + tokens,
                                                             image_keys, src))
        queries = first.norm3(queries + first.mlp(queries))
        keys, keys_pe = self._image_update(first.cross_attn_image_to_token, first.norm4, image_keys, queries + tokens,
                                           queries, src, pos)
        for layer in rest:
            queries, keys, keys_pe = self._block(layer, queries, keys, keys_pe, tokens, pos)
        attn_out = _attend_image(transformer.final_attn_token_to_image, queries + tokens, keys_pe, keys)
        return transformer.norm_final_attn(queries + attn_out), keys

    def _block(self, layer: TwoWayAttentionBlock, queries, keys, keys_pe, query_pe, key_pe):
        """TwoWayAttentionBlock.forward (positional terms on); keys_pe = keys + key_pe in and out."""
        q = queries + query_pe
        queries = layer.norm1(queries + _attend(layer.self_attn, q, q, queries))
        q = queries + query_pe
        queries = layer.norm2(queries + _attend_image(layer.cross_attn_token_to_image, q, keys_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys, keys_pe = self._image_update(layer.cross_attn_image_to_token, layer.norm4, keys_pe, queries + query_pe,
                                           queries, keys, key_pe)
        return queries, keys, keys_pe

    def _image_update(self, attn: Attention, norm: torch.nn.LayerNorm, q, k, v, residual, pe):
        """A block's closing image side: (keys, keys + pe) with keys = norm(residual + attn(q, k, v)), the image
        tokens q [P or 1, N, C] attending to each prompt's few tokens k, v [P, T, C]; residual and pe may be one
        image's [1, N, C]."""
        if self.triton and available(q, attn.internal_dim // attn.num_heads, q.shape[-1]):
            return attend_add_norm(attn.q_proj(q), attn.k_proj(k), attn.v_proj(v), attn.num_heads, attn.out_proj,
                                   residual.contiguous(), norm, pe.contiguous())
        keys = norm(residual + _attend(attn, q, k, v))
        return keys, keys + pe


def _upsample2x(conv: torch.nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """SAM's 2x2 stride-2 transposed convolution on NHWC x [P, h, w, C_in] -> NHWC [P, 2h, 2w, C_out], as one matrix
    product (each input pixel writes its own 2x2 output block) and a pixel shuffle."""
    weight = conv.weight.flatten(1)  # [C_in, C_out * 2 * 2] as (o, i, j)
    out = (x @ weight).unflatten(-1, (conv.out_channels, 2, 2))  # [P, h, w, o, i, j]
    batch, height, width = x.shape[:3]
    out = out.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2 * height, 2 * width, conv.out_channels)
    return out + conv.bias


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)  # [B, L, heads * d] -> [B, heads, L, d]


def _attend(attn: Attention, q, k, v) -> torch.Tensor:
    """segment_anything's Attention.forward through SDPA (same scale 1/sqrt(d)); batch dims may broadcast."""
    q, k, v = (_heads(proj(x), attn.num_heads) for proj, x in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)))
    batch = torch.broadcast_shapes(q.shape[:1], k.shape[:1])
    out = F.scaled_dot_product_attention(q.expand(*batch, *q.shape[1:]), k.expand(*batch, *k.shape[1:]),
                                         v.expand(*batch, *v.shape[1:]))
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _attend_image(attn: Attention, q, k, v) -> torch.Tensor:
    """`_attend` of each prompt's few tokens q [P, T, C] to its own image tokens k, v [P, N, C], with the key and value
    projections moved to the query side, so the N image tokens are read as they are and never projected: per head,
    (q W_q + b_q).(x W_k + b_k) = ((q W_q + b_q) W_k^T).x + a per-query constant, which softmax cancels, and
    softmax(.) (x W_v + b_v) = (softmax(.) x) W_v + b_v as softmax rows sum to 1. The heads' absorbed queries
    [P, heads * T, C] attend in one SDPA call (one query tile a prompt instead of 7-row tiles of head dim 16)."""
    heads = attn.num_heads
    q = _heads(attn.q_proj(q), heads)  # [P, heads, T, d]
    head_dim = q.shape[-1]
    w_k, w_v = (proj.weight.unflatten(0, (heads, head_dim)) for proj in (attn.k_proj, attn.v_proj))  # [heads, d, C]
    absorbed = torch.einsum("phtd,hdc->phtc", q, w_k)
    read = F.scaled_dot_product_attention(absorbed.flatten(1, 2)[:, None], k[:, None], v[:, None],
                                          scale=head_dim ** -0.5)  # [P, 1, heads * T, C]
    out = torch.einsum("phtc,hdc->pthd", read.view(absorbed.shape), w_v).flatten(2) + attn.v_proj.bias
    return attn.out_proj(out)


def _attend_shared_image(attn: Attention, q, k, v) -> torch.Tensor:
    """Attention of every prompt's tokens q [P, T, C] to one image's k, v [1, N, C]: the prompts' queries form one
    long sequence, so the image's keys and values are projected once."""
    out = _attend(attn, q.reshape(1, -1, q.shape[-1]), k, v)
    return out.view(q.shape)
