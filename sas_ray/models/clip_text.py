"""CLIP text embeddings of prompts (SPEC §4: "a {label} in a scene", bare "other"), unit rows, in a teacher's space."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sas_ray.models.base import TextEncoder, register_text_encoder
from sas_ray.models.clip_model import load_clip


@register_text_encoder("openclip-text")
class OpenClipText(TextEncoder):
    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu",
                 storage_options: dict | None = None, arch: str = "ViT-L-14", seed: int = 0):
        self.clip = load_clip(arch, weights, tiny=tiny, device=device, storage_options=storage_options, seed=seed)
        self.dim = self.clip.dim
        self.text_space = self.clip.text_space
        self._tokenize = self.clip.tokenizer()

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"expected a non-empty list of prompts, got {prompts!r}")
        device = next(self.clip.model.parameters()).device
        tokens = self._tokenize(list(prompts)).to(device)
        return F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1).cpu()
