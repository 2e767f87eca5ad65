"""Faster Stable Diffusion sampling with the cross-attention capture kept: SDPA everywhere, fused projections,
optional channels-last and torch.compile, capture that accumulates into buffers in place so it survives compilation.

`accelerate(pipe)` prepares a `StableDiffusionPipeline` once: Q/K/V (self-attention) and K/V (cross-attention)
projections fused (diffusers' `fuse_qkv_projections`, UNet and VAE), every self-attention on diffusers'
`FusedAttnProcessor2_0`, every cross-attention (`attn2`) on `CapturedCrossAttention`, which runs SDPA for the whole
CFG batch and, on the side, softmax(scale q k^T) of the conditional half only (77 keys: cheap next to the layer's
projections), adding its head mean in place to float32 buffers of its own (a submodule's buffers are static inputs
for CUDA graphs). Sampling itself (scheduler, steps, guidance, CFG batching, VAE decode of the whole batch) stays
diffusers' own pipeline call, so images follow the same arithmetic as the eager path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from sas_ray.errors import ConfigError


class CapturedCrossAttention(torch.nn.Module):
    """Cross-attention processor at latent divisor `divisor`: SDPA output, plus the conditional prompts' softmax
    probabilities (mean over heads) added to `total` [N, pixels, tokens] and 1 to `calls`, in place."""

    def __init__(self, divisor: int):
        super().__init__()
        self.divisor = divisor
        self.register_buffer("total", torch.zeros(0, 0, 0), persistent=False)
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def reset(self, num_prompts: int, latent_size: tuple[int, int], tokens: int, device: torch.device) -> None:
        h, w = (-(-side // self.divisor) for side in latent_size)
        shape = (num_prompts, h * w, tokens)
        if self.total.shape != shape:  # otherwise the same buffers: no recompilation, no CUDA-graph re-recording
            self.total = torch.zeros(shape, device=device)
            self.calls = torch.zeros((), device=device)
        self.total.zero_()
        self.calls.zero_()

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states [B, pixels, C] (unconditional prompts first, the N conditional ones last), context
        [B, tokens, D] -> [B, pixels, C]."""
        if attention_mask is not None:
            raise ConfigError("CapturedCrossAttention: attention masks are not supported")
        batch, pixels, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        if hasattr(attn, "to_kv"):  # fused by fuse_qkv_projections
            key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))  # [B, h, L, d]
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        cond = self.total.shape[0]
        scores = torch.matmul(q[batch - cond:], k[batch - cond:].transpose(-1, -2))
        self.total.add_((scores.float() * attn.scale).softmax(dim=-1).mean(dim=1))
        self.calls.add_(1)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, pixels, -1)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class CrossAttentionCapture:
    """Every cross-attention layer of a UNet on `CapturedCrossAttention`; `reset` before a pipeline call, `maps`
    after it (the same maps as `diffusion.CrossAttentionStore`)."""

    def __init__(self, unet: UNet2DConditionModel):
        levels = len(unet.config.block_out_channels)
        self.layers: list[CapturedCrossAttention] = []
        self.latent_size: tuple[int, int] = (0, 0)
        processors = {}
        for name, processor in unet.attn_processors.items():
            if name.endswith("attn2.processor"):
                _check_plain_cross_attention(unet.get_submodule(name.removesuffix(".processor")), name)
                processor = CapturedCrossAttention(_latent_divisor(name, levels))
                self.layers.append(processor)
            processors[name] = processor
        unet.set_attn_processor(processors)

    def reset(self, num_prompts: int, latent_size: tuple[int, int], tokens: int, device: torch.device) -> None:
        self.latent_size = latent_size
        for layer in self.layers:
            layer.reset(num_prompts, latent_size, tokens, device)

    def maps(self) -> dict[int, torch.Tensor]:
        """{latent-side divisor f: [N, h/f, w/f, tokens] mean over layers, heads and calls} on the CPU."""
        h, w = self.latent_size
        out = {}
        for f in sorted({layer.divisor for layer in self.layers}):
            layers = [layer for layer in self.layers if layer.divisor == f]
            total = sum(layer.total for layer in layers) / sum(layer.calls for layer in layers)
            out[f] = total.unflatten(1, (-(-h // f), -(-w // f))).cpu()
        return out


def accelerate(pipe: StableDiffusionPipeline, *, channels_last: bool = False,
               compile_mode: str | None = None) -> CrossAttentionCapture:
    """Prepare `pipe` in place for fast sampling with capture (see the module docstring); returns the capture.

    `channels_last` converts the UNet and VAE convolutions; `compile_mode` (e.g. "default", "max-autotune",
    "max-autotune-no-cudagraphs") compiles the UNet and the VAE decoder (`torch.nn.Module.compile`)."""
    pipe.unet.fuse_qkv_projections()  # every attention on FusedAttnProcessor2_0; attn2 replaced below
    pipe.vae.fuse_qkv_projections()
    capture = CrossAttentionCapture(pipe.unet)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        pipe.unet.compile(mode=compile_mode)
        pipe.vae.decoder.compile(mode=compile_mode)
    return capture


def _latent_divisor(name: str, levels: int) -> int:
    """Latent-side divisor of a UNet2DConditionModel attention layer from its name: down block i works at 2^i,
    the mid block at 2^(levels-1), up block i at 2^(levels-1-i)."""
    block, index = name.split(".")[:2]
    if block == "mid_block":
        return 2 ** (levels - 1)
    if block == "down_blocks":
        return 2 ** int(index)
    if block == "up_blocks":
        return 2 ** (levels - 1 - int(index))
    raise ConfigError(f"cross-attention layer {name!r} is not in a down, mid or up block")


def _check_plain_cross_attention(attn: Attention, name: str) -> None:
    """CapturedCrossAttention implements SD1.5's cross-attention only: no norms or spatial conditioning."""
    extras = [k for k in ("group_norm", "spatial_norm", "norm_q", "norm_k", "norm_cross")
              if getattr(attn, k, None) is not None]
    if extras:
        raise ConfigError(f"{name}: cross-attention with {extras} is not supported by CapturedCrossAttention")
