"""The mask teacher (`sam-clip`) on one GPU: segment_anything's stock path vs the device path vs alternatives.

  python -m benchmarks.sam_clip --device cuda --dtype float16 --masks 100 --out docs/perf/sam-clip-h200.jsonl
  python -m benchmarks.sam_clip --device cpu --tiny                  # checks the script (numbers meaningless)

One process, one JSON line per (variant, frame size). Real-size SAM ViT-H and CLIP ViT-L-14 with random weights,
loaded from checkpoints through the teacher's real loading path. Random SAM weights keep no masks at SAM's
thresholds, so the mask count is held where a real frame has it: SAM's predicted IoUs are shifted (the IoU head's
last bias, one calibration pass) so that SAM's own threshold 0.88 lets about `--candidates` of the 3 x 32² candidates
of a frame through (the decoder's IoU-first skip then works as on a real frame), and `max_masks`
keeps the `--masks` best after box NMS (NMS 0.7 unless it leaves fewer than half of `--masks`: then 1.0, reported).
Every variant of the SAM ViT-H path runs those same options:
- stock: segment_anything's SamAutomaticMaskGenerator frame by frame (64-prompt batches, RLE, numpy), one crop
  and resize per mask, eager encoder under autocast (the teacher before this change: `reference_sam_clip`);
- device-eager: MaskGenerator + batched crops, segment_anything's own encoder and decoder modules under autocast;
- device-fast: the same with FastImageEncoder (fold) and FastMaskDecoder in fp16 with its Triton kernels (the CUDA
  default);
- device-fast-no-triton: device-fast with the decoder in PyTorch throughout (FastMaskDecoder before its kernels);
- device-fast-ppb1024: device-fast with the whole 32x32 prompt grid in one decoder call (points_per_batch 1024);
- device-fast-compiled-encoder: device-fast with SAM's image encoder blocks under torch.compile (`compile_mode:
  default`; compiled in the warm-up batch, `warmup_s`);
- device-fast-pool: `region: pool`, dense MaskCLIP features averaged in each mask instead of crops;
plus `equivalence`: the device generator against SamAutomaticMaskGenerator in float32 (same masks?), and the
installable alternatives (their own automatic generators, random weights, at the same IoU quantile).
Reported: frames/s, masks per frame, peak GPU memory, agreement with stock's features on the frames stock ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sas_ray.models  # noqa: E402,F401  (the CPU torchvision shim)
from benchmarks import emit  # noqa: E402
from benchmarks.models import DTYPES, _peak_gb, _sync, guarded  # noqa: E402
from sas_ray.models import build_teacher  # noqa: E402
from sas_ray.models.sam_masks import MaskGenerator  # noqa: E402
from sas_ray.models.weights import read_checkpoint, write_checkpoint  # noqa: E402
from sas_ray.reference import reference_sam_clip  # noqa: E402

SIZES = {"scannet": (240, 320), "nuscenes": (450, 800)}
SAM_IOU_THRESH = 0.88  # segment_anything's pred_iou_thresh


def frames_of(size: tuple[int, int], count: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, H, W, 3]: smooth random colour fields with a few hard-edged boxes (SAM-able structure)."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    base = torch.rand(count, 3, 6, 8, generator=g)
    frames = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
    for i in range(count):
        for _ in range(6):
            y0, x0 = (int(torch.randint(0, s - s // 4, (1,), generator=g)) for s in size)
            frames[i, :, y0:y0 + height // 4, x0:x0 + width // 4] = torch.rand(3, 1, 1, generator=g)
    return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def checkpoints(work: str, tiny: bool) -> dict:
    """Teacher options for random real-size SAM ViT-H / CLIP ViT-L-14 checkpoints on disk (or the tiny models)."""
    if tiny:
        return {"tiny": True}
    import open_clip
    from segment_anything import sam_model_registry

    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        sam = sam_model_registry["vit_h"](checkpoint=None)
        clip = open_clip.create_model("ViT-L-14", pretrained=None)
    write_checkpoint(sam.state_dict(), f"{work}/sam_vit_h.safetensors")
    write_checkpoint(clip.state_dict(), f"{work}/clip_vit_l_14.safetensors")
    return {"weights": f"{work}/clip_vit_l_14.safetensors",
            "sam_weights": f"{work}/sam_vit_h.safetensors", "arch": "ViT-L-14", "sam_arch": "vit_h"}


def teacher(ckpt: dict, device, dtype, **options):
    ckpt = dict(ckpt)
    tiny = ckpt.pop("tiny", False)
    weights = ckpt.pop("weights", None)
    return build_teacher("sam-clip", weights, tiny=tiny, device=device, dtype=dtype, **ckpt, **options)


def calibrate(gen: MaskGenerator, frames: torch.Tensor, candidates: int, masks: int) -> dict:
    """The shift of SAM's predicted IoU that puts ~`candidates` of a frame's candidates above SAM's threshold 0.88
    (random weights predict IoUs near 0, and a threshold <= 0 turns SAM's filter off), and the NMS threshold."""
    shift_iou(gen, 0.0)
    saved = gen.pred_iou_thresh, gen.stability_score_thresh, gen.box_nms_thresh, gen.max_masks
    gen.pred_iou_thresh, gen.stability_score_thresh, gen.box_nms_thresh, gen.max_masks = 0.0, 0.0, 1.0, None
    scores = torch.cat([f.scores.float() for f in gen.generate(frames)])
    per_frame = len(scores) / len(frames)
    shift = SAM_IOU_THRESH - float(torch.quantile(scores.cpu(), max(0.0, 1 - candidates / per_frame)))
    shift_iou(gen, shift)
    gen.pred_iou_thresh = SAM_IOU_THRESH
    # what the shift lets through (NMS still off): the candidates, and the prompts whose masks are upscaled (the
    # decoder skips a prompt none of whose 3 candidates passes), which set the decoder's and the filters' work
    passing = gen.generate(frames)
    gen.box_nms_thresh = 0.7
    kept = [len(f) for f in gen.generate(frames)]
    nms = 0.7 if np.median(kept) >= masks / 2 else 1.0
    gen.pred_iou_thresh, gen.stability_score_thresh, gen.box_nms_thresh, gen.max_masks = saved
    return {"iou_shift": shift, "pred_iou_thresh": SAM_IOU_THRESH, "stability_score_thresh": 0.0,
            "box_nms_thresh": nms, "max_masks": masks, "candidates_per_frame": per_frame,
            "passing_per_frame": [len(f) for f in passing],
            "prompts_passing_per_frame": [len(torch.unique(f.points, dim=0)) for f in passing],
            "after_nms_at_0.7": kept}


def shift_iou(gen: MaskGenerator, shift: float) -> None:
    """Add `shift` to every IoU SAM predicts (the IoU head's last bias), replacing the shift applied before."""
    bias = gen.sam.mask_decoder.iou_prediction_head.layers[-1].bias
    bias.data += shift - getattr(gen, "iou_shift", 0.0)
    gen.iou_shift = shift


def shift_checkpoint(url: str, shift: float) -> None:
    """Apply `shift_iou` to a SAM checkpoint file in place (for teachers that load it, e.g. extraction actors)."""
    state = dict(read_checkpoint(url).state)
    bias = max((k for k in state if k.startswith("mask_decoder.iou_prediction_head.layers.") and k.endswith(".bias")),
               key=lambda k: int(k.split(".")[-2]))
    state[bias] = state[bias] + shift
    write_checkpoint(state, url)


def configure(gen: MaskGenerator, options: dict) -> None:
    shift_iou(gen, options["iou_shift"])
    for key in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "max_masks"):
        setattr(gen, key, options[key])


