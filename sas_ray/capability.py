"""Model capability (SAS MCC, SPEC §5.4): how well each 2D teacher segments each vocabulary class, from images
with reference masks (Stable Diffusion images with SAM pseudo masks, or labelled frames), for any number of teachers.

A teacher's mask of class j is where j wins the argmax of its per-pixel features against the vocabulary's text
embeddings. Mask-level teachers need nothing else: a segment painted with a text embedding (SEEM's class names, our
sam-clip's crop embeddings) maps to the vocabulary class of highest similarity, which is SAS's SEEM-class ->
vocabulary mapping by `argmax(seem_text @ vocab.T)`. Pixels with a zero feature (no segment) predict nothing.

Each image gives counts (|pred AND ref|, |pred OR ref|) per class; from them
  capability[j]      = sum_i |pred AND ref| / sum_i |pred OR ref|   (SAS `cal_miou.py`, dataset-level IoU)
  per_image_miou[j]  = mean over images with a non-empty union of |pred AND ref| / |pred OR ref|  (the paper's form)
and 'other' is 0, as in SAS. A class with no union anywhere (never predicted, never in a reference) is 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from sas_ray.errors import InputError
from sas_ray.ids import check_id

NO_CLASS = -1  # class map value of pixels without a prediction


def teacher_class_map(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Features [..., C] (a teacher's per-pixel output, any float dtype) and vocabulary embeddings [K, C] -> int64
    [...]: the vocabulary class of highest dot product per pixel (ties: lowest index), NO_CLASS where the feature
    is zero."""
    if features.shape[-1] != text.shape[-1]:
        raise InputError(f"teacher features have {features.shape[-1]} channels but the vocabulary embeddings "
                         f"{text.shape[-1]} (teacher and text encoder must share one text space)")
    scores = features @ text.to(device=features.device, dtype=features.dtype).t()  # in the teacher's precision
    classes = scores.argmax(dim=-1)
    return torch.where(features.abs().amax(dim=-1) > 0, classes, torch.full_like(classes, NO_CLASS))


def mask_counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """(|pred AND ref|, |pred OR ref|) of two bool masks of one image."""
    if pred.shape != ref.shape:
        raise InputError(f"masks of different sizes: {pred.shape} and {ref.shape}")
    return int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred | ref))


@dataclass(frozen=True)
class ClassCounts:
    """One image's counts for the classes that occur in its prediction or reference: int64 [n] each."""

    class_index: np.ndarray
    intersection: np.ndarray
    union: np.ndarray


def label_counts(class_map: np.ndarray, labels: np.ndarray, num_classes: int) -> ClassCounts:
    """Counts of a teacher's class map int [H, W] against a label image int [H, W] (IGNORE_LABEL, or anything
    outside 0..num_classes-1, = not annotated: those pixels count for no class)."""
    if class_map.shape != labels.shape:
        raise InputError(f"class map {class_map.shape} and label image {labels.shape} differ in size")
    labels = np.asarray(labels, dtype=np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    gt, pred = labels[valid], class_map[valid]
    intersection = np.bincount(gt[pred == gt], minlength=num_classes)
    predicted = np.bincount(pred[pred >= 0], minlength=num_classes)
    union = np.bincount(gt, minlength=num_classes) + predicted - intersection
    present = np.flatnonzero(union)
    return ClassCounts(present, intersection[present].astype(np.int64), union[present].astype(np.int64))


@dataclass(frozen=True)
class Capability:
    """One teacher's measurement, float64/int64 [K] per vocabulary class."""

    capability: np.ndarray  # dataset-level IoU
    per_image_miou: np.ndarray  # mean of per-image IoUs
    intersection: np.ndarray
    union: np.ndarray
    images: np.ndarray  # images with a non-empty union


def aggregate(class_index, intersection, union, num_classes: int, other_index: int | None) -> Capability:
    """Capability per class from per-(image, class) counts (three int arrays [N], one entry per image and class)."""
    k = np.asarray(class_index, dtype=np.int64)
    inter = np.asarray(intersection, dtype=np.int64)
    uni = np.asarray(union, dtype=np.int64)
    if not (k.shape == inter.shape == uni.shape) or k.ndim != 1:
        raise InputError(f"counts must be three arrays of one length, got {k.shape}, {inter.shape}, {uni.shape}")
    if k.size and (k.min() < 0 or k.max() >= num_classes):
        raise InputError(f"class indices must lie in 0..{num_classes - 1}, got {k.min()}..{k.max()}")
    if np.any(inter < 0) or np.any(inter > uni):
        raise InputError("counts must satisfy 0 <= intersection <= union")
    inter_sum = np.bincount(k, weights=inter, minlength=num_classes).astype(np.int64)
    union_sum = np.bincount(k, weights=uni, minlength=num_classes).astype(np.int64)
    seen = uni > 0
    images = np.bincount(k[seen], minlength=num_classes).astype(np.int64)
    iou_sum = np.bincount(k[seen], weights=inter[seen] / uni[seen], minlength=num_classes)
    capability = np.divide(inter_sum, union_sum, out=np.zeros(num_classes), where=union_sum > 0)
    per_image = np.divide(iou_sum, images, out=np.zeros(num_classes), where=images > 0)
    if other_index is not None:
        capability[other_index] = per_image[other_index] = 0.0
    return Capability(capability, per_image, inter_sum, union_sum, images)


def capability_table(results: dict[str, Capability], class_names: Sequence[str]) -> pa.Table:
    """The table `fuse` reads (columns of sas_ray.capability_table): one row per (teacher, class), plus the summed
    counts and the number of images behind each value."""
    rows = []
    for teacher, result in results.items():
        if len(result.capability) != len(class_names):
            raise InputError(f"teacher {teacher}: {len(result.capability)} capabilities for {len(class_names)} classes")
        for k, name in enumerate(class_names):
            rows.append({"teacher": teacher, "class_index": k, "class_name": name,
                         "capability": float(result.capability[k]), "per_image_miou": float(result.per_image_miou[k]),
                         "intersection": int(result.intersection[k]), "union": int(result.union[k]),
                         "images": int(result.images[k])})
    schema = pa.schema([("teacher", pa.string()), ("class_index", pa.int64()), ("class_name", pa.string()),
                        ("capability", pa.float64()), ("per_image_miou", pa.float64()),
                        ("intersection", pa.int64()), ("union", pa.int64()), ("images", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


def class_slug(name: str) -> str:
    """A class name as a path component and unit id part ('shower curtain' -> 'shower_curtain')."""
    return check_id(name.replace(" ", "_"), "class name")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] or a bool mask [H, W] (stored 0/255, as SAS saves masks) -> PNG bytes."""
    array = np.where(image, 255, 0).astype(np.uint8) if image.dtype == bool else image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(data: bytes, source: str) -> np.ndarray:
    """A mask PNG written by `encode_png` -> bool [H, W]."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{source} is not a readable PNG ({err})") from None
    if image.mode != "L":
        raise InputError(f"{source}: expected an 8-bit grayscale mask PNG, got image mode {image.mode}")
    return np.asarray(image) > 127
