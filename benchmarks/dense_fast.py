"""Dense OpenCLIP teacher: eager encode against fast-path variants, side by side in one process.

  python -m benchmarks.dense_fast --device cuda --dtype float16 --batch 8 --variants fast,fast+cudnn,fast:default
  python -m benchmarks.dense_fast --device cuda --dtype float16 --variants fast:max-autotune-no-cudagraphs
  python -m benchmarks.dense_fast --device cpu --tiny --variants fast,fast+math      # checks the script only

One JSON line per measurement. The first is always "eager": OpenClipDense(fast=False) in --dtype, as the pipeline
measured it (the anchor). Each variant "fast[+<sdpa backend>][:<compile mode>]" is the same teacher object (same
weights, same frames) switched to the fast path: SDPA blocks (restricted to flash|efficient|cudnn|math if given),
compiled with the mode for a window batch of --batch frames (the first call timed apart as compile_s), and the
batched upsample in --dtype. Reported: frames/s, speedup vs eager, vit_ms (frames -> patch canvas, i.e. everything
but the upsample) per batch, peak GPU memory, and the agreement (per-pixel cosine, max |difference|) with eager's
output and with a float32 eager teacher (TF32 off) on the first 2 frames. ViT-L-14 has random weights (seed 0)
loaded through a memory:// checkpoint. 240x320 frames (ScanNet's), flip TTA, 2x upscale, 448 px windows.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.models import (  # noqa: E402
    DTYPES,
    _agreement,
    _peak_gb,
    _sync,
    _timed,
    fast_path_args,
    random_clip_checkpoint,
    run_variants,
)
from benchmarks.sam_fast import _reset_peak  # noqa: E402
from sas_ray.models import build_teacher  # noqa: E402
from sas_ray.models.base import frames_to_float  # noqa: E402
from sas_ray.models.openclip_dense import patch_token_fn  # noqa: E402


class DenseBench:
    """One eager teacher and one batch of frames shared by every variant."""

    def __init__(self, device: torch.device, dtype_name: str, tiny: bool, batch: int, size: tuple[int, int],
                 iters: int, warmup: int):
        self.device, self.dtype_name = device, dtype_name
        self.iters, self.warmup, self.batch, self.size = iters, warmup, batch, size
        arch = "tiny" if tiny else "ViT-L-14"
        url = random_clip_checkpoint(arch)
        self.frames = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0)).to(device)
        fp32 = build_teacher("openclip-dense", weights=url, arch=arch, device=device, dtype=torch.float32, fast=False)
        self.fp32 = fp32.encode(self.frames[:2])
        del fp32
        self.teacher = build_teacher("openclip-dense", weights=url, arch=arch, device=device,
                                     dtype=DTYPES[dtype_name], fast=False)
        self.eager_out: torch.Tensor | None = None
        self.eager_s: float | None = None

    def measure(self, variant: str, teacher, **extra) -> dict:
        x = frames_to_float(self.frames, self.device)
        x = torch.cat([x, x.flip(-1)]) if teacher.flip else x

        def vit():
            with torch.inference_mode():
                return teacher._patch_canvas(x)

        _reset_peak(self.device)
        seconds = _timed(lambda: teacher.encode(self.frames), self.device, self.iters, self.warmup)
        peak = _peak_gb(self.device)
        vit_s = _timed(vit, self.device, self.iters, self.warmup)
        out = teacher.encode(self.frames)
        self.eager_s = self.eager_s or seconds
        rec = {"bench": "openclip-dense", "variant": variant, "input": f"{self.batch}x{self.size[0]}x{self.size[1]}",
               "frames_per_s": self.batch / seconds, "ms_per_batch": 1000 * seconds, "vit_ms": 1000 * vit_s,
               "speedup_vs_eager": self.eager_s / seconds, "peak_gb": peak, **extra,
               "vs_fp32": _agreement(out[:2], self.fp32, self.dtype_name)}
        if self.eager_out is None:
            self.eager_out = out
        else:
            rec["vs_eager"] = _agreement(out, self.eager_out, self.dtype_name)
        return rec

    def eager(self) -> dict:
        return self.measure("eager", self.teacher)

    def fast(self, variant: str) -> dict:
        path, _, mode = variant.partition(":")
        kind, _, backend = path.partition("+")
        if kind != "fast":
            raise ValueError(f"variant {variant!r} is not fast[+<sdpa backend>][:<compile mode>]")
        teacher = copy.copy(self.teacher)  # shares the model: the same weights
        teacher.fast = True
        torch._dynamo.reset()
        teacher.patch_tokens = patch_token_fn(teacher.clip.model.visual, True, mode or None, backend or None)
        start = time.perf_counter()
        teacher.encode(self.frames)  # compiles, if a mode is given
        _sync(self.device)
        compile_s = time.perf_counter() - start if mode else None
        return self.measure(variant, teacher, sdpa_backend=backend or None, compile_mode=mode or None,
                            compile_s=compile_s)


def main(argv: list[str] | None = None) -> list[dict]:
    args = fast_path_args(__doc__, argv, "fast,fast:default",
                          "fast[+<flash|efficient|cudnn|math>][:<torch.compile mode>]", batch=8, iters=10, warmup=2,
                          extra=lambda p: p.add_argument("--size", help="frame HxW (default 240x320, tiny 32x48)"))
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference is true float32
    torch.backends.cudnn.allow_tf32 = False
    size = tuple(int(s) for s in (args.size or ("32x48" if args.tiny else "240x320")).split("x"))
    bench = DenseBench(args.device, args.dtype_name, args.tiny, args.batch, size, args.iters, args.warmup)
    return run_variants("dense-fast", "openclip-dense", {"eager": bench.eager}, bench.fast, args)

if __name__ == "__main__":
    main()