def timed_encode(fn, frames: torch.Tensor, batch: int, device: torch.device) -> tuple[float, torch.Tensor, float]:
    """(frames/s, outputs) of `fn` over `frames` in batches after one warm-up batch, and the warm-up's seconds (a
    compiled variant compiles in it)."""
    start = time.perf_counter()
    fn(frames[:batch])
    _sync(device)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    outs = [fn(frames[i:i + batch]) for i in range(0, len(frames), batch)]
    _sync(device)
    return len(frames) / (time.perf_counter() - start), torch.cat(outs), warmup


def feature_agreement(ours: torch.Tensor, stock: torch.Tensor) -> dict:
    """Per-pixel agreement of two teachers' features [B, H, W, C]."""
    ours, stock = ours.float().flatten(0, 2), stock.float().flatten(0, 2)
    covered_o, covered_s = ours.norm(dim=1) > 0, stock.norm(dim=1) > 0
    both = covered_o & covered_s
    cos = F.cosine_similarity(ours[both], stock[both], dim=1) if both.any() else torch.zeros(1)
    return {"coverage_agree": (covered_o == covered_s).float().mean().item(),
            "cos_min": cos.min().item(), "cos_p01": torch.quantile(cos.cpu(), 0.01).item(),
            "cos_mean": cos.mean().item()}


