"""The device mask generator against segment_anything's own SamAutomaticMaskGenerator, and its parts against the
operations they replace (SAM's postprocess_masks, PIL's resize, SAM's mask decoder)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from sas_ray.models.sam import load_sam
from sas_ray.models.sam_fast import FastMaskDecoder
from sas_ray.models.sam_masks import MaskGenerator, logit_upsampling, resize_like_pil
from sam_doubles import disk_sam


def frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, height, width, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def assert_same_masks(ours, records):
    """Same count, order, scores, boxes and masks (per-mask IoU >= 0.99) as segment_anything's records."""
    assert len(ours) == len(records)
    for k, record in enumerate(records):
        ref = torch.from_numpy(record["segmentation"])
        union = (ours.masks[k] | ref).sum().item()
        assert (ours.masks[k] & ref).sum().item() >= 0.99 * union
        assert ours.scores[k].item() == pytest.approx(record["predicted_iou"], abs=1e-6)
        assert ours.stability[k].item() == pytest.approx(record["stability_score"], abs=1e-3)
        x, y, w, h = record["bbox"]
        assert ours.boxes[k].tolist() == [x, y, x + w, y + h]
        assert ours.points[k].tolist() == pytest.approx(record["point_coords"][0])


@pytest.mark.parametrize("options", [
    {},  # segment_anything's defaults: IoU 0.88, stability 0.95, NMS 0.7
    {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8, "box_nms_thresh": 0.5},
    {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.3, "points_per_side": 12},
])
def test_generator_equals_segment_anything(options):
    sam = disk_sam()
    images = frames(2, 48, 64)  # SAM's own input size for the tiny model: no resize on either side
    ours = MaskGenerator(sam, points_per_batch=50, **options).generate(images)
    stock = SamAutomaticMaskGenerator(sam, **options)
    kept = 0
    for frame_masks, image in zip(ours, images):
        records = stock.generate(image.numpy())
        assert_same_masks(frame_masks, records)
        kept += len(records)
    assert kept >= 6  # the filters and NMS left something to compare
    assert kept < 2 * 3 * (options.get("points_per_side", 32) ** 2) / 2  # ... and removed much


def test_generator_with_resized_frames_and_max_masks():
    sam = disk_sam()
    images = frames(3, 90, 120, seed=1)  # resized to 48x64 for SAM: PIL there, the device here
    ours = MaskGenerator(sam, max_masks=5, pred_iou_thresh=0.7, stability_score_thresh=0.8).generate(images)
    stock = SamAutomaticMaskGenerator(sam, pred_iou_thresh=0.7, stability_score_thresh=0.8)
    for frame_masks, image in zip(ours, images):
        records = stock.generate(image.numpy())
        assert len(records) > 5
        assert_same_masks(frame_masks, records[:5])  # the five best, in segment_anything's order


def test_prompts_are_encoded_once_per_frame_size():
    """The grid's prompt encodings are the same for every frame of a size: encoded once (a chunk a call), redone for
    a new size (the stand-in encoder carries the coordinates into the masks: stale prompts give wrong masks)."""
    sam = disk_sam()
    calls = []
    sam.prompt_encoder.register_forward_hook(lambda *args: calls.append(1))
    options = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}
    gen = MaskGenerator(sam, points_per_batch=256, **options)  # 32 x 32 points: 4 chunks
    gen.generate(frames(2, 48, 64))
    gen.generate(frames(1, 48, 64, seed=2))
    assert len(calls) == 4
    images = frames(1, 90, 120, seed=1)
    ours = gen.generate(images)[0]
    assert len(calls) == 8
    assert_same_masks(ours, SamAutomaticMaskGenerator(sam, **options).generate(images[0].numpy()))


