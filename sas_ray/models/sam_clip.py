"""Mask-level CLIP features: SAM masks from a point grid, each mask's region embedded by CLIP, painted per pixel.

The SEEM role of SPEC §5.3 (one text-space vector per segment) built from installable parts. Each mask is cut out
by its bounding box, pixels outside the mask set to the CLIP mean colour, padded to a square and resized to the
CLIP input size; its unit image embedding is painted on the mask's pixels. Where masks overlap, the one with the
highest SAM predicted IoU wins; pixels in no mask get the zero vector.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator

from sas_ray.models.base import Resources, Teacher, frames_to_float, register_teacher
from sas_ray.models.clip_model import load_clip
from sas_ray.models.sam import load_sam, sam_autocast


@register_teacher("sam-clip")
class SamClip(Teacher):
    resources = Resources(gpus=1.0, batch_size=2)

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, arch: str = "ViT-L-14", sam_weights: str | None = None,
                 sam_arch: str = "vit_h", points_per_side: int | None = None, pred_iou_thresh: float | None = None,
                 stability_score_thresh: float | None = None, points_per_batch: int = 64, seed: int = 0):
        """`weights` is the CLIP checkpoint (it defines the text space), `sam_weights` the SAM one.

        Mask-generator defaults are segment_anything's (32 points a side, IoU 0.88, stability 0.95); a tiny model
        uses 4 points a side and no quality filter, as its random masks never pass SAM's thresholds."""
        super().__init__(device, dtype)
        self.clip = load_clip(arch, weights, tiny=tiny, device=self.device, dtype=dtype,
                              storage_options=storage_options, seed=seed)
        sam = load_sam(sam_arch, sam_weights, tiny=tiny, device=self.device, storage_options=storage_options,
                       seed=seed)
        self.masks = SamAutomaticMaskGenerator(
            sam, points_per_side=points_per_side or (4 if tiny else 32), points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh if pred_iou_thresh is not None else (0.0 if tiny else 0.88),
            stability_score_thresh=(stability_score_thresh if stability_score_thresh is not None
                                    else (0.0 if tiny else 0.95)))
        self.dim = self.clip.dim
        self.text_space = self.clip.text_space

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        frames = frames_to_float(images, self.device)  # validates; [B, 3, H, W]
        pixels = torch.as_tensor(images).cpu().numpy()
        out = []
        for frame, rgb in zip(frames, pixels):
            with sam_autocast(self.device, self.dtype):
                records = [r for r in self.masks.generate(rgb) if r["area"] > 0]  # empty masks paint nothing
            if not records:
                out.append(torch.zeros(*rgb.shape[:2], self.dim, device=self.device, dtype=self.dtype))
                continue
            masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).to(self.device)
            scores = torch.tensor([r["predicted_iou"] for r in records], device=self.device)
            out.append(paint_masks(masks, scores, self._embed_regions(frame, masks)).to(self.dtype))
        return torch.stack(out)

    def _embed_regions(self, frame: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """float [3, H, W] in [0, 1] and bool [K, H, W] -> unit CLIP image embeddings [K, C] of the masked crops."""
        size = self.clip.image_size
        mean = torch.tensor(self.clip.mean, device=frame.device).view(3, 1, 1)
        crops = []
        for mask in masks:
            rows, cols = torch.nonzero(mask, as_tuple=True)
            r0, r1, c0, c1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
            crop = torch.where(mask[r0:r1, c0:c1], frame[:, r0:r1, c0:c1], mean)
            side = max(r1 - r0, c1 - c0)
            square = mean.expand(3, side, side).clone()  # pad to a square around the centred crop
            top, left = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
            square[:, top:top + r1 - r0, left:left + c1 - c0] = crop
            crops.append(F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=side > size)[0])
        batch = self.clip.normalize(torch.stack(crops)).to(self.dtype)
        return F.normalize(self.clip.model.encode_image(batch).float(), dim=-1)


def paint_masks(masks: torch.Tensor, scores: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """bool [K, H, W], scores [K], embeddings [K, C] -> [H, W, C]: each pixel takes the embedding of the highest
    scoring mask covering it (the first such mask on ties), zero where no mask covers it."""
    ranked = torch.where(masks, scores.float()[:, None, None], -torch.inf)
    best = ranked.argmax(dim=0)  # [H, W]; argmax returns the first maximum
    covered = masks.any(dim=0)
    return torch.where(covered[..., None], embeddings[best], torch.zeros((), dtype=embeddings.dtype,
                                                                         device=embeddings.device))
