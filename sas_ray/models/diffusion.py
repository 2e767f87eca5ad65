"""Stable Diffusion v1.5 images of one class with cross-attention coarse masks (SAS MCC, SPEC §5.4).

The pipeline is assembled from configs written here (SD1.5 shapes, or tiny ones of the same classes) and weights
read from a diffusers-layout folder URL (`unet/`, `vae/`, `text_encoder/`), so nothing is fetched from a hub. The
tokenizer is built from the BPE vocabulary that ships inside open_clip. During sampling a processor on every
cross-attention layer records the softmax attention of the conditional prompt, averaged over heads and steps and
grouped by latent resolution; `coarse_mask` turns those maps into SAS's binary mask.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections import defaultdict
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sas_ray.errors import ConfigError, InputError
from sas_ray.models.base import check_weights_choice
from sas_ray.models.diffusion_fast import accelerate
from sas_ray.models.weights import load_into, match_prefix, read_checkpoint

PROMPT = "a good photo of a {} in a room"  # SAS generate_any_class.py
STEPS = 50
GUIDANCE = 7.0  # SAS defines 7.5 but passes 7
THRESHOLD = 0.7
# SAS keeps a VOC special case: these classes use only the 8x8 maps (latent/8 at 512 px) instead of 16, 32, 64.
EIGHTH_RESOLUTION_CLASSES = frozenset({"sofa", "train", "tvmonitor"})

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5, center_input_sample=False,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
)
# The same classes and block layout at toy sizes: 64 px images, 8x8 latents, cross-attention at 8, 4, 2 and 1 (mid).
TINY_UNET = dict(
    SD15_UNET, sample_size=8, layers_per_block=1, block_out_channels=(8, 16, 16, 16), cross_attention_dim=32,
    attention_head_dim=2, norm_num_groups=8,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    sample_size=64,
)
TINY_TEXT = dict(SD15_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=32)
ARCHS = {"sd15": (SD15_UNET, SD15_VAE, SD15_TEXT), "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT)}
_COMPONENT_FILES = {  # diffusers folder layout; safetensors first
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
}


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """SD1.5's CLIPTokenizer (77 tokens, padded with <|endoftext|>) from open_clip's bundled BPE merges."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({token: i for i, token in enumerate(vocab)}, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=77, pad_token="<|endoftext|>")


