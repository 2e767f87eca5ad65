"""Mask-level CLIP features: SAM masks from a point grid, each mask's region embedded by CLIP, painted per pixel.

The SEEM role of SPEC §5.3 (one text-space vector per segment) built from installable parts. Masks come from
`MaskGenerator` (segment_anything's automatic generator on the device, batched over frames). Each mask's region is
embedded one of two ways (`region`):
- "crop" (default): the mask's bounding box cut out, pixels outside the mask set to the CLIP mean colour, padded to a
  square and resized to the CLIP input size (`masked_square_crops`, all masks of a batch at once), then one CLIP
  image forward over all crops; the unit image embedding is the mask's feature;
- "pool": the dense MaskCLIP features of `openclip-dense` (same CLIP) averaged inside the mask: no crop pass at all.
Where masks overlap, the one with the highest SAM predicted IoU wins; pixels in no mask get the zero vector.
`sas_ray.reference.reference_sam_clip` is the original frame-by-frame path (segment_anything's generator, one crop at
a time) that this one reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sas_ray.errors import ConfigError
from sas_ray.models.base import Resources, Teacher, frames_to_float, register_teacher
from sas_ray.models.clip_model import load_clip
from sas_ray.models.region_crops import masked_square_crops
from sas_ray.models.sam import load_sam
from sas_ray.models.sam_fast import FastImageEncoder, FastMaskDecoder
from sas_ray.models.sam_masks import FrameMasks, MaskGenerator

REGIONS = ("crop", "pool")


@register_teacher("sam-clip")
class SamClip(Teacher):
    resources = Resources(gpus=1.0, batch_size=8)

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, arch: str = "ViT-L-14", sam_weights: str | None = None,
                 sam_arch: str = "vit_h", points_per_side: int | None = None, points_per_batch: int = 256,
                 pred_iou_thresh: float | None = None, stability_score_thresh: float | None = None,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, max_masks: int | None = None,
                 region: str = "crop", crop_batch: int = 256, fast: bool | None = None,
                 compile_mode: str | None = None, seed: int = 0):
        """`weights` is the CLIP checkpoint (it defines the text space), `sam_weights` the SAM one.

        Mask-generator defaults are segment_anything's (32 points a side, IoU 0.88, stability 0.95, box NMS 0.7); a
        tiny model uses 4 points a side and no quality filter, as its random masks never pass SAM's thresholds.
        `max_masks` keeps a frame's K best masks after NMS. `crop_batch` bounds the crops per CLIP forward. `fast`
        (default: on CUDA) runs SAM's image encoder through `FastImageEncoder` and its decoder through
        `FastMaskDecoder`, both in `dtype`; `compile_mode` (fast path only) compiles the image encoder (the CLIP
        crop pass is matrix products that compiling did not speed up: docs/perf/README.md)."""
        super().__init__(device, dtype)
        if region not in REGIONS:
            raise ConfigError(f"sam-clip: unknown region {region!r}; known: {REGIONS}")
        self.clip = load_clip(arch, weights, tiny=tiny, device=self.device, dtype=dtype,
                              storage_options=storage_options, seed=seed)
        sam = load_sam(sam_arch, sam_weights, tiny=tiny, device=self.device, storage_options=storage_options,
                       seed=seed)
        decoder = None
        if fast or (fast is None and self.device.type == "cuda"):
            sam.image_encoder = FastImageEncoder(sam.image_encoder, dtype=dtype, rel_pos="fold")
            if compile_mode is not None:
                sam.image_encoder.compile(mode=compile_mode)
            decoder = FastMaskDecoder(sam.mask_decoder, dtype=dtype)
        elif compile_mode is not None:
            raise ConfigError("sam-clip: compile_mode applies to the fast path (fast=True)")
        self.masks = MaskGenerator(
            sam, points_per_side=points_per_side or (4 if tiny else 32), points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh if pred_iou_thresh is not None else (0.0 if tiny else 0.88),
            stability_score_thresh=(stability_score_thresh if stability_score_thresh is not None
                                    else (0.0 if tiny else 0.95)),
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh, max_masks=max_masks,
            dtype=dtype, decoder=decoder)
        self.region = region
        self.crop_batch = crop_batch
        self.dense = None
        if region == "pool":
            from sas_ray.models.openclip_dense import OpenClipDense

            self.dense = OpenClipDense(device=self.device, dtype=dtype, clip=self.clip, fast=fast,
                                       compile_mode=compile_mode)
        self.dim = self.clip.dim
        self.text_space = self.clip.text_space

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        frames = frames_to_float(images, self.device)  # validates; [B, 3, H, W]
        found = self.masks.generate(torch.as_tensor(images).to(self.device))
        out = torch.zeros(*frames.shape[:1], *frames.shape[2:], self.dim, device=self.device, dtype=self.dtype)
        if not any(len(f) for f in found):
            return out
        embeddings = (self._pooled(images, found) if self.region == "pool" else self._crops(frames, found))
        for b, (frame_masks, emb) in enumerate(zip(found, embeddings)):
            if len(frame_masks):
                out[b] = paint_masks(frame_masks.masks, frame_masks.scores, emb).to(self.dtype)
        return out

    def _crops(self, frames: torch.Tensor, found: list[FrameMasks]) -> list[torch.Tensor]:
        """Unit CLIP embeddings of every mask's masked square crop, all frames' masks in one batched pass."""
        counts = [len(f) for f in found]
        masks = torch.cat([f.masks for f in found])
        boxes = torch.cat([f.boxes for f in found])
        frame_index = torch.repeat_interleave(torch.arange(len(found), device=self.device),
                                              torch.tensor(counts, device=self.device))
        mean = torch.tensor(self.clip.mean, device=self.device)
        embeddings = []
        for start in range(0, len(masks), self.crop_batch):
            part = slice(start, start + self.crop_batch)
            crops = masked_square_crops(frames, frame_index[part], masks[part], boxes[part], self.clip.image_size,
                                        mean)
            batch = self.clip.normalize(crops).to(self.dtype)
            embeddings.append(F.normalize(self.clip.model.encode_image(batch).float(), dim=-1))
        return list(torch.cat(embeddings).split(counts))

    def _pooled(self, images: torch.Tensor, found: list[FrameMasks]) -> list[torch.Tensor]:
        """Unit means of the dense MaskCLIP features inside each mask (float32 sums: no fp16 overflow)."""
        dense = self.dense.encode(images)  # [B, H, W, C]
        pooled = []
        for feats, frame_masks in zip(dense, found):
            weights = frame_masks.masks.flatten(1).float()
            pooled.append(F.normalize(weights @ feats.flatten(0, 1).float(), dim=-1))
        return pooled


def paint_masks(masks: torch.Tensor, scores: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """bool [K, H, W], scores [K], embeddings [K, C] -> [H, W, C]: each pixel takes the embedding of the highest
    scoring mask covering it (the first such mask on ties), zero where no mask covers it."""
    ranked = torch.where(masks, scores.float()[:, None, None], -torch.inf)
    best = ranked.argmax(dim=0)  # [H, W]; argmax returns the first maximum
    covered = masks.any(dim=0)
    return torch.where(covered[..., None], embeddings[best], torch.zeros((), dtype=embeddings.dtype,
                                                                         device=embeddings.device))
