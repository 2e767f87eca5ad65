"""Ray Data actor generating SAS capability images: (class name, seed) rows -> Stable Diffusion image + coarse mask."""

from __future__ import annotations

import numpy as np

from actors import actor_device, actor_dtype
from sas_ray.models.diffusion import DiffusionGenerator


class DiffusionActor:
    """Input columns `class_name` (str), `seed` (int); adds `image` uint8 [S, S, 3] and `coarse_mask` bool [S, S].

    `options` go to DiffusionGenerator (steps, guidance, image_size). A batch is one pipeline call."""

    def __init__(self, weights: str | None = None, tiny: bool = False, dtype: str = "float16",
                 storage_options: dict | None = None, options: dict | None = None):
        device = actor_device()
        self.generator = DiffusionGenerator(weights, tiny=tiny, device=device, dtype=actor_dtype(dtype, device),
                                            storage_options=storage_options, **(options or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, masks = self.generator.generate([str(c) for c in batch["class_name"]],
                                                [int(s) for s in batch["seed"]])
        return {**batch, "image": images, "coarse_mask": masks}