def mask_agreement(ours, stock_records) -> dict:
    """Count equality, and for every segment_anything mask the IoU of its best match among the device generator's
    masks of that frame (order-free: random weights give near-equal scores, so the order of ties is arbitrary)."""
    counts = [(len(o), len(s)) for o, s in zip(ours, stock_records)]
    best = []
    for frame, records in zip(ours, stock_records):
        if not records or not len(frame):
            continue
        ref = torch.from_numpy(np.stack([r["segmentation"] for r in records])).to(frame.masks.device)
        a, b = ref.flatten(1).float(), frame.masks.flatten(1).float()
        inter = a @ b.T
        union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
        best.append((inter / union.clamp(min=1)).max(dim=1).values.cpu())
    best = torch.cat(best) if best else torch.zeros(0)
    return {"counts_ours_stock": counts, "same_count": all(a == b for a, b in counts),
            "best_iou_min": best.min().item() if len(best) else None,
            "best_iou_mean": best.mean().item() if len(best) else None,
            "share_iou_ge_0.99": (best >= 0.99).float().mean().item() if len(best) else None}


def bench_size(args, name: str, size, models: dict, device, out: list[dict]) -> None:
    frames = frames_of(size, args.frames).to(device)
    stock_frames = frames[:args.stock_frames]
    eager = models["device-eager"]
    options = calibrate(eager.masks, frames[:args.batch], args.candidates, args.masks)
    base = {"bench": "sam-clip", "size": f"{size[1]}x{size[0]}", "dataset": name, "device": args.card,
            "dtype": args.dtype_name, "tiny": args.tiny, "batch": args.batch, "mask_options": options}

    def record(variant, fps, feats, **extra):
        rec = {**base, "variant": variant, "frames_per_s": fps, "ms_per_frame": 1000 / fps,
               "peak_gb": _peak_gb(device), **extra}
        if variant != "stock":
            rec["vs_stock"] = feature_agreement(feats[:len(stock_frames)], stock)
        out.append(rec)
        emit(rec, args.out)

    for model in models.values():
        configure(model.masks, options)
    start = time.perf_counter()
    stock = reference_sam_clip(eager, stock_frames)  # warm already: the calibration ran this model
    _sync(device)
    record("stock", len(stock_frames) / (time.perf_counter() - start), stock, frames=len(stock_frames),
           masks_per_frame="as equivalence-fp32 (same options)")
    for variant, model in models.items():
        if variant not in args.variants.split(","):
            continue

        def run(model=model, variant=variant):
            fps, feats, warmup = timed_encode(model.encode, frames, args.batch, device)
            counts = [len(f) for f in model.masks.generate(frames[:args.batch])]
            extra = {"pool_vs_crop": pool_vs_crop(model, frames[:2])} if model.region == "pool" else {}
            if variant == "device-fast-no-triton" and "device-fast" in models:
                extra["masks_vs_device_fast"] = mask_agreement(
                    models["device-fast"].masks.generate(frames[:args.batch]),
                    [records_of(f) for f in model.masks.generate(frames[:args.batch])])
            if args.breakdown and model.region == "crop":
                extra["ms_per_frame_parts"] = breakdown(model, frames, args.batch, device)
                if device.type == "cuda":
                    extra["top_kernels_ms_per_frame"] = top_kernels(model, frames[:args.batch])
            record(variant, fps, feats, frames=len(frames), masks_per_frame=float(np.mean(counts)), warmup_s=warmup,
                   **extra)
            return {}
        guarded("sam-clip", variant, run)
    if name == "scannet":
        guarded("sam-clip", "equivalence", lambda: equivalence(eager, stock_frames, options, base, args, out))


def breakdown(model, frames: torch.Tensor, batch: int, device: torch.device) -> dict:
    """ms per frame in each part of `model.encode` (synchronised timers around the teacher's own methods)."""
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            _sync(device)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            _sync(device)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return result
        return wrapper

    gen, clip = model.masks, model.clip.model
    saved = gen.embed, gen._decode, gen._upsample, gen._frame_masks, clip.encode_image, model._crops
    gen.embed, gen._decode, gen._upsample = timed("encoder", gen.embed), timed("decoder", gen._decode), \
        timed("upsample", gen._upsample)
    gen._frame_masks = timed("masks per frame", gen._frame_masks)
    clip.encode_image, model._crops = timed("clip forward", clip.encode_image), timed("regions", model._crops)
    encode = timed("encode", model.encode)
    for i in range(0, len(frames), batch):
        encode(frames[i:i + batch])
    gen.embed, gen._decode, gen._upsample, gen._frame_masks, clip.encode_image, model._crops = saved
    ms = {k: 1000 * v / len(frames) for k, v in spent.items()}
    return {"encoder": ms["encoder"], "decoder": ms["decoder"], "upsample+stability": ms["upsample"],
            "filters+nms": ms["masks per frame"] - ms["decoder"] - ms["upsample"],
            "crop weights+crops": ms.get("regions", 0.0) - ms.get("clip forward", 0.0),
            "clip forward": ms.get("clip forward", 0.0),
            "paint+rest": ms["encode"] - ms["encoder"] - ms["masks per frame"] - ms.get("regions", 0.0),
            "total": ms["encode"]}