def build_pipeline(weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                   storage_options: dict | None = None, arch: str = "sd15", seed: int = 0) -> StableDiffusionPipeline:
    """`arch` ("sd15" or "tiny") from a diffusers-layout folder URL, or `tiny=True`: random weights seeded by `seed`."""
    check_weights_choice("Stable Diffusion", weights, tiny)
    arch = "tiny" if tiny else arch
    if arch not in ARCHS:
        raise ConfigError(f"unknown Stable Diffusion architecture {arch!r}; known: {sorted(ARCHS)}")
    unet_cfg, vae_cfg, text_cfg = ARCHS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    if weights is not None:
        load_into(unet, _read_component(weights, "unet", storage_options))
        load_into(vae, _read_component(weights, "vae", storage_options))
        text_weights = match_prefix(_read_component(weights, "text_encoder", storage_options), text_encoder,
                                    "text_model.")
        load_into(text_encoder, text_weights,  # a buffer older checkpoints still carry
                  ignore=("text_model.embeddings.position_ids", "embeddings.position_ids"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _read_component(folder: str, name: str, storage_options: dict | None):
    first, fallback = _COMPONENT_FILES[name]
    base = folder.rstrip("/")
    try:
        return read_checkpoint(f"{base}/{first}", storage_options)
    except InputError as err:
        if "no such file" not in str(err):
            raise
    return read_checkpoint(f"{base}/{fallback}", storage_options)


class CrossAttentionStore:
    """Sums of cross-attention probabilities of the conditional prompts, per latent resolution.

    `add` receives [batch * heads, pixels, tokens] from one layer call; the conditional prompts are the last
    `num_prompts` entries of the batch (diffusers puts the unconditional half first)."""

    def __init__(self, num_prompts: int, latent_size: tuple[int, int]):
        self.num_prompts = num_prompts
        self.latent_size = latent_size
        self.sums: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = defaultdict(int)

    def add(self, probs: torch.Tensor, batch: int) -> None:
        heads = probs.shape[0] // batch
        cond = probs.unflatten(0, (batch, heads))[batch - self.num_prompts:].float().mean(dim=1)  # [N, pix, T]
        pixels = cond.shape[1]
        self.sums[pixels] = self.sums[pixels] + cond if pixels in self.sums else cond
        self.calls[pixels] += 1

    def maps(self) -> dict[int, torch.Tensor]:
        """{latent-side divisor f: [N, h/f, w/f, tokens] mean over layers, heads and steps}."""
        h, w = self.latent_size
        out = {}
        for pixels, total in self.sums.items():
            f = round((h * w / pixels) ** 0.5)
            out[f] = (total / self.calls[pixels]).unflatten(1, (h // f, w // f)).cpu()
        return out


class CapturingCrossAttention(AttnProcessor):
    """diffusers' reference attention processor that also hands its softmax probabilities to a store."""

    def __init__(self, store: CrossAttentionStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        scores = attn.get_attention_scores

        def recording(query, key, mask=None):
            probs = scores(query, key, mask)
            self.store.add(probs, hidden_states.shape[0])
            return probs

        attn.get_attention_scores = recording  # instance attribute: shadows the method for this call only
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        finally:
            del attn.get_attention_scores


def class_token_positions(tokenizer: CLIPTokenizer, prompt: str, class_name: str) -> list[int]:
    """Positions in the prompt's token sequence (with BOS) whose token is one of the class name's tokens."""
    wanted = set(tokenizer.encode(class_name)[1:-1])
    return [i for i, token in enumerate(tokenizer.encode(prompt)) if token in wanted]


def coarse_mask(maps: dict[int, torch.Tensor], positions: list[int], size: tuple[int, int],
                divisors: tuple[int, ...] = (4, 2, 1), threshold: float = THRESHOLD) -> np.ndarray:
    """SAS's DiffuMask-style mask from one image's attention maps {divisor: [h, w, tokens]} -> bool [H, W].

    Per class token: each chosen resolution's map bicubic-upsampled to `size` and divided by its max, averaged over
    resolutions; averaged over the tokens; min-max normalised; kept where > threshold."""
    total = torch.zeros(size)
    for position in positions:
        per_res = []
        for f in divisors:
            up = F.interpolate(maps[f][None, None, :, :, position].float(), size=size, mode="bicubic",
                               align_corners=False)[0, 0]
            per_res.append(up / up.max())
        total += sum(per_res) / len(per_res)
    total /= max(1, len(positions))
    span = total.max() - total.min()
    if span <= 1e-6 * total.abs().max():  # a flat map: SAS divides 0 by 0 and keeps nothing
        return np.zeros(size, dtype=bool)
    return ((total - total.min()) / span > threshold).numpy()


class DiffusionGenerator:
    """Stable Diffusion that returns images and SAS coarse masks for (class name, seed) pairs.

    `fast` (default: on CUDA) prepares the pipeline once with `diffusion_fast.accelerate` (fused projections, SDPA
    in every layer with capture on the side, `channels_last`, `compile_mode`); otherwise every cross-attention runs
    diffusers' reference processor with `CapturingCrossAttention` and the rest SDPA. Uncompiled, the fast path is
    no faster (0.91x on an H100), so on CUDA `channels_last` and `compile_mode` default to the measured best:
    channels-last + "reduce-overhead" (CUDA graphs), 1.63x eager at ~80 s of compile per process (docs/perf);
    `compile_mode="eager"` turns compilation off."""

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, steps: int = STEPS, guidance: float = GUIDANCE,
                 image_size: int | None = None, arch: str = "sd15", seed: int = 0, fast: bool | None = None,
                 channels_last: bool | None = None, compile_mode: str | None = None):
        self.pipe = build_pipeline(weights, tiny=tiny, device=device, dtype=dtype,
                                   storage_options=storage_options, arch=arch, seed=seed)
        self.steps = steps
        self.guidance = guidance
        self.image_size = image_size or 8 * self.pipe.unet.config.sample_size
        cuda = self.pipe.device.type == "cuda"
        fast = cuda if fast is None else fast
        channels_last = cuda if channels_last is None else channels_last
        compile_mode = ("reduce-overhead" if cuda else None) if compile_mode is None else compile_mode
        self.capture = (accelerate(self.pipe, channels_last=channels_last,
                                   compile_mode=None if compile_mode == "eager" else compile_mode) if fast else None)

    @torch.inference_mode()
    def generate(self, class_names: list[str], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """-> images uint8 [N, S, S, 3] and coarse masks bool [N, S, S] for prompts PROMPT.format(class)."""
        if len(class_names) != len(seeds) or not class_names:
            raise ValueError(f"need one seed per class name, got {len(class_names)} names and {len(seeds)} seeds")
        prompts = [PROMPT.format(name) for name in class_names]
        images, maps = self.sample(prompts, seeds)
        size = (self.image_size, self.image_size)
        masks = np.stack([
            coarse_mask({f: m[i] for f, m in maps.items()},
                        class_token_positions(self.pipe.tokenizer, prompt, name), size,
                        divisors=(8,) if name in EIGHTH_RESOLUTION_CLASSES else (4, 2, 1))
            for i, (prompt, name) in enumerate(zip(prompts, class_names))])
        return images, masks

    @torch.inference_mode()
    def sample(self, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, dict[int, torch.Tensor]]:
        """-> images uint8 [N, S, S, 3] and the captured cross-attention maps {divisor: [N, h, w, tokens]}."""
        latent = self.image_size // self.pipe.vae_scale_factor
        if self.capture is None:
            store = CrossAttentionStore(len(prompts), (latent, latent))
            unet = self.pipe.unet
            sdpa = AttnProcessor2_0()
            unet.set_attn_processor({name: CapturingCrossAttention(store) if name.endswith("attn2.processor")
                                     else sdpa for name in unet.attn_processors})
        else:
            store = self.capture
            store.reset(len(prompts), (latent, latent), self.pipe.tokenizer.model_max_length, self.pipe.device)
        images = self.pipe(prompts, height=self.image_size, width=self.image_size, num_inference_steps=self.steps,
                           guidance_scale=self.guidance, output_type="pt",
                           generator=[torch.Generator().manual_seed(s) for s in seeds]).images
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return images, store.maps()