def test_real_tiny_sam_masks_equal_segment_anything():
    """SAM's real networks (tiny, random): its masks barely pass any filter, so none is applied."""
    sam = load_sam(tiny=True, seed=2)
    options = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    images = frames(2, 48, 64, seed=2)
    ours = MaskGenerator(sam, points_per_batch=7, **options).generate(images)
    stock = SamAutomaticMaskGenerator(sam, **options)
    for frame_masks, image in zip(ours, images):
        records = stock.generate(image.numpy())
        assert len(records) == 3 * 36
        scores = np.array([r["predicted_iou"] for r in records])
        assert np.all(np.diff(scores) < 0)  # distinct scores: the order is defined
        assert_same_masks(frame_masks, records)


@pytest.mark.parametrize("frame_size", [(48, 64), (240, 320), (450, 800), (37, 91)])
def test_logit_upsampling_equals_postprocess_masks(frame_size):
    sam = load_sam(tiny=True)
    sam.image_encoder.img_size = 1024  # postprocess_masks reads only this: SAM's real geometry
    transform = ResizeLongestSide(1024)
    input_size = transform.get_preprocess_shape(*frame_size, 1024)
    low = torch.randn(5, 3, 256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = sam.postprocess_masks(low, input_size, frame_size)
    rows, cols = logit_upsampling(256, 1024, input_size, frame_size, torch.device("cpu"))
    ours = rows.double() @ low @ cols.double().T
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)  # float32 maps, float64 data


def test_resize_matches_pil_within_one_grey_level():
    transform = ResizeLongestSide(1024)
    image = F.interpolate(torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0)) * 255,
                          size=(240, 320), mode="bilinear", align_corners=False).round().to(torch.uint8)
    pil = torch.from_numpy(transform.apply_image(image[0].permute(1, 2, 0).numpy())).permute(2, 0, 1).float()
    ours = resize_like_pil(image, pil.shape[1:])[0]
    diff = (ours - pil).abs()
    assert diff.max() <= 1 and diff.mean() < 0.2  # PIL rounds in fixed point, torch in float


def sam_decoder(dim: int = 256, seed: int = 0):
    """SAM's real prompt encoder and mask decoder sizes (every SAM shares them), random weights."""
    torch.manual_seed(seed)
    prompts = PromptEncoder(embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                            mask_in_chans=16).eval()
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048,
                                                        num_heads=8)).eval()
    return prompts, decoder


@torch.inference_mode()
def test_fast_mask_decoder_equals_sam_decoder_in_float64():
    prompts, decoder = sam_decoder()
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 256, 64, 64, generator=g)
    coords = torch.rand(5, 1, 2, generator=g) * 1024
    sparse, dense = prompts(points=(coords, torch.ones(5, 1, dtype=torch.int)), boxes=None, masks=None)
    pe = prompts.get_dense_pe()
    reference = copy.deepcopy(decoder).double()
    masks, iou = reference(image.double(), pe.double(), sparse.double(), dense.double(), True)
    fast = FastMaskDecoder(copy.deepcopy(decoder), dtype=torch.float64)
    fast_masks, fast_iou = fast(image.double(), pe.double(), sparse.double(), dense, True)
    torch.testing.assert_close(fast_masks, masks, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast_iou, iou, atol=1e-12, rtol=0)
    single, single_iou = fast(image.double(), pe.double(), sparse.double(), dense, False)
    torch.testing.assert_close(single_iou, reference(image.double(), pe.double(), sparse.double(),
                                                     dense.double(), False)[1], atol=1e-12, rtol=0)
    # skip_below: prompts whose three IoUs all fail are left zero, the others are untouched
    best = iou.max(dim=1).values.sort().values
    cut = (best[1] + best[2]).item() / 2  # between two prompts' values: no prompt sits at the cut
    skipped_masks, _ = fast(image.double(), pe.double(), sparse.double(), dense, True, skip_below=cut)
    wanted = (iou > cut).any(dim=1)
    assert 0 < wanted.sum() < len(wanted)
    torch.testing.assert_close(skipped_masks[wanted], masks[wanted], atol=1e-10, rtol=0)
    assert (skipped_masks[~wanted] == 0).all()


def test_generator_validates_its_input():
    gen = MaskGenerator(load_sam(tiny=True))
    with pytest.raises(Exception, match="uint8"):
        gen.generate(torch.zeros(1, 8, 8, 3))
