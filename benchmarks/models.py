"""Model-only throughput of the 2D zoo at real sizes (random weights), and half precision against float32.

One JSON line per model; `--out DIR` also writes DIR/models-<device>.json. The numbers are the baseline the
extraction pipeline is judged against (pipeline frames/s vs these frames/s, same card).

  python benchmarks/models.py --device cuda --dtype float16 --iters 20 --out docs/perf
  python benchmarks/models.py --device cpu --tiny --iters 2          # smoke test of the script itself

- openclip-dense: the real teacher (ViT-L-14, flip TTA, 2x upscale, 448 px windows) on 240x320 frames, built from
  a random checkpoint written to memory:// (so the load path is the real one and its time is reported), with its
  default options (the uncompiled fast path on CUDA; benchmarks/dense_fast.py compares it with eager).
- sam-vit-h-encoder: segment_anything's ViT-H image encoder at 1024x1024 under autocast (as the teachers run it).
- sd15-unet: one denoising step of an SD1.5-shaped UNet (64x64 latents, batch 2 = classifier-free guidance).
Precision: the same weights and inputs in float32 (TF32 off) and in --dtype; reports max |difference| and the
min/mean cosine over output vectors, judged against TOLERANCE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sas_ray.models import build_teacher  # noqa: E402
from sas_ray.models.clip_model import arch_config  # noqa: E402
from sas_ray.models.diffusion import SD15_UNET, TINY_UNET  # noqa: E402
from sas_ray.models.sam import load_sam, sam_autocast  # noqa: E402
from sas_ray.models.weights import write_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Accepted agreement with float32 (per output vector cosine): random weights are harsher than trained ones.
TOLERANCE = {"float16": {"cos_min": 0.99, "cos_mean": 0.999}, "bfloat16": {"cos_min": 0.95, "cos_mean": 0.99},
             "float32": {"cos_min": 0.9999, "cos_mean": 0.99999}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, iters: int, warmup: int = 2) -> float:
    """Seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _agreement(low: torch.Tensor, ref: torch.Tensor, dtype_name: str, dim: int = -1) -> dict:
    """Half precision output vs float32 output (vectors along `dim`)."""
    low, ref = low.float(), ref.float()
    cos = F.cosine_similarity(low, ref, dim=dim, eps=1e-12)
    out = {"max_abs": (low - ref).abs().max().item(), "ref_max_abs": ref.abs().max().item(),
           "cos_min": cos.min().item(), "cos_mean": cos.mean().item(), "finite": bool(torch.isfinite(low).all())}
    tol = TOLERANCE[dtype_name]
    out["ok"] = out["finite"] and out["cos_min"] >= tol["cos_min"] and out["cos_mean"] >= tol["cos_mean"]
    out["tolerance"] = tol
    return out


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None


