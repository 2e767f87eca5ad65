"""Automatic masks on the device: segment_anything's `SamAutomaticMaskGenerator` (one crop layer), batched over frames.

The same point grid, model calls, filters and box NMS as segment_anything's generator, with its defaults, but nothing
leaves the device: no RLE, no numpy, no per-mask loop. What differs is how, not what:
- frames are resized to SAM's input on the device (bilinear, antialiased, rounded to uint8 like PIL: within one grey
  level of segment_anything's PIL resize);
- candidates are filtered by predicted IoU before any upsampling, and SAM's two bilinear resizes of the low-resolution
  logits (256 -> 1024, crop to the resized frame, -> frame size) are one linear map per axis, applied as two matrix
  products to the survivors only;
- the image encoder runs once over the whole batch of frames; the prompt grid, encoded once per frame size, goes
  through the decoder in chunks of `points_per_batch` (default 256, segment_anything's 64), optionally through
  `FastMaskDecoder`.
`max_masks` (not in segment_anything) keeps the K highest-scoring masks of a frame after NMS: a bound on the work of
everything downstream, and how benchmarks hold the mask count at a real frame's order of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import batched_nms

from sas_ray.errors import ConfigError, InputError
from sas_ray.models.sam import sam_autocast
from sas_ray.models.sam_fast import FastMaskDecoder

@dataclass(frozen=True)
class FrameMasks:
    """One frame's masks, best first: bool [K, H, W], predicted IoU [K], stability [K], boxes xyxy (inclusive
    pixel bounds, segment_anything's convention) [K, 4], prompt points (x, y) in frame pixels [K, 2]."""

    masks: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


