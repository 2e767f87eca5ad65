"""Throughput of the capability stage's two generative steps at real sizes (random weights): images/s.

One JSON line per stage; `--out DIR` also writes DIR/capability-<device>.json. Weights are random but loaded
through the real path (safetensors written to memory://), so load times are reported too.

  python benchmarks/capability.py --device cuda --dtype float16 --steps 50 --batch 4 --out docs/perf
  python benchmarks/capability.py --device cpu --tiny                    # smoke test of the script itself

- sd15: DiffusionGenerator.generate (SD1.5-shaped UNet/VAE/text encoder, 512 px, --steps PNDM steps, guidance 7,
  cross-attention capture + coarse masks) on --batch prompts a call; also the same batch through the plain diffusers
  pipeline (fused attention, no capture) to show what the capture costs.
- sam-vit-h: SamRefiner.refine (ViT-H image encoder at 1024 px + prompt decoder, 3 point prompts) on 512 px images,
  one image a call as the SAM actor runs it.
Per-model kernel timings (one UNet step, the bare SAM encoder) are in benchmarks/models.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.models import DTYPES, _peak_gb, _timed, run_and_record  # noqa: E402
from sas_ray.models.diffusion import ARCHS, PROMPT, DiffusionGenerator  # noqa: E402
from sas_ray.models.sam import SamRefiner  # noqa: E402
from sas_ray.models.weights import write_checkpoint  # noqa: E402

CLASSES = ("chair", "sofa", "shower curtain", "table", "bed", "window", "door", "sink")


def _random_sd_folder(arch: str) -> str:
    """A diffusers-layout folder of random weights of `arch` in memory://, as build_pipeline reads it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg = ARCHS[arch]
    folder = f"memory://bench-capability/{arch}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for rel, module in (("unet/diffusion_pytorch_model.safetensors", lambda: UNet2DConditionModel(**unet_cfg)),
                            ("vae/diffusion_pytorch_model.safetensors", lambda: AutoencoderKL(**vae_cfg)),
                            ("text_encoder/model.safetensors", lambda: CLIPTextModel(CLIPTextConfig(**text_cfg)))):
            write_checkpoint(module().state_dict(), f"{folder}/{rel}")
    return folder


def bench_sd(device: torch.device, dtype_name: str, tiny: bool, iters: int, steps: int, batch: int) -> dict:
    arch = "tiny" if tiny else "sd15"
    folder = _random_sd_folder(arch)
    start = time.perf_counter()
    generator = DiffusionGenerator(folder, arch=arch, device=device, dtype=DTYPES[dtype_name], steps=steps)
    load_s = time.perf_counter() - start
    names = [CLASSES[i % len(CLASSES)] for i in range(batch)]
    seeds = list(range(batch))
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = _timed(lambda: generator.generate(names, seeds), device, iters, warmup=1)
    peak = _peak_gb(device)
    _, masks = generator.generate(names, seeds)

    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = generator.pipe
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    size = generator.image_size
    plain_s = _timed(lambda: pipe([PROMPT.format(n) for n in names], height=size, width=size,
                                  num_inference_steps=steps, guidance_scale=generator.guidance, output_type="pt"),
                     device, iters, warmup=1)
    return {"stage": "sd15" if not tiny else "sd-tiny", "image_size": size, "steps": steps, "batch": batch,
            "images_per_s": batch / seconds, "s_per_batch": seconds, "plain_pipeline_images_per_s": batch / plain_s,
            "capture_overhead": seconds / plain_s, "coarse_mask_fill": float(masks.mean()), "load_s": load_s,
            "peak_gb": peak}


def bench_sam(device: torch.device, dtype_name: str, tiny: bool, iters: int, image_size: int) -> dict:
    from segment_anything.modeling import Sam

    from sas_ray.models.sam import tiny_sam

    url = "memory://bench-capability/sam.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if tiny:
            sam: Sam = tiny_sam()
        else:
            from segment_anything import sam_model_registry

            sam = sam_model_registry["vit_h"](checkpoint=None)
    write_checkpoint(sam.state_dict(), url)
    del sam
    start = time.perf_counter()
    refiner = SamRefiner(url, arch="tiny" if tiny else "vit_h", device=device, dtype=DTYPES[dtype_name],
                         border=8 if tiny else 70)
    load_s = time.perf_counter() - start
    g = np.random.default_rng(0)
    image = g.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    coarse = np.zeros((image_size, image_size), bool)
    coarse[image_size // 4: 3 * image_size // 4, image_size // 3: 2 * image_size // 3] = True
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = _timed(lambda: refiner.refine(image, coarse), device, iters)
    return {"stage": "sam-vit-h" if not tiny else "sam-tiny", "image_size": image_size,
            "images_per_s": 1 / seconds, "ms_per_image": 1000 * seconds, "load_s": load_s,
            "peak_gb": _peak_gb(device)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="tiny models (checks the script, numbers meaningless)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="SD inference steps (SAS: 50)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per SD pipeline call")
    parser.add_argument("--stages", default="sd,sam")
    parser.add_argument("--out", help="folder for capability-<device>.json (e.g. docs/perf)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype if device.type == "cuda" else "float32"  # CPU runs float32 (as the actors do)
    steps = 2 if args.tiny else args.steps
    size = 64 if args.tiny else 512
    benches = {"sd": lambda: bench_sd(device, dtype_name, args.tiny, args.iters, steps, args.batch),
               "sam": lambda: bench_sam(device, dtype_name, args.tiny, args.iters, size)}
    runs = {name: benches[name] for name in args.stages.split(",")}
    return run_and_record("capability", runs, device, dtype_name, args.tiny, args.iters, args.out)


if __name__ == "__main__":
    main()
