"""SAM + CLIP mask teacher: painting rule, crops as linear maps, equality with the original frame-by-frame path
(segment_anything's generator, one crop at a time), `region: pool`, and frames with nothing to segment."""

import pytest
import torch
import torch.nn.functional as F
from sam_doubles import DiskDecoder, DiskPrompts

from sas_ray.errors import ConfigError
from sas_ray.models import build_teacher
from sas_ray.models.region_crops import masked_square_crops, resize_weights
from sas_ray.models.sam_clip import paint_masks
from sas_ray.reference import reference_sam_clip


def test_paint_masks_matches_a_per_pixel_loop():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 6, 7, generator=g) > 0.6
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.7])  # masks 1 and 2 tie: the first wins
    emb = torch.randn(5, 3, generator=g)
    painted = paint_masks(masks, scores, emb)
    for r in range(6):
        for c in range(7):
            best, best_score = None, -1.0
            for k in range(5):
                if masks[k, r, c] and scores[k] > best_score:
                    best, best_score = k, scores[k]
            expected = torch.zeros(3) if best is None else emb[best]
            torch.testing.assert_close(painted[r, c], expected)


@pytest.mark.parametrize("size", [32, 224])
def test_resize_weights_are_interpolates(size):
    """Every window side up to 3x the output, against F.interpolate of the identity (float64)."""
    sides = torch.arange(1, 3 * size + 1, 1 if size == 32 else 13)
    ours = resize_weights(torch.zeros_like(sides), sides, int(sides.max()), size)
    for side, weights in zip(sides.tolist(), ours):
        eye = torch.eye(side, dtype=torch.float64)[None, None]
        expected = F.interpolate(eye, size=(size, side), mode="bilinear", align_corners=False,
                                 antialias=side > size)[0, 0]
        torch.testing.assert_close(weights[:, :side].double(), expected, atol=3e-5, rtol=0)
        assert (weights[:, side:] == 0).all()


def test_region_crop_is_the_masked_square_crop():
    """A hand-built case: 8 rows x 16 cols padded to 16x16 with 4 mean-colour rows above and below, a hole."""
    g = torch.Generator().manual_seed(3)
    frame = torch.rand(1, 3, 40, 50, generator=g)
    mask = torch.zeros(1, 40, 50, dtype=torch.bool)
    mask[0, 10:18, 20:36] = True
    mask[0, 12, 21] = False  # a hole shows the fill colour too
    fill = torch.tensor([0.48, 0.46, 0.41])
    square = fill.view(3, 1, 1).expand(3, 16, 16).clone()
    square[:, 4:12] = frame[0, :, 10:18, 20:36]
    square[:, 6, 1] = fill
    expected = F.interpolate(square[None], size=(32, 32), mode="bilinear", align_corners=False)
    crops = masked_square_crops(frame, torch.zeros(1, dtype=torch.long), mask, torch.tensor([[20, 10, 35, 17]]), 32,
                                fill)
    torch.testing.assert_close(crops, expected, atol=1e-6, rtol=0)