def random_clip_checkpoint(arch: str) -> str:
    """A memory:// safetensors checkpoint of `arch` with random weights (seed 0): teachers load it the real way."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**{k: v for k, v in arch_config(arch).items() if k != "preprocess_cfg"})
    url = f"memory://bench/{arch}.safetensors"
    write_checkpoint(model.state_dict(), url)
    return url


def bench_openclip_dense(device, dtype_name, tiny, iters) -> dict:
    dtype = DTYPES[dtype_name]
    batch, height, width = (2, 32, 48) if tiny else (8, 240, 320)
    arch = "tiny" if tiny else "ViT-L-14"
    url = random_clip_checkpoint(arch)
    start = time.perf_counter()
    teacher = build_teacher("openclip-dense", weights=url, arch=arch, device=device, dtype=dtype)
    load_s = time.perf_counter() - start
    frames = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = _timed(lambda: teacher.encode(frames), device, iters)
    peak = _peak_gb(device)
    low, fast = teacher.encode(frames[:2]), teacher.fast
    del teacher
    ref = build_teacher("openclip-dense", weights=url, arch=arch, device=device, dtype=torch.float32).encode(frames[:2])
    return {"model": "openclip-dense", "arch": arch, "input": f"{batch}x{height}x{width} uint8 frames",
            "options": "flip, input_scale 2, crop 2x image_size", "fast": fast, "frames_per_s": batch / seconds,
            "ms_per_batch": 1000 * seconds, "load_s": load_s, "peak_gb": peak,
            "vs_fp32": _agreement(low, ref, dtype_name)}


def bench_sam_encoder(device, dtype_name, tiny, iters) -> dict:
    dtype = DTYPES[dtype_name]
    if tiny:
        sam = load_sam(tiny=True, device=device)
    else:
        from segment_anything import sam_model_registry

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            sam = sam_model_registry["vit_h"](checkpoint=None).eval().requires_grad_(False).to(device)
    encoder = sam.image_encoder
    size = encoder.img_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def run():
        with torch.inference_mode(), sam_autocast(device, dtype):
            return encoder(x)

    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = _timed(run, device, iters)
    peak = _peak_gb(device)
    low = run()
    with torch.inference_mode():
        ref = encoder(x)
    return {"model": "sam-vit-h-encoder" if not tiny else "sam-tiny-encoder", "input": f"1x3x{size}x{size}",
            "precision": "autocast" if device.type == "cuda" and dtype != torch.float32 else "float32",
            "frames_per_s": 1 / seconds, "ms_per_batch": 1000 * seconds, "peak_gb": peak,
            "vs_fp32": _agreement(low, ref, dtype_name if device.type == "cuda" else "float32", dim=1)}


def bench_sd15_unet(device, dtype_name, tiny, iters) -> dict:
    from diffusers import UNet2DConditionModel

    dtype = DTYPES[dtype_name]
    config = TINY_UNET if tiny else SD15_UNET
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    side = config["sample_size"]
    latents = torch.randn(2, 4, side, side, generator=g).to(device)
    context = torch.randn(2, 77, config["cross_attention_dim"], generator=g).to(device)
    t = torch.tensor([500], device=device)

    def step(model, dt):
        with torch.inference_mode():
            return model(latents.to(dt), t, encoder_hidden_states=context.to(dt)).sample

    low_unet = unet.to(device=device, dtype=dtype)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = _timed(lambda: step(low_unet, dtype), device, iters)
    peak = _peak_gb(device)
    low = step(low_unet, dtype)
    ref = step(low_unet.to(torch.float32), torch.float32)
    return {"model": "sd15-unet" if not tiny else "sd-tiny-unet", "input": f"2x4x{side}x{side} latents (CFG batch)",
            "steps_per_s": 1 / seconds, "ms_per_step": 1000 * seconds,
            "images_per_s_50_steps": 1 / (50 * seconds), "peak_gb": peak,
            "vs_fp32": _agreement(low, ref, dtype_name, dim=1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="tiny models (checks the script, numbers meaningless)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--models", default="openclip-dense,sam,sd15-unet")
    parser.add_argument("--out", help="folder for models-<device>.json (e.g. docs/perf)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 references are true float32
    torch.backends.cudnn.allow_tf32 = False
    dtype_name = args.dtype if device.type == "cuda" else "float32"  # CPU runs float32 (as the actors do)
    benches = {"openclip-dense": bench_openclip_dense, "sam": bench_sam_encoder, "sd15-unet": bench_sd15_unet}
    runs = {name: (lambda fn=benches[name]: fn(device, dtype_name, args.tiny, args.iters))
            for name in args.models.split(",")}
    return run_and_record("models", runs, device, dtype_name, args.tiny, args.iters, args.out)


def fast_path_args(doc: str, argv: list[str] | None, variants: str, variants_help: str, batch: int, iters: int,
                   warmup: int, batch_help: str | None = None, extra=None) -> argparse.Namespace:
    """The arguments of a fast-path benchmark (eager vs variants on one model, one process): --device, --dtype,
    --tiny, --batch, --iters, --warmup, --variants, --out, plus what `extra(parser)` adds; `args.device` becomes a
    torch.device and `args.dtype_name` the dtype run (float32 on the CPU, as the actors run it)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="tiny model (checks the script, numbers meaningless)")
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--variants", default=variants, help=f"comma list of {variants_help}")
    parser.add_argument("--out", help="folder for <benchmark>-<device>.json")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    args.dtype_name = args.dtype if args.device.type == "cuda" else "float32"
    return args


def guarded(bench: str, variant: str, fn) -> dict:
    """Run one measurement; an error becomes its JSON line instead of ending the run."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported, the other variants still run
        return {"bench": bench, "variant": variant, "error": f"{type(err).__name__}: {err}"[:2000]}


def run_variants(prefix: str, bench_name: str, runs: dict, fast, args: argparse.Namespace) -> list[dict]:
    """`runs` (the baselines), then `fast(variant)` for each of args.variants, each guarded; see run_and_record."""
    variants = [v for v in args.variants.split(",") if v]
    runs.update({v: (lambda v=v: guarded(bench_name, v, lambda: fast(v))) for v in variants})
    return run_and_record(prefix, runs, args.device, args.dtype_name, args.tiny, args.iters, args.out)


def run_and_record(prefix: str, runs: dict, device: torch.device, dtype_name: str, tiny: bool, iters: int,
                   out: str | None) -> list[dict]:
    """Run each benchmark, print its JSON line, and write all records to {out}/{prefix}-<card>.json."""
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    records = []
    for run in runs.values():
        _sync(device)
        record = run()
        record.update(device=card, dtype=dtype_name, tiny=tiny, iters=iters, torch=torch.__version__)
        records.append(record)
        print(json.dumps(record), flush=True)
    if out:
        slug = "cpu" if device.type == "cpu" else card.lower().replace("nvidia", "").strip().replace(" ", "-")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{prefix}-{slug}{'-tiny' if tiny else ''}.json"), "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    main()
