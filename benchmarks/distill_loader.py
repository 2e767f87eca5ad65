"""The stage-1 batch loader, side by side in one process: every supervised voxel's target gathered and the loss's
subset drawn by the step (before) vs the subset drawn in `collate` and only its targets gathered (`sas-ray distill`
now), each in 1 and in --threads loader threads. Synthetic ScanNet-size rooms (benchmarks/distill.py's
`synthetic_scene`), augmentation on. Prints one JSON line of batches/s and ratios.

    python benchmarks/distill_loader.py --points 150000 --batch 8 --batches 4 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import emit  # noqa: E402
from benchmarks.distill import synthetic_scene  # noqa: E402
from sas_ray.distill.batch import collate, voxelize_scene  # noqa: E402
from sas_ray.distill.losses import SUPERVISION_LIMIT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=150000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches timed per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(args.points, args.dim, rng, i) for i in range(args.batch)]

    def load(step: int, subset_first: bool):
        r = np.random.default_rng([0, step])
        voxelized = [voxelize_scene(s, args.voxel, r, train=True) for s in scenes]
        if subset_first:
            return collate(voxelized, r, SUPERVISION_LIMIT, torch.Generator().manual_seed(step))
        return collate(voxelized, r)

    def batches_per_s(subset_first: bool, threads: int) -> float:
        load(0, subset_first)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda step: load(step, subset_first), range(1, args.batches + 1)))
        return args.batches / (time.perf_counter() - start)

    rates = {f"{'subset-first' if first else 'all-targets'}-{threads}t": batches_per_s(first, threads)
             for first in (False, True) for threads in (1, args.threads)}
    base = rates["all-targets-1t"]
    emit({"benchmark": "distill_loader", "points": args.points, "batch": args.batch, "voxel": args.voxel,
          "dim": args.dim, "threads": args.threads, "cpus": os.cpu_count(),
          "batches_per_s": {k: round(v, 3) for k, v in rates.items()},
          "vs_all_targets_1_thread": {k: round(v / base, 2) for k, v in rates.items()}}, args.out)


if __name__ == "__main__":
    main()