class MaskGenerator:
    """`generate(images)`: uint8 [B, H, W, 3] RGB frames of one size -> a `FrameMasks` per frame.

    Options and defaults are segment_anything's (`crop_n_layers` 0, `min_mask_region_area` 0); `decoder` replaces
    `sam.mask_decoder` (e.g. a `FastMaskDecoder` over the same weights)."""

    def __init__(self, sam: Sam, *, points_per_side: int = 32, points_per_batch: int = 256,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, max_masks: int | None = None,
                 dtype: torch.dtype = torch.float32, decoder: torch.nn.Module | None = None):
        if points_per_side < 1 or points_per_batch < 1:
            raise ConfigError(f"points_per_side and points_per_batch must be >= 1, got {points_per_side} and "
                              f"{points_per_batch}")
        if max_masks is not None and max_masks < 1:
            raise ConfigError(f"max_masks must be >= 1 or None, got {max_masks}")
        self.sam = sam
        self.decoder = decoder if decoder is not None else sam.mask_decoder
        self._skips = isinstance(self.decoder, FastMaskDecoder)  # can leave prompts failing the IoU filter undone
        self.points_per_side = points_per_side
        self.grid = build_point_grid(points_per_side)  # [n*n, 2] (x, y) in [0, 1], segment_anything's order
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.max_masks = max_masks
        self.dtype = dtype
        self.device = sam.device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self._prompts_of: dict[tuple[int, int], tuple] = {}  # the last frame size's prompts (`_prompts`)

    @torch.inference_mode()
    def generate(self, images: torch.Tensor) -> list[FrameMasks]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"MaskGenerator: expected uint8 [B, H, W, 3] frames, got {images.dtype} "
                             f"{tuple(images.shape)}")
        height, width = images.shape[1:3]
        chunks, points = self._prompts(height, width)
        embeddings = self.embed(images.to(self.device))
        return [self._frame_masks(embeddings[b:b + 1], chunks, points, (height, width))
                for b in range(len(embeddings))]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] on the device -> SAM image embeddings [B, 256, 64, 64] (one encoder batch)."""
        size = self.transform.get_preprocess_shape(*images.shape[1:3], self.transform.target_length)
        x = resize_like_pil(images.permute(0, 3, 1, 2), size)
        with sam_autocast(self.device, self.dtype):
            return self.sam.image_encoder(self.sam.preprocess(x))

    def _prompts(self, height: int, width: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The grid's prompts for frames of this size: each chunk's prompt-encoder outputs (sparse, dense) and the
        points in pixels. The same for every frame, so computed once per frame size: the prompt encoder's label masks
        and the coordinates' copy to the device make the host wait for the device."""
        if (height, width) not in self._prompts_of:
            points = self.grid * np.array([[width, height]])
            coords = torch.as_tensor(self.transform.apply_coords(points, (height, width)), device=self.device)
            labels = torch.ones(len(coords), 1, dtype=torch.int, device=self.device)
            with sam_autocast(self.device, self.dtype):
                chunks = [self.sam.prompt_encoder(points=(coords[start:start + self.points_per_batch, None, :],
                                                          labels[start:start + self.points_per_batch]),
                                                  boxes=None, masks=None)
                          for start in range(0, len(coords), self.points_per_batch)]
            self._prompts_of = {(height, width): (chunks, torch.as_tensor(points, device=self.device))}
        return self._prompts_of[height, width]

    def _frame_masks(self, embedding: torch.Tensor, chunks: list[tuple[torch.Tensor, torch.Tensor]],
                     points: torch.Tensor, frame_size: tuple[int, int]) -> FrameMasks:
        """One frame's prompt chunks through the decoder, then the filters and NMS over all its candidates: the host
        waits on the device three times a frame (the two filters' counts and NMS), not once per chunk."""
        decoded = [self._decode(embedding, sparse, dense) for sparse, dense in chunks]
        low_res, scores = (torch.cat(parts) for parts in zip(*decoded))  # [N, 256, 256], [N] for N candidates
        prompt = torch.arange(len(points), device=self.device).repeat_interleave(len(scores) // len(points))
        keep = torch.arange(len(scores), device=self.device)
        if self.pred_iou_thresh > 0.0:
            keep = keep[scores > self.pred_iou_thresh]
        masks, stability = self._upsample(low_res, keep, frame_size)
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
            keep, masks, stability = keep[stable], masks[stable], stability[stable]
        boxes = batched_mask_to_box(masks)
        order = batched_nms(boxes.float(), scores[keep].float(), torch.zeros_like(keep),
                            iou_threshold=self.box_nms_thresh)
        if self.max_masks is not None:
            order = order[:self.max_masks]  # nms returns decreasing scores
        keep = keep[order]
        return FrameMasks(masks[order], scores[keep], stability[order], boxes[order], points[prompt[keep]])

    def _decode(self, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of n encoded prompts through the decoder -> low-resolution logits [3n, 256, 256] and predicted
        IoUs [3n] (a prompt's outputs consecutive); with `FastMaskDecoder`, prompts none of whose outputs pass the IoU
        filter get zero logits (not computed)."""
        skip = {"skip_below": self.pred_iou_thresh} if self._skips and self.pred_iou_thresh > 0.0 else {}
        with sam_autocast(self.device, self.dtype):
            low_res, iou = self.decoder(image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=True, **skip)
        return low_res.flatten(0, 1), iou.flatten()

    def _upsample(self, low_res: torch.Tensor, keep: torch.Tensor, frame_size: tuple[int, int],
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks bool [S, H, W] and stability scores [S] of the candidates `keep` (int [S]) at the frame's size, a
        bounded number of float32 logit maps at a time."""
        input_size = self.transform.get_preprocess_shape(*frame_size, self.transform.target_length)
        up_rows, up_cols = logit_upsampling(low_res.shape[-1], self.sam.image_encoder.img_size, input_size,
                                            frame_size, self.device)
        masks, stability = [], []
        step = 3 * self.points_per_batch
        for part in keep.split(step) if len(keep) else [keep]:
            logits = up_rows @ low_res[part].float() @ up_cols.T  # [s, H, W]
            stability.append(calculate_stability_score(logits, self.sam.mask_threshold, self.stability_score_offset))
            masks.append(logits > self.sam.mask_threshold)
        return torch.cat(masks), torch.cat(stability)


def resize_like_pil(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, h, w] holding uint8 values: bilinear with PIL's antialiasing, rounded."""
    x = images.float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255)


@lru_cache(maxsize=16)
def logit_upsampling(low_res: int, img_size: int, input_size: tuple[int, int], frame_size: tuple[int, int],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 [H, low_res] and [W, low_res] with rows @ logits @ cols.T == segment_anything's `postprocess_masks`
    (bilinear to img_size, crop to `input_size`, bilinear to `frame_size`): exact linear maps, built in float64."""
    maps = []
    for input_len, frame_len in zip(input_size, frame_size):
        first = _resize_matrix(low_res, img_size)[:input_len]  # [input_len, low_res]
        maps.append((_resize_matrix(input_len, frame_len) @ first).float().to(device))
    return tuple(maps)


def _resize_matrix(length: int, size: int) -> torch.Tensor:
    """Float64 [size, length]: F.interpolate's bilinear (align_corners=False) resize of one axis, as a matrix."""
    eye = torch.eye(length, dtype=torch.float64)[None, None]  # resize rows (dim 2), keep columns
    return F.interpolate(eye, size=(size, length), mode="bilinear", align_corners=False)[0, 0]
