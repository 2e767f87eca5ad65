"""Segment Anything: model loading (real ViT-H/L/B or a tiny random one) and SAS's promptable mask refinement.

`SamRefiner.refine` reproduces SAS `MCC/sam_util` (SPEC §5.4): zero a 70 px border of the coarse diffusion mask,
seed four 2x2 squares near the centre if fewer than 10 pixels remain, pick 3 positive points by distance
transform (1 component: three successive farthest-from-background points; 2: two in the largest + one in the
second; >= 3: one in each of the three largest), one SAM prediction with `multimask_output=False`.
Deliberate differences: the image is given to SAM as RGB (SAS read it with cv2, i.e. BGR, and declared RGB);
components are ranked by area among foreground components only, ties by label order (SAS ranked background too
and picked the first label of equal areas twice); the distance transform is exact Euclidean (SAS: cv2 5x5 mask).
"""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import torch
from scipy import ndimage
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sas_ray.errors import ConfigError, InputError
from sas_ray.models.base import check_weights_choice
from sas_ray.models.sam_fast import FastImageEncoder
from sas_ray.models.weights import load_into, read_checkpoint

SAM_ARCHS = ("vit_h", "vit_l", "vit_b")
TINY_ARCH = "tiny"
TINY_IMAGE_SIZE = 64


def tiny_sam() -> Sam:
    """SAM's own classes at toy sizes: 64 px input, 2-block ViT, 16-d prompts, 2-layer two-way transformer."""
    dim, patch = 16, 8
    return Sam(
        image_encoder=ImageEncoderViT(img_size=TINY_IMAGE_SIZE, patch_size=patch, embed_dim=32, depth=2, num_heads=2,
                                      mlp_ratio=2.0, out_chans=dim, qkv_bias=True, use_rel_pos=True, window_size=4,
                                      global_attn_indexes=(1,), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(TINY_IMAGE_SIZE // patch,) * 2,
                                     input_image_size=(TINY_IMAGE_SIZE,) * 2, mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=2,
                                 iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=2, mlp_dim=32)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(arch: str = "vit_h", weights: str | None = None, *, tiny: bool = False, device="cpu",
             storage_options: dict | None = None, seed: int = 0) -> Sam:
    """An eval-mode fp32 SAM (run half precision through `sam_autocast`): `arch` with weights from a URL, or
    `tiny=True` (the tiny arch, random weights seeded by `seed`)."""
    check_weights_choice("SAM", weights, tiny)
    arch = TINY_ARCH if tiny else arch
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if tiny else device):  # a real model's random
        torch.manual_seed(seed)                                                       # init runs on the device
        if arch == TINY_ARCH:
            sam = tiny_sam()
        elif arch in SAM_ARCHS:
            sam = sam_model_registry[arch](checkpoint=None)  # random init; weights loaded below without pickle
        else:
            raise ConfigError(f"unknown SAM architecture {arch!r}; known: {SAM_ARCHS + (TINY_ARCH,)}")
    if not tiny:
        load_into(sam, read_checkpoint(weights, storage_options))
    return sam.eval().requires_grad_(False).to(device)


def sam_autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for SAM on CUDA (its pre/post-processing expects fp32 weights); a no-op on CPU."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def prepare_coarse_mask(coarse: np.ndarray, border: int = 70, min_area: int = 10) -> np.ndarray:
    """bool [H, W] -> the mask SAS prompts from: `border` pixels zeroed on every side, and if fewer than
    `min_area` pixels remain, four 2x2 seeds at rows/cols (H/2 - 16, H/2 + 14) (240 and 270 for 512 px)."""
    mask = np.array(coarse, dtype=bool)
    if border > 0:
        mask[:border] = mask[-border:] = False
        mask[:, :border] = mask[:, -border:] = False
    if mask.sum() < min_area:
        height, width = mask.shape
        for r in (height // 2 - 16, height // 2 + 14):
            for c in (width // 2 - 16, width // 2 + 14):
                mask[r:r + 2, c:c + 2] = True
    return mask


def prompt_points(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] (non-empty) -> int [3, 2] positive point prompts as (x, y), by distance transform (SPEC §5.4)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity, raster order
    if count == 0:
        raise InputError("prompt_points: the coarse mask is empty")
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable") + 1  # component labels by decreasing area
    if count == 1:
        component = labels == order[0]
        points = []
        for _ in range(3):
            points.append(_farthest_from_background(component))
            component[points[-1]] = False  # the chosen pixel becomes background, as SAS does
    elif count == 2:
        first = labels == order[0]
        a = _farthest_from_background(first)
        first[a] = False
        points = [a, _farthest_from_background(first), _farthest_from_background(labels == order[1])]
    else:
        points = [_farthest_from_background(labels == label) for label in order[:3]]
    return np.array([[col, row] for row, col in points], dtype=np.int64)


def _farthest_from_background(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first pixel, in raster order, with the largest Euclidean distance to the background."""
    dist = ndimage.distance_transform_edt(mask)
    return tuple(int(i) for i in np.unravel_index(np.argmax(dist), dist.shape))


class SamRefiner:
    """Promptable SAM turning a coarse mask into a pseudo ground-truth mask (SPEC §5.4).

    `fast` (default: on CUDA) runs the image encoder through `FastImageEncoder` (SDPA attention, its weights cast to
    `dtype` in place, relative positions as `rel_pos`), compiled with `compile_mode` if given (None: eager)."""

    def __init__(self, weights: str | None = None, *, tiny: bool = False, device="cpu", dtype=torch.float32,
                 storage_options: dict | None = None, arch: str = "vit_h", border: int = 70, min_area: int = 10,
                 fast: bool | None = None, rel_pos: str = "fold", compile_mode: str | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        sam = load_sam(arch, weights, tiny=tiny, device=self.device, storage_options=storage_options)
        if fast or (fast is None and self.device.type == "cuda"):
            sam.image_encoder = FastImageEncoder(sam.image_encoder, dtype=dtype, rel_pos=rel_pos)
            if compile_mode is not None:
                sam.image_encoder.compile(mode=compile_mode)
        self.predictor = SamPredictor(sam)
        self.border = border
        self.min_area = min_area

    @torch.inference_mode()
    def refine(self, image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3] and bool [H, W] coarse mask -> bool [H, W] refined mask."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or coarse.shape != image.shape[:2]:
            raise InputError(f"refine: expected uint8 [H, W, 3] and a bool [H, W] mask, got {image.dtype} "
                             f"{image.shape} and {coarse.shape}")
        points = prompt_points(prepare_coarse_mask(coarse, self.border, self.min_area))
        with sam_autocast(self.device, self.dtype):
            self.predictor.set_image(image)
            masks, _, _ = self.predictor.predict(point_coords=points.astype(np.float32),
                                                 point_labels=np.ones(len(points), dtype=np.int64),
                                                 multimask_output=False)
        self.predictor.reset_image()
        return masks[0].astype(bool)
