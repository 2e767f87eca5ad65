"""SAM image encoder: eager segment_anything against FastImageEncoder variants, side by side in one process.

  python -m benchmarks.sam_fast --device cuda --dtype float16 --batch 8 --variants mask,fold
  python -m benchmarks.sam_fast --device cuda --dtype float16 --batch 8 --variants fold:max-autotune-no-cudagraphs
  python -m benchmarks.sam_fast --device cpu --tiny                 # checks the script (numbers meaningless)

One JSON line per measurement. The first is always "eager": segment_anything's encoder with fp32 weights under
autocast, as SamRefiner ran it (the anchor). Then each variant "<rel_pos>[:<compile mode>]" runs FastImageEncoder
over the same weights, cast in place to --dtype once: rel_pos "mask" (bias as SDPA attn_mask) or "fold" (bias in the
head dimension); a compile mode compiles it (torch.compile; first call timed apart as compile_s, then --warmup calls
outside the timed region). Reported: images/s, speedup vs eager, max |difference| and cosine vs eager's output and
vs a float32 reference (TF32 off) on the first 2 images. ViT-H has random weights (sam_model_registry, no checkpoint).
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.models import DTYPES, _agreement, _peak_gb, _sync, _timed, fast_path_args, run_variants  # noqa: E402
from sas_ray.models.sam import load_sam, sam_autocast  # noqa: E402
from sas_ray.models.sam_fast import FastImageEncoder  # noqa: E402


class EncoderBench:
    """One encoder and input batch shared by every variant; eager runs first, before the weights are cast."""

    def __init__(self, device: torch.device, dtype_name: str, tiny: bool, batch: int, iters: int, warmup: int):
        self.device, self.dtype_name, self.dtype = device, dtype_name, DTYPES[dtype_name]
        self.iters, self.warmup, self.batch = iters, warmup, batch
        if tiny:
            self.vit = load_sam(tiny=True, device=device).image_encoder
        else:
            from segment_anything import sam_model_registry

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.vit = sam_model_registry["vit_h"](checkpoint=None).image_encoder
            self.vit = self.vit.eval().requires_grad_(False).to(device)
        size = self.vit.img_size
        self.images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.inference_mode():
            self.fp32 = self.vit(self.images[:2])  # float32 reference (TF32 off in main)
        self.eager_out: torch.Tensor | None = None
        self.eager_s: float | None = None

    def record(self, variant: str, seconds: float, out: torch.Tensor, **extra) -> dict:
        size = self.vit.img_size
        rec = {"bench": "sam-encoder", "variant": variant, "input": f"{self.batch}x3x{size}x{size}",
               "images_per_s": self.batch / seconds, "ms_per_batch": 1000 * seconds,
               "speedup_vs_eager": self.eager_s / seconds, "peak_gb": _peak_gb(self.device), **extra,
               "vs_fp32": _agreement(out[:2], self.fp32, self.dtype_name, dim=1)}
        if self.eager_out is not None:
            rec["vs_eager"] = _agreement(out, self.eager_out, self.dtype_name, dim=1)
        return rec

    def eager(self) -> dict:
        def run():
            with torch.inference_mode(), sam_autocast(self.device, self.dtype):
                return self.vit(self.images)

        _reset_peak(self.device)
        self.eager_s = _timed(run, self.device, self.iters, self.warmup)
        rec = self.record("eager", self.eager_s, run())
        self.eager_out = run()
        return rec

    def fast(self, variant: str) -> dict:
        rel_pos, _, mode = variant.partition(":")
        encoder = FastImageEncoder(self.vit, dtype=self.dtype, rel_pos=rel_pos)  # same weights, cast in place
        compile_s = None
        if mode:
            torch._dynamo.reset()
            encoder.compile(mode=mode)
            start = time.perf_counter()
            with torch.inference_mode():
                encoder(self.images)
            _sync(self.device)
            compile_s = time.perf_counter() - start

        def run():
            with torch.inference_mode():
                return encoder(self.images)

        _reset_peak(self.device)
        seconds = _timed(run, self.device, self.iters, self.warmup)
        return self.record(variant, seconds, run(), rel_pos=rel_pos, compile_mode=mode or None, compile_s=compile_s)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> list[dict]:
    args = fast_path_args(__doc__, argv, "mask,fold", "<mask|fold>[:<torch.compile mode>]", batch=8, iters=10,
                          warmup=2)
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference is true float32
    torch.backends.cudnn.allow_tf32 = False
    bench = EncoderBench(args.device, args.dtype_name, args.tiny, args.batch, args.iters, args.warmup)
    return run_variants("sam-fast", "sam-encoder", {"eager": bench.eager}, bench.fast, args)

if __name__ == "__main__":
    main()
