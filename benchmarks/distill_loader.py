"""The distillation loader as `sas-ray distill` runs it, per batch: scenes read from a local store in the real layout
(prepared scene, superpoints, 512-d fused features: `SceneSource.load`), then augmented, voxelized and collated with
the stage-1 loss subset's targets gathered (`load_batch`) on --device, in --threads loader threads. Synthetic
ScanNet-size rooms (benchmarks/distill.py's `synthetic_scene`).

Prints one JSON line: CPU seconds per batch (process CPU time, all threads) of reading (points, superpoints, the
features' mask; target rows are read later, by row) and of the rest, the loader's batches/s in 1 and in --threads
threads, and batches/s per CPU core (1 / CPU seconds per batch): the number that sizes the CPUs a GPU needs. With
--device cuda the augmentation runs on the GPU and the CPU mostly reads.

    python benchmarks/distill_loader.py --points 150000 --batch 8 --batches 4 --threads 8 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "jobs"))

from benchmarks import emit  # noqa: E402
from benchmarks.distill import synthetic_scene  # noqa: E402
from distill_data import write_samples  # noqa: E402  (the tests' writer of the distill layouts)
from sas_ray.config import DistillConfig  # noqa: E402
from sas_ray.distill.batch import collate, voxelize_scene  # noqa: E402
from sas_ray.distill.training import AUGMENTATION, SceneSource, load_batch, step_generator  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=150000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches timed per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads (1: the loader parallelises over its own threads)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Storage(folder)
        samples = [synthetic_scene(args.points, args.dim, rng, i) for i in range(args.batch)]
        write_samples(root, samples, "benchmark")
        del samples
        source = SceneSource(root, root, root, "fused")
        scene_ids = [f"bench{i:04d}" for i in range(args.batch)]
        cfg = DistillConfig(prepared=folder, output=folder, stage2={"epochs": 0})

        def cpu_seconds(work) -> float:
            """CPU seconds per batch of `work(step)` (process time: every thread), after one warm-up call."""
            work(0)
            sync()
            start = time.process_time()
            for step in range(1, args.batches + 1):
                work(step)
            sync()
            return (time.process_time() - start) / args.batches

        read = cpu_seconds(lambda step: [source.load(s, True) for s in scene_ids])
        loaded = [source.load(s, True) for s in scene_ids]

        def augment(step: int):
            generator = step_generator([0, AUGMENTATION], step)
            scenes = [voxelize_scene(s, args.voxel, generator, train=True, device=device) for s in loaded]
            return collate(scenes, generator, cfg.supervision_limit, step_generator([0], step))

        rest = cpu_seconds(augment)

        def rate(threads: int) -> float:
            def load(step: int):
                return load_batch(source, cfg, "stage1", args.voxel, [0], step, scene_ids, device)

            load(0)
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(load, range(1, args.batches + 1)))
            sync()
            return args.batches / (time.perf_counter() - start)

        rates = {f"{t}-threads": round(rate(t), 3) for t in sorted({1, args.threads})}
    emit({"benchmark": "distill_loader", "device": str(device), "torch_threads": args.torch_threads,
          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
          "points": args.points, "batch": args.batch, "voxel": args.voxel, "dim": args.dim, "cpus": os.cpu_count(),
          "cpu_s_per_batch": {"read": round(read, 3), "augment_voxelize_collate": round(rest, 3)},
          "batches_per_s_per_cpu_core": round(1 / (read + rest), 3), "batches_per_s": rates}, args.out)


if __name__ == "__main__":
    main()