def test_region_crops_match_one_at_a_time_crops_at_frame_borders():
    from sas_ray.reference import _masked_square_crop

    g = torch.Generator().manual_seed(4)
    frames = torch.rand(2, 3, 60, 90, generator=g)
    boxes = torch.tensor([[0, 0, 89, 3], [70, 10, 89, 59], [5, 50, 7, 59], [30, 20, 30, 20], [0, 0, 89, 59]])
    masks = torch.zeros(len(boxes), 60, 90, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[k, y0:y1 + 1, x0:x1 + 1] = torch.rand(y1 - y0 + 1, x1 - x0 + 1, generator=g) > 0.3
        masks[k, y0, x0] = masks[k, y1, x1] = True  # the box is the mask's own
    index = torch.tensor([0, 1, 1, 0, 1])
    fill = torch.tensor([0.5, 0.4, 0.3])
    ours = masked_square_crops(frames, index, masks, boxes, 24, fill)
    for k in range(len(boxes)):
        expected = _masked_square_crop(frames[index[k]], masks[k], tuple(fill.tolist()), 24)
        torch.testing.assert_close(ours[k], expected, atol=1e-5, rtol=0)


def disk_teacher(**options):
    """A tiny sam-clip whose SAM networks are the disc stand-ins: masks a trained SAM would give."""
    teacher = build_teacher("sam-clip", tiny=True, **options)
    sam = teacher.masks.sam
    sam.prompt_encoder = DiskPrompts(sam)
    sam.mask_decoder = teacher.masks.decoder = DiskDecoder(sam.image_encoder.img_size)
    return teacher


@pytest.mark.parametrize("options", [
    {"pred_iou_thresh": 0.85, "stability_score_thresh": 0.8, "points_per_side": 4},
    {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.0, "box_nms_thresh": 0.5, "max_masks": 7},
])
def test_teacher_equals_the_frame_by_frame_original(options):
    teacher = disk_teacher(**options)
    images = torch.randint(0, 256, (3, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = teacher.encode(images)
    reference = reference_sam_clip(teacher, images)
    covered = reference.norm(dim=-1) > 0
    assert covered.float().mean() > 0.3 and not covered.all()  # masks painted, and gaps left
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_real_tiny_sam_teacher_equals_the_original():
    teacher = build_teacher("sam-clip", tiny=True, seed=2, points_per_side=5, box_nms_thresh=1.0, max_masks=20)
    images = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(teacher.encode(images), reference_sam_clip(teacher, images), atol=1e-5, rtol=0)


def test_pool_region_is_the_mean_dense_feature_inside_each_mask():
    teacher = disk_teacher(region="pool", pred_iou_thresh=0.7, stability_score_thresh=0.8, points_per_side=16)
    images = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    found = teacher.masks.generate(images)
    dense = teacher.dense.encode(images)
    out = teacher.encode(images)
    for b, frame_masks in enumerate(found):
        assert len(frame_masks) > 1
        k = len(frame_masks) // 2
        mask = frame_masks.masks[k]
        expected = F.normalize(dense[b][mask].mean(dim=0), dim=0)
        torch.testing.assert_close(teacher._pooled(images, found)[b][k], expected, atol=1e-5, rtol=0)
        # the pixels this mask wins (highest score among the masks covering them) carry its pooled feature
        ranked = torch.where(frame_masks.masks, frame_masks.scores[:, None, None], -torch.inf).argmax(0)
        wins = mask & (ranked == k)
        if wins.any():
            torch.testing.assert_close(out[b][wins], expected.expand(int(wins.sum()), -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("image", [
    torch.zeros(1, 48, 64, 3, dtype=torch.uint8),  # all black
    torch.full((1, 48, 64, 3), 77, dtype=torch.uint8),  # uniform
    torch.randint(0, 256, (1, 40, 1, 3), dtype=torch.uint8),  # one pixel wide
    torch.randint(0, 256, (1, 1, 40, 3), dtype=torch.uint8),  # one pixel high
])
@pytest.mark.parametrize("region", ["crop", "pool"])
def test_degenerate_frames_give_unit_or_zero_features(image, region):
    teacher = build_teacher("sam-clip", tiny=True, seed=3, region=region)
    feats = teacher.encode(image)
    assert feats.shape == (*image.shape[:3], teacher.dim) and torch.isfinite(feats).all()
    norms = feats.norm(dim=-1)
    assert (((norms - 1).abs() < 1e-4) | (norms == 0)).all()
    strict = build_teacher("sam-clip", tiny=True, seed=3, region=region, pred_iou_thresh=0.99)
    assert (strict.encode(image) == 0).all()  # no mask survives: zero everywhere, no crash


def test_unknown_region_is_refused():
    with pytest.raises(Exception, match="unknown region"):
        build_teacher("sam-clip", tiny=True, region="boxes")


def test_compiled_teacher_equals_the_fast_one():
    """`compile_mode` compiles SAM's image encoder: the same features as the uncompiled fast path; it is refused off
    the fast path (it used to be ignored there)."""
    options = dict(tiny=True, seed=2, points_per_side=5, box_nms_thresh=1.0, max_masks=20, fast=True)
    images = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = build_teacher("sam-clip", compile_mode="default", **options).encode(images)
    torch.testing.assert_close(out, build_teacher("sam-clip", **options).encode(images), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="fast path"):
        build_teacher("sam-clip", tiny=True, fast=False, compile_mode="default")
