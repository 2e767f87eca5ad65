"""`sas-ray distill` end to end on one device vs its pre-voxelized training step, side by side in one run.

1. The pre-voxelized step (benchmarks/distill.py `measure`, `subset-head-fp16` on CUDA, `subset-head` on CPU): the
   GPU's rate when it never waits for data.
2. `run_distill` stage 1 (Ray Train, one worker, the real loader: scenes read from local storage in the real
   layout, augmented and voxelized on the device, the loss subset's 512-d targets read by row) on --scenes synthetic
   ScanNet-size rooms (benchmarks/distill.py `synthetic_scene`), batch --batch, `prefetch` --threads, and
   `loader_processes` --processes (0: the batches built in --threads threads on the device; N: on the CPU in N
   processes, --threads ahead each; unset: the job's default).
Steps/s of run 2 come from the wall-clock times `losses.json` records per step, after --warmup steps, and
`loader_wait_share` from its per-step waits for the loader over the same steps. Prints
progress lines, then one JSON line (also on failure, with "error"): both rates, their ratio, the loader's threads
and the CPUs, so the ratio says whether the loader keeps the GPU busy.

    python benchmarks/distill_e2e.py --work /tmp/e2e --points 150000 --batch 8 --scenes 16 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "jobs"))

from benchmarks import emit  # noqa: E402


def log(message: str) -> None:
    print(f"[distill_e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="local folder for the dataset and the run (--scenes x ~155 MB)")
    parser.add_argument("--points", type=int, default=150000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--voxel", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=60, help="steps timed (after --warmup)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="loader threads, or batches per process (`prefetch`)")
    parser.add_argument("--processes", type=int, default=None,
                        help="loader processes (`loader_processes`; default: the job's, 6 on a GPU, threads on the CPU)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"benchmark": "distill_e2e", "points": args.points, "batch": args.batch, "scenes": args.scenes,
              "dim": args.dim, "voxel": args.voxel, "loader_threads": args.threads,
              "loader_processes": args.processes, "cpus": os.cpu_count()}
    try:
        run(args, result)
    except Exception as err:  # noqa: BLE001  (the JSON line must come out whatever failed)
        traceback.print_exc()
        result["error"] = f"{type(err).__name__}: {err}"
    emit(result, args.out)


def run(args, result: dict) -> None:
    import numpy as np
    import torch

    from benchmarks.distill import measure, synthetic_scene
    from distill_data import write_samples
    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.batch import collate, voxelize_scene
    from sas_ray.storage import Storage

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = get_backend(args.backend)
    result.update(device=str(device), backend=backend.name,
                  gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    rng = np.random.default_rng(0)
    log(f"{args.scenes} scenes of {args.points} points, {args.dim}-d features -> {args.work}")
    samples = [synthetic_scene(args.points, args.dim, rng, i) for i in range(args.scenes)]
    write_samples(Storage(args.work), samples, "benchmark")

    log("pre-voxelized step")
    augmentation = torch.Generator().manual_seed(0)
    batches = [collate([voxelize_scene(s, args.voxel, augmentation, train=True) for s in samples[:args.batch]],
                       augmentation) for _ in range(2)]
    del samples
    variant = "subset-head-fp16" if device.type == "cuda" else "subset-head"
    step = measure(variant, backend, batches, device, argparse.Namespace(**{**vars(args), "steps": args.steps}))
    result["prevoxelized_steps_per_s"] = round(step["steps_per_s"], 3)
    result["peak_gpu_gb_prevoxelized"] = step["peak_gpu_gb"]
    del batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"pre-voxelized: {result['prevoxelized_steps_per_s']} steps/s")

    import ray

    from jobs.distill import run_distill
    from sas_ray.config import DistillConfig, parse_config

    per_epoch = args.scenes // args.batch  # loop 1
    epochs = -(-(args.warmup + args.steps) // per_epoch)
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    cfg = parse_config({"prepared": args.work, "output": args.work, "voxel_size": args.voxel,
                        "stage1": {"epochs": epochs, "max_steps": args.warmup + args.steps}, "stage2": {"epochs": 0},
                        "loop": 1, "batch_size": args.batch, "use_gpu": device.type == "cuda",
                        "backend": args.backend, "prefetch": args.threads, "loader_processes": args.processes,
                        "checkpoint_every": 10**6,
                        "progress": False}, DistillConfig)
    log(f"sas-ray distill: {args.warmup + args.steps} steps")
    start = time.perf_counter()
    run_distill(cfg)
    result["distill_seconds"] = round(time.perf_counter() - start, 1)
    ray.shutdown()
    curve = json.loads(Storage(args.work).read_bytes("distill/stage1/losses.json"))
    times = curve["time"][args.warmup - 1:]
    result["e2e_steps_per_s"] = round((len(times) - 1) / (times[-1] - times[0]), 3)
    result["e2e_vs_prevoxelized"] = round(result["e2e_steps_per_s"] / result["prevoxelized_steps_per_s"], 3)
    # the timed steps' share of wall time spent waiting for their batch: ~0 means the loader keeps up and a gap
    # is contention (loader threads' GIL and GPU work), not throughput
    result["loader_wait_share"] = round(sum(curve["loader_wait"][args.warmup:]) / (times[-1] - times[0]), 3)
    log(f"end to end: {result['e2e_steps_per_s']} steps/s ({result['e2e_vs_prevoxelized']}x)")


if __name__ == "__main__":
    main()
