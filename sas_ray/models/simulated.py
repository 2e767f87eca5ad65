"""A teacher with known answers on synthetic data: each pixel is the class whose synthetic base colour is nearest.

On frames painted with the flat class colours of `sas_ray.datasets.synthetic` it is right everywhere, and
`confuse={"chair": "table"}` makes it wrong on chosen classes, so capability and evaluation code can be checked
against exact expectations. On rendered synthetic frames (shaded, jittered colours) it is only good for classes of
distinctive colour (sofa, curtain). Pixel features are the unit text embeddings of the predicted class's prompt
("a {class} in a scene", bare "other"), so they live in the text space of the text encoder it is built with:
`weights` is that CLIP checkpoint, or `tiny=True` for the tiny text encoder of the same `seed`.
"""

from __future__ import annotations

import torch

from sas_ray.datasets.synthetic import CLASS_COLORS
from sas_ray.errors import ConfigError
from sas_ray.labels import LABEL_SETS
from sas_ray.models.base import Resources, Teacher, build_text_encoder, frames_to_float, register_teacher


@register_teacher("simulated-colour")
class SimulatedColour(Teacher):
    resources = Resources(gpus=0.0, batch_size=16)

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, arch: str = "ViT-L-14", seed: int = 0,
                 label_set: str = "matterport21", confuse: dict[str, str] | None = None):
        super().__init__(device, dtype)
        if label_set not in LABEL_SETS:
            raise ConfigError(f"simulated-colour: unknown label set {label_set!r}; known: {sorted(LABEL_SETS)}")
        labels = LABEL_SETS[label_set]
        coloured = [i for i, name in enumerate(labels) if name in CLASS_COLORS]
        if not coloured:
            raise ConfigError(f"simulated-colour: no class of {label_set!r} has a synthetic colour")
        confuse = confuse or {}
        unknown = sorted((set(confuse) | set(confuse.values())) - set(labels))
        if unknown:
            raise ConfigError(f"simulated-colour: confuse names classes not in {label_set!r}: {unknown}")
        encoder = build_text_encoder("openclip-text", weights, tiny=tiny, device=self.device,
                                     storage_options=storage_options, arch=arch, seed=seed)
        text = encoder.encode_labels(labels)
        self.dim = encoder.dim
        self.text_space = encoder.text_space
        self.palette = torch.tensor([CLASS_COLORS[labels[i]] for i in coloured], dtype=torch.float32,
                                    device=self.device)
        answers = [labels.index(confuse.get(labels[i], labels[i])) for i in coloured]
        self.answer_features = text[answers].to(device=self.device, dtype=dtype)  # [P, dim], row p = colour p's class

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        rgb = frames_to_float(images, self.device).permute(0, 2, 3, 1) * 255.0  # [B, H, W, 3]
        nearest = torch.cdist(rgb.flatten(1, 2), self.palette[None].expand(len(rgb), -1, -1)).argmin(dim=-1)
        return self.answer_features[nearest].unflatten(1, rgb.shape[1:3])