def top_kernels(model, frames: torch.Tensor, count: int = 15) -> dict:
    """The device kernels, and the operators with their input shapes, taking the most device time in one
    `model.encode(frames)` (torch.profiler), ms per frame."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.encode(frames)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start

    def top(events, shapes: bool, rows: int):
        events = sorted(events, key=lambda e: e.device_time_total, reverse=True)[:rows]
        return [[e.key[:80], *([str(e.input_shapes)[:160]] if shapes else []),
                 round(e.device_time_total / 1000 / len(frames), 3), e.count] for e in events]

    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("aten::")]
    kernel_seconds = sum(e.device_time_total for e in kernels) / 1e6
    return {"kernels": top(kernels, False, count), "ops": top(ops, True, 2 * count),
            "kernel_ms_per_frame": 1000 * kernel_seconds / len(frames),
            "wall_ms_per_frame_profiled": 1000 * wall / len(frames),
            "device_busy": round(kernel_seconds / wall, 3),  # kernels may overlap: an upper bound
            "idle_gaps": idle_gaps(prof.events(), len(frames), count)}


def idle_gaps(events, frames: int, count: int) -> dict:
    """Where the device waited between kernels: the idle time between one kernel's end (the latest so far) and the
    next kernel's start, summed per (kernel before, kernel after) pair, ms per frame, the largest `count` pairs."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name[:60]) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    pairs: dict[tuple[str, str], list] = {}
    end, before = None, None
    for start, stop, name in spans:
        if end is not None and start > end:
            pair = pairs.setdefault((before, name), [0.0, 0])
            pair[0] += (start - end) / 1000 / frames
            pair[1] += 1
        if end is None or stop > end:
            end, before = stop, name
    top = sorted(pairs.items(), key=lambda item: item[1][0], reverse=True)[:count]
    return {"idle_ms_per_frame": sum(ms for ms, _ in pairs.values()), "gaps": sum(n for _, n in pairs.values()),
            "largest": [[a, b, round(ms, 3), n] for (a, b), (ms, n) in top]}


def pool_vs_crop(model, frames: torch.Tensor) -> dict:
    """Cosine between each mask's pooled dense feature and its crop embedding (same masks, same CLIP)."""
    found = model.masks.generate(frames)
    pooled = torch.cat(model._pooled(frames, found))
    crops = torch.cat(model._crops(frames.permute(0, 3, 1, 2).float() / 255, found))
    cos = F.cosine_similarity(pooled, crops, dim=1)
    return {"masks": len(cos), "cos_mean": cos.mean().item(), "cos_min": cos.min().item()}


def records_of(frame_masks) -> list[dict]:
    """A FrameMasks as segment_anything-style records (what `mask_agreement` reads)."""
    return [{"segmentation": m.cpu().numpy()} for m in frame_masks.masks]


def equivalence(eager, frames: torch.Tensor, options: dict, base: dict, args, out: list[dict]) -> dict:
    """The device generator vs segment_anything's, both float32 (no autocast), same model, frames and options."""
    from segment_anything import SamAutomaticMaskGenerator

    gen = eager.masks
    saved = gen.dtype, gen.max_masks
    gen.dtype, gen.max_masks = torch.float32, None  # every mask after NMS: no top-K cut among near-equal scores
    ours = gen.generate(frames)
    gen.dtype, gen.max_masks = saved
    stock = SamAutomaticMaskGenerator(gen.sam, points_per_side=gen.points_per_side,
                                      pred_iou_thresh=options["pred_iou_thresh"], stability_score_thresh=0.0,
                                      box_nms_thresh=options["box_nms_thresh"])
    records = [stock.generate(f.cpu().numpy()) for f in frames]
    rec = {**base, "variant": "equivalence-fp32", "frames": len(frames), **mask_agreement(ours, records)}
    out.append(rec)
    emit(rec, args.out)
    return rec


