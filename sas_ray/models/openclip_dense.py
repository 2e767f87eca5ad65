"""Per-pixel CLIP features from an OpenCLIP ViT (MaskCLIP value path): the LSeg role of SPEC §2.1.

Each patch token of the penultimate block goes through the last block's value and output projections only (no
query-key mixing, no residual, no MLP), then `ln_post` and `proj`, landing in the joint image-text space
(MaskCLIP, Zhou et al. 2022). Frames are upscaled by `input_scale` (LSeg's 2x trick), cut into patch-aligned
windows of at most `crop_size` pixels (position embeddings resized to the window grid), overlapping windows
averaged per patch, upsampled bilinearly to the frame size, L2-normalised per pixel and, with `flip`, summed with
the features of the mirrored frame (norm <= 2, as LSeg's horizontal-flip test-time augmentation).

`fast` (default: on CUDA) computes the same features faster (`openclip_dense_fast`): SDPA attention blocks,
optionally compiled with `compile_mode` (None: uncompiled; the first batch fixes the compiled window batch, larger
batches run in chunks of it, a smaller remainder uncompiled) and restricted to one `sdpa_backend`, and the upsample
of the whole batch as two matrix products in the teacher's dtype (fp16: per-pixel cosine to eager >= 0.999999).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from sas_ray.errors import ConfigError
from sas_ray.models.base import Resources, Teacher, frames_to_float, register_teacher
from sas_ray.models.clip_model import ClipModel, load_clip
from sas_ray.models.openclip_dense_fast import (
    CompiledChunks,
    check_sdpa_blocks,
    sdpa_block,
    sdpa_context,
    upsample_unit,
)


@register_teacher("openclip-dense")
class OpenClipDense(Teacher):
    resources = Resources(gpus=1.0, batch_size=8)

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, arch: str = "ViT-L-14", flip: bool = True,
                 input_scale: float = 2.0, crop_size: int | None = None, seed: int = 0, fast: bool | None = None,
                 compile_mode: str | None = None, sdpa_backend: str | None = None, clip: ClipModel | None = None):
        """`clip`: an already loaded CLIP to share (the mask teacher's `region: pool`); else `arch` + `weights`."""
        super().__init__(device, dtype)
        self.clip = clip or load_clip(arch, weights, tiny=tiny, device=self.device, dtype=dtype,
                                      storage_options=storage_options, seed=seed)
        self.dim = self.clip.dim
        self.text_space = self.clip.text_space
        self.flip = flip
        self.input_scale = input_scale
        patch = self.clip.patch_size
        crop = crop_size or 2 * self.clip.image_size
        self.crop_size = max(patch, crop // patch * patch)
        self.fast = self.device.type == "cuda" if fast is None else fast
        self.patch_tokens = patch_token_fn(self.clip.model.visual, self.fast, compile_mode, sdpa_backend)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = frames_to_float(images, self.device)
        batch, _, height, width = x.shape
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        canvas, scaled = self._patch_canvas(x)
        if self.fast:
            return upsample_unit(canvas, (height, width), scaled, self.clip.patch_size, self.flip, self.dtype)
        out = torch.empty(batch, height, width, self.dim, device=self.device, dtype=self.dtype)
        for i in range(batch):  # one frame at a time: full-resolution fp32 maps are large
            feats = _upsample(canvas[i], (height, width), scaled, self.clip.patch_size)
            if self.flip:
                feats += _upsample(canvas[batch + i], (height, width), scaled, self.clip.patch_size).flip(1)
            out[i] = feats
        return out

    def _patch_canvas(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """float [N, 3, H, W] in [0, 1] -> per-patch features [N, gh, gw, C] of the upscaled frame, and its size."""
        patch = self.clip.patch_size
        height, width = x.shape[-2:]
        scaled = (max(1, round(height * self.input_scale)), max(1, round(width * self.input_scale)))
        x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False, antialias=self.input_scale < 1)
        x = self.clip.normalize(x).to(self.dtype)
        grid = (math.ceil(scaled[0] / patch), math.ceil(scaled[1] / patch))
        x = F.pad(x, (0, grid[1] * patch - scaled[1], 0, grid[0] * patch - scaled[0]))  # 0 = the mean colour
        return self._tiled_patch_features(x, grid), scaled

    def _tiled_patch_features(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch-aligned windows of at most crop_size, each through the ViT, averaged where they overlap."""
        patch = self.clip.patch_size
        win = (min(grid[0], self.crop_size // patch), min(grid[1], self.crop_size // patch))  # in patches
        starts = [_window_starts(g, w) for g, w in zip(grid, win)]
        offsets = [(r, c) for r in starts[0] for c in starts[1]]
        crops = torch.stack([x[:, :, r * patch:(r + win[0]) * patch, c * patch:(c + win[1]) * patch]
                             for r, c in offsets], dim=1).flatten(0, 1)  # [N * windows, 3, h, w]
        tokens = self.patch_tokens(crops)  # [N * windows, gh, gw, C]
        tokens = tokens.unflatten(0, (x.shape[0], len(offsets))).float()
        canvas = torch.zeros(x.shape[0], grid[0], grid[1], self.dim, device=x.device)
        count = torch.zeros(1, grid[0], grid[1], 1, device=x.device)
        for k, (r, c) in enumerate(offsets):
            canvas[:, r:r + win[0], c:c + win[1]] += tokens[:, k]
            count[:, r:r + win[0], c:c + win[1]] += 1
        return canvas / count


def _upsample(canvas: torch.Tensor, size: tuple[int, int], scaled: tuple[int, int], patch: int) -> torch.Tensor:
    """Patch features [gh, gw, C] -> unit per-pixel features [H, W, C] (float32).

    Patch cell i covers upscaled pixels [i*patch, (i+1)*patch), so frame pixel v sits at cell coordinate
    (v + 0.5) * scaled / (H * patch) - 0.5: bilinear interpolation with align_corners=False semantics
    (clamped at the borders), written as grid_sample so the output is exactly H x W."""
    gh, gw = canvas.shape[:2]
    axes = []
    for n, s, g in zip(size, scaled, (gh, gw)):
        cell = (torch.arange(n, device=canvas.device, dtype=torch.float32) + 0.5) * s / (n * patch) - 0.5
        axes.append((2 * cell + 1) / g - 1)  # grid_sample's normalised coordinate of that cell position
    grid = torch.stack(torch.meshgrid(axes[1], axes[0], indexing="xy"), dim=-1)  # [H, W, (x, y)]
    feats = F.grid_sample(canvas.permute(2, 0, 1)[None].float(), grid[None], mode="bilinear",
                          padding_mode="border", align_corners=False)[0]
    return F.normalize(feats, dim=0).permute(1, 2, 0)


def _window_starts(length: int, window: int) -> list[int]:
    """Start offsets of windows covering [0, length) with about 1/3 overlap, the last one flush with the end."""
    if window >= length:
        return [0]
    n = math.ceil((length - window) / max(1, window * 2 // 3)) + 1
    return sorted({round(i * (length - window) / (n - 1)) for i in range(n)})


def patch_token_fn(visual, fast: bool, compile_mode: str | None = None, sdpa_backend: str | None = None):
    """`dense_patch_features` of `visual` as a function of the images: open_clip's own blocks, or with `fast` the
    SDPA blocks, compiled in fixed-size chunks given a `compile_mode`, attention restricted to `sdpa_backend`."""
    if not fast:
        if compile_mode is not None or sdpa_backend is not None:
            raise ConfigError("openclip-dense: compile_mode and sdpa_backend apply to the fast path (fast=True)")
        return partial(dense_patch_features, visual)
    check_sdpa_blocks(visual.transformer.resblocks[:-1])
    sdpa_context(sdpa_backend)  # refuses an unknown backend now rather than at the first batch
    fn = partial(dense_patch_features, visual, sdpa=True)
    if compile_mode is not None:
        fn = CompiledChunks.compile(fn, compile_mode)
    if sdpa_backend is None:
        return fn

    def restricted(images: torch.Tensor) -> torch.Tensor:
        with sdpa_context(sdpa_backend):
            return fn(images)

    return restricted


def dense_patch_features(visual, images: torch.Tensor, sdpa: bool = False) -> torch.Tensor:
    """MaskCLIP features of an open_clip VisionTransformer: normalised images [N, 3, h, w] (h, w multiples of the
    patch size) -> projected per-patch features [N, h/p, w/p, output_dim] (not normalised). `sdpa` runs the blocks
    before the last through `sdpa_block` (batch-first) instead of their own forward."""
    x = visual.conv1(images)  # [N, width, gh, gw]
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = _grid_position_embedding(visual, gh, gw).to(x.dtype)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + pos
    x = visual.ln_pre(x)
    *blocks, last = visual.transformer.resblocks
    seq_first = not sdpa and not visual.transformer.batch_first
    if seq_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = sdpa_block(block, x) if sdpa else block(x)
    if seq_first:
        x = x.transpose(0, 1)
    attn = last.attn
    width = attn.embed_dim
    v = F.linear(last.ln_1(x[:, 1:]), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    v = last.ls_1(attn.out_proj(v))
    return (visual.ln_post(v) @ visual.proj).unflatten(1, (gh, gw))


def _grid_position_embedding(visual, gh: int, gw: int) -> torch.Tensor:
    """The class + patch position embeddings, the patch part resized bicubically to a gh x gw grid."""
    pos = visual.positional_embedding
    g0, g1 = visual.grid_size
    if (gh, gw) == (g0, g1):
        return pos
    grid = pos[1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)]).to(pos.dtype)
