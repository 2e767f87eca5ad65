"""Training-step throughput and peak memory of MinkUNet18A per sparse backend on synthetic ScanNet-size scenes.

Prints one JSON line per variant and appends them to docs/perf/distill.jsonl. Scenes are random room-like point
sets (floor, walls, boxes) of --points points voxelized at --voxel metres; one step = forward, stage-1 loss,
backward, Adam step, on a batch of --batch scenes. Variants, measured one after the other in one process:
- `full-head`: the 1x1 head over every voxel, then the loss's 20k subset picked from it (as OpenScene/SAS);
- `subset-head`: the head only on the loss's voxels (same loss, same gradients);
- `subset-head-fp16`: that under fp16 autocast with loss scaling (CUDA only; the training default there).

    python benchmarks/distill.py --device cuda --backend spconv --points 150000 --batch 8 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import emit  # noqa: E402
from sas_ray.distill.backends import get_backend
from sas_ray.distill.batch import SceneSample, collate, voxelize_scene
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.losses import SUPERVISION_LIMIT
from sas_ray.distill.steps import forward, optimizer_step, stage1_loss, stage1_rows, stage1_step
from sas_ray.scene import PointFeatures


def synthetic_scene(points: int, dim: int, rng: np.random.Generator, index: int) -> SceneSample:
    """A 6 x 5 x 3 m room: floor, two walls and boxes, with random features and ~200-point superpoints."""
    n_floor, n_wall = points // 3, points // 6
    floor = np.c_[rng.uniform(0, 6, n_floor), rng.uniform(0, 5, n_floor), np.zeros(n_floor)]
    wall_x = np.c_[np.zeros(n_wall), rng.uniform(0, 5, n_wall), rng.uniform(0, 3, n_wall)]
    wall_y = np.c_[rng.uniform(0, 6, n_wall), np.zeros(n_wall), rng.uniform(0, 3, n_wall)]
    rest = points - n_floor - 2 * n_wall
    boxes = rng.uniform([0.5, 0.5, 0], [5.5, 4.5, 1.2], (rest, 3))
    xyz = np.concatenate([floor, wall_x, wall_y, boxes]).astype(np.float32)
    superpoints = (np.floor(xyz / 0.3) @ np.array([1, 100, 10000])).astype(np.int64)
    feat = torch.nn.functional.normalize(torch.randn(points, dim), dim=1).half()
    return SceneSample(f"bench{index:04d}", xyz, superpoints, PointFeatures(feat, torch.ones(points, dtype=torch.bool)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--points", type=int, default=150000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--out", default="docs/perf/distill.jsonl")
    parser.add_argument("--variants", nargs="*", help="default: full-head subset-head (+ subset-head-fp16 on CUDA)")
    args = parser.parse_args()

    device = torch.device(args.device)
    backend = get_backend(args.backend)
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(args.points, args.dim, rng, i) for i in range(args.batch)]
    augmentation = torch.Generator().manual_seed(0)  # the loader's augmentation draws
    batches = [collate([voxelize_scene(s, args.voxel, augmentation, train=True) for s in scenes], augmentation)
               for _ in range(min(args.steps + args.warmup, 3))]
    variants = args.variants or (["full-head", "subset-head"] + (["subset-head-fp16"] if device.type == "cuda" else []))
    for variant in variants:
        emit(measure(variant, backend, batches, device, args), args.out)


def measure(variant: str, backend, batches: list, device: torch.device, args) -> dict:
    torch.manual_seed(0)
    model = MinkUNet18A(3, args.dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = variant.endswith("fp16")
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        if variant == "full-head":
            rows = stage1_rows(batch, SUPERVISION_LIMIT, generator)
            loss, _ = stage1_loss(forward(model, backend, batch, device)[rows[0].to(device)], batch, rows)
        else:
            loss, _ = stage1_step(model, backend, batch, device, generator, SUPERVISION_LIMIT, amp)
        optimizer_step(optimizer, scaler, loss)
        losses.append(float(loss.item()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"benchmark": "distill_step", "variant": variant, "backend": backend.name, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "points_per_scene": args.points, "batch": args.batch, "voxels_per_batch": int(batches[0].coords.shape[0]),
            "dim": args.dim, "steps": args.steps, "steps_per_s": args.steps / seconds,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
            "loss_first": losses[0], "loss_last": losses[-1]}


if __name__ == "__main__":
    main()