def bench_alternatives(args, size, device, out: list[dict]) -> None:
    """Other automatic mask generators (their own code, random weights) at their default thresholds, which random
    weights never pass: the cost of their model and filters, without the per-mask RLE and numpy work (their
    post-processing is segment_anything's, measured as `stock`)."""
    frames = frames_of(size, args.alt_frames).cpu().numpy()
    base = {"bench": "sam-clip-alternative", "size": f"{size[1]}x{size[0]}", "device": args.card}
    for name, build in ALTERNATIVES.items():
        def run(name=name, build=build):
            model, generator_cls = build(device)
            gen = generator_cls(model, points_per_side=32)
            gen.generate(frames[0])
            _sync(device)
            start = time.perf_counter()
            counts = [len(gen.generate(f)) for f in frames]
            _sync(device)
            fps = len(frames) / (time.perf_counter() - start)
            rec = {**base, "variant": name, "frames": len(frames), "frames_per_s": fps, "ms_per_frame": 1000 / fps,
                   "masks_per_frame": float(np.mean(counts)), "peak_gb": _peak_gb(device)}
            out.append(rec)
            emit(rec, args.out)
            return rec
        result = guarded("sam-clip-alternative", name, run)
        if "error" in result:
            emit({**base, **result}, args.out)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _sam2(device):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    return build_sam2("configs/sam2.1/sam2.1_hiera_l.yaml", ckpt_path=None, device=str(device)), \
        SAM2AutomaticMaskGenerator


def _efficientvit(name):
    def build(device):
        from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator
        from efficientsam.sam_model_zoo import create_efficientvit_sam_model

        model = create_efficientvit_sam_model(name, pretrained=False).to(device).eval()
        return model, EfficientViTSamAutomaticMaskGenerator
    return build


def _sam_fast(device):
    from segment_anything_fast import SamAutomaticMaskGenerator, sam_model_registry
    from segment_anything_fast.build_sam import _apply_eval_dtype_sam

    sam = _apply_eval_dtype_sam(sam_model_registry["vit_h"](checkpoint=None), torch.bfloat16).to(device)
    return sam, SamAutomaticMaskGenerator


ALTERNATIVES = {"sam2.1-hiera-l": _sam2, "efficientvit-sam-l0": _efficientvit("efficientvit-sam-l0"),
                "efficientvit-sam-xl1": _efficientvit("efficientvit-sam-xl1"),
                "segment-anything-fast-vit-h-bf16": _sam_fast}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="tiny models (checks the script, numbers meaningless)")
    parser.add_argument("--sizes", default="scannet,nuscenes", help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--frames", type=int, default=16, help="frames timed per device variant")
    parser.add_argument("--stock-frames", type=int, default=2, help="frames timed on the (slow) stock path")
    parser.add_argument("--alt-frames", type=int, default=2, help="frames per alternative (0: skip them)")
    parser.add_argument("--batch", type=int, default=8, help="frames per teacher.encode call")
    parser.add_argument("--masks", type=int, default=100, help="masks kept per frame after NMS (max_masks)")
    parser.add_argument("--candidates", type=int, default=400, help="candidates per frame passing the IoU filter")
    parser.add_argument("--variants", default="device-eager,device-fast,device-fast-no-triton,device-fast-pool",
                        help="device variants to time (stock and the equivalence check always run)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of device-fast")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.dtype_name = args.dtype if device.type == "cuda" else "float32"
    args.card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.tiny:
        args.masks, args.candidates = min(args.masks, 8), min(args.candidates, 24)
    out: list[dict] = []
    dtype = DTYPES[args.dtype_name]
    with tempfile.TemporaryDirectory() as work:
        ckpt = checkpoints(work, args.tiny)
        start = time.perf_counter()
        models = {"device-eager": teacher(ckpt, device, dtype, fast=False),
                  "device-fast": teacher(ckpt, device, dtype, fast=True),
                  "device-fast-pool": teacher(ckpt, device, dtype, fast=True, region="pool")}
        variants = args.variants.split(",")
        if "device-fast-no-triton" in variants:
            models["device-fast-no-triton"] = teacher(ckpt, device, dtype, fast=True)
            models["device-fast-no-triton"].masks.decoder.triton = False
        if "device-fast-compiled-encoder" in variants:  # compiled at its first (warm-up) call
            models["device-fast-compiled-encoder"] = teacher(ckpt, device, dtype, fast=True, compile_mode="default")
        if "device-fast-ppb1024" in variants:
            models["device-fast-ppb1024"] = teacher(ckpt, device, dtype, fast=True, points_per_batch=1024)
        emit({"bench": "sam-clip", "variant": "load", "teachers": len(models),
              "seconds": time.perf_counter() - start}, args.out)
        for name in args.sizes.split(","):
            bench_size(args, name, SIZES[name], models, device, out)
        del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.alt_frames and not args.tiny:
        bench_alternatives(args, SIZES["scannet"], device, out)
    return out


if __name__ == "__main__":
    main()
