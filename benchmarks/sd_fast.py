"""SD1.5 generation with cross-attention capture: eager against the fast path's variants, side by side in one process.

  python -m benchmarks.sd_fast --device cuda --dtype float16 --batch 4 --steps 50 --variants fast,fast+cl
  python -m benchmarks.sd_fast --device cuda --dtype float16 --batch 4 --steps 50 --variants fast+cl:default
  python -m benchmarks.sd_fast --device cpu --tiny                  # checks the script (numbers meaningless)

One JSON line per measurement, always starting with the two anchors on the same weights:
- "eager": DiffusionGenerator(fast=False).generate (capture through diffusers' reference cross-attention);
- "diffusers": the same pipeline called plainly, diffusers' SDPA processors, no capture (what the capture costs).
Then each variant "fast[+cl][:<compile mode>]": DiffusionGenerator(fast=True, channels_last=+cl, compile_mode=mode)
built afresh from the same random weights. A compiled variant's compile runs in a 2-step warm-up call (compile_s),
then --warmup full calls, all outside the timed region. Reported: images/s, speedup vs "eager" and vs "diffusers",
max |pixel difference| (uint8) and max |map difference| vs eager for the same prompts and seeds, and the coarse-mask
IoU vs eager. SPEC settings by default: PNDM, 50 steps, guidance 7, 512 px; random weights of SD1.5 shapes.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.capability import CLASSES, _random_sd_folder  # noqa: E402
from benchmarks.models import DTYPES, _peak_gb, _sync, _timed, fast_path_args, run_variants  # noqa: E402
from benchmarks.sam_fast import _reset_peak  # noqa: E402
from sas_ray.models.diffusion import PROMPT, DiffusionGenerator  # noqa: E402


class GenerationBench:
    """Same weights, prompts and seeds for every variant; "eager" runs first and is the reference."""

    def __init__(self, device: torch.device, dtype_name: str, tiny: bool, batch: int, steps: int, iters: int,
                 warmup: int):
        self.device, self.dtype_name = device, dtype_name
        self.batch, self.steps, self.iters, self.warmup = batch, steps, iters, warmup
        self.arch = "tiny" if tiny else "sd15"
        self.folder = _random_sd_folder(self.arch)
        self.names = [CLASSES[i % len(CLASSES)] for i in range(batch)]
        self.seeds = list(range(batch))
        self.reference: tuple[np.ndarray, dict, np.ndarray] | None = None  # eager images, maps, masks
        self.image_size: int | None = None
        self.plain: dict | None = None
        self.times: dict[str, float] = {}

    def generator(self, **options) -> DiffusionGenerator:
        return DiffusionGenerator(self.folder, arch=self.arch, device=self.device, dtype=DTYPES[self.dtype_name],
                                  steps=self.steps, **options)

    def record(self, variant: str, seconds: float, generator: DiffusionGenerator | None, **extra) -> dict:
        self.times[variant] = seconds
        rec = {"bench": "sd-generate", "variant": variant, "batch": self.batch, "steps": self.steps,
               "image_size": self.image_size, "images_per_s": self.batch / seconds, "s_per_batch": seconds,
               "speedup_vs_eager": self.times["eager"] / seconds, "peak_gb": _peak_gb(self.device), **extra}
        if "diffusers" in self.times:
            rec["speedup_vs_diffusers"] = self.times["diffusers"] / seconds
        if generator is not None:
            rec["vs_eager"] = self.compare(generator)
        return rec

    def compare(self, generator: DiffusionGenerator) -> dict:
        images, maps = generator.sample([PROMPT.format(n) for n in self.names], self.seeds)
        _, masks = generator.generate(self.names, self.seeds)
        ref_images, ref_maps, ref_masks = self.reference
        inter, union = (masks & ref_masks).sum(), (masks | ref_masks).sum()
        return {"max_abs_pixel": int(np.abs(images.astype(int) - ref_images).max()),
                "mean_abs_pixel": float(np.abs(images.astype(int) - ref_images).mean()),
                "max_abs_map": max(float((maps[f].float() - ref_maps[f]).abs().max()) for f in ref_maps),
                "ref_max_map": max(float(ref_maps[f].max()) for f in ref_maps),
                "mask_iou": float(inter / union) if union else 1.0}

    def eager(self) -> dict:
        generator = self.generator(fast=False)
        self.image_size = generator.image_size
        images, maps = generator.sample([PROMPT.format(n) for n in self.names], self.seeds)
        self.reference = (images, maps, generator.generate(self.names, self.seeds)[1])
        _reset_peak(self.device)
        seconds = _timed(lambda: generator.generate(self.names, self.seeds), self.device, self.iters, self.warmup)
        rec = self.record("eager", seconds, None)

        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe = generator.pipe
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        prompts = [PROMPT.format(n) for n in self.names]
        size = generator.image_size
        _reset_peak(self.device)
        plain_s = _timed(lambda: pipe(prompts, height=size, width=size, num_inference_steps=self.steps,
                                      guidance_scale=generator.guidance, output_type="pt"),
                         self.device, self.iters, self.warmup)
        self.plain = self.record("diffusers", plain_s, None)
        return rec

    def diffusers(self) -> dict:
        return self.plain

    def fast(self, variant: str) -> dict:
        name, _, mode = variant.partition(":")
        if name not in ("fast", "fast+cl"):
            raise ValueError(f"unknown variant {variant!r}: fast[+cl][:<compile mode>]")
        gc.collect()  # the previous variant's generator
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if mode:
            torch._dynamo.reset()
        generator = self.generator(fast=True, channels_last=name == "fast+cl", compile_mode=mode or "eager")
        compile_s = None
        if mode:  # compile on a short call: shapes are those of the timed calls
            generator.steps = 2
            start = time.perf_counter()
            generator.generate(self.names, self.seeds)
            _sync(self.device)
            compile_s = time.perf_counter() - start
            generator.steps = self.steps
        _reset_peak(self.device)
        seconds = _timed(lambda: generator.generate(self.names, self.seeds), self.device, self.iters, self.warmup)
        rec = self.record(variant, seconds, generator, channels_last=name == "fast+cl", compile_mode=mode or None,
                          compile_s=compile_s)
        return rec


def main(argv: list[str] | None = None) -> list[dict]:
    args = fast_path_args(__doc__, argv, "fast,fast+cl", "fast[+cl][:<torch.compile mode>]", batch=4, iters=2,
                          warmup=1, batch_help="prompts per pipeline call",
                          extra=lambda p: p.add_argument("--steps", type=int, default=50,
                                                         help="PNDM steps (SAS: 50; --tiny: 2)"))
    bench = GenerationBench(args.device, args.dtype_name, args.tiny, args.batch, 2 if args.tiny else args.steps,
                            args.iters, args.warmup)
    return run_variants("sd-fast", "sd-generate", {"eager": bench.eager, "diffusers": bench.diffusers}, bench.fast,
                        args)

if __name__ == "__main__":
    main()
