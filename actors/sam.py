"""Ray Data actor refining coarse masks with promptable SAM (SAS capability pseudo labels, SPEC §5.4)."""

from __future__ import annotations

import numpy as np

from actors import actor_device, actor_dtype
from sas_ray.models.sam import SamRefiner


class SamRefineActor:
    """Input columns `image` uint8 [H, W, 3] and `coarse_mask` bool [H, W]; adds `mask` bool [H, W].

    `options` go to SamRefiner (arch, border, min_area)."""

    def __init__(self, weights: str | None = None, tiny: bool = False, dtype: str = "float16",
                 storage_options: dict | None = None, options: dict | None = None):
        device = actor_device()
        self.refiner = SamRefiner(weights, tiny=tiny, device=device, dtype=actor_dtype(dtype, device),
                                  storage_options=storage_options, **(options or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        masks = np.stack([self.refiner.refine(image, coarse)
                          for image, coarse in zip(batch["image"], batch["coarse_mask"])])
        return {**batch, "mask": masks}
