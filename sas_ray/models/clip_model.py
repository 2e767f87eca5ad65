"""OpenCLIP models built offline: an open_clip architecture config plus a checkpoint URL, or a tiny random config.

The dense teacher, the mask teacher and the text encoder all load CLIP through here, so equal checkpoints give equal
`text_space` strings ("openclip:<arch>:<checkpoint id>") and features they can be compared with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer

from sas_ray.errors import ConfigError
from sas_ray.models.weights import load_into, read_checkpoint

TINY_ARCH = "tiny"
# Same classes as ViT-L-14 (VisionTransformer + text Transformer + real BPE vocabulary), a few thousand times smaller.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass
class ClipModel:
    """An eval-mode open_clip CLIP on a device, with what callers need to feed it."""

    model: open_clip.CLIP
    arch: str
    text_space: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return self.model.visual.image_size[0]

    @property
    def patch_size(self) -> int:
        return self.model.visual.patch_size[0]

    @property
    def dim(self) -> int:
        return self.model.visual.output_dim

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> CLIP-normalised, same device and dtype."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def tokenizer(self) -> SimpleTokenizer:
        """open_clip's own BPE tokenizer (vocabulary shipped in the wheel: no download)."""
        return SimpleTokenizer(context_length=self.model.context_length)


def arch_config(arch: str) -> dict:
    """The open_clip model config of `arch` (or the tiny one); only plain ViT CLIP configs are supported."""
    if arch == TINY_ARCH:
        return copy.deepcopy(TINY_CONFIG)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown open_clip architecture {arch!r}; e.g. ViT-B-16, ViT-L-14, ViT-L-14-336, "
                          f"ViT-L-14-quickgelu (OpenAI weights), or {TINY_ARCH!r}")
    vision = cfg.get("vision_cfg", {})
    if cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}) or "timm_model_name" in vision \
            or isinstance(vision.get("layers"), (list, tuple)) or vision.get("attentional_pool"):
        raise ConfigError(f"open_clip architecture {arch!r} is not a plain ViT CLIP (custom text, timm or ResNet "
                          "tower); the dense value-path features need open_clip's own VisionTransformer")
    return copy.deepcopy(cfg)


def load_clip(arch: str, weights: str | None, *, tiny: bool, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, storage_options: dict | None = None, seed: int = 0) -> ClipModel:
    """Build `arch` and load `weights` (safetensors / weights-only torch), or a tiny random CLIP seeded by `seed`.

    A tiny model is fully determined by its seed, so a tiny teacher and a tiny text encoder share one space."""
    if tiny:
        arch = TINY_ARCH
    cfg = arch_config(arch)
    preprocess = cfg.pop("preprocess_cfg", {})
    cfg.pop("custom_text", None)
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if tiny else device):  # a real model's random
        torch.manual_seed(seed)                                                       # init runs on the device
        model = open_clip.CLIP(**cfg)
    if tiny:
        space = f"openclip:{arch}:seed{seed}"
    else:
        checkpoint = read_checkpoint(weights, storage_options)
        load_into(model, checkpoint)
        space = f"openclip:{arch}:{checkpoint.id}"
    model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    return ClipModel(model, arch, space, tuple(preprocess.get("mean", OPENAI_DATASET_MEAN)),
                     tuple(preprocess.get("std", OPENAI_DATASET_STD)))
