"""Elastic distillation under a worker failure: `sas-ray distill` stage 1 with `num_workers: [1, N]`, rank 1 killed
(`os._exit`, the `SAS_RAY_FAULT` hook) after optimizer step --kill-at; Ray Train restarts the group from the last
checkpoint and the run finishes. Prints one JSON line: the step count and loss curve continuity, the restart, the
final step versus the planned one, and the time.

    python -m benchmarks.distill_elastic --gpus 2 --work /tmp/elastic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "jobs"))

from benchmarks import emit  # noqa: E402
from distill_data import write_dataset  # noqa: E402  (the tests' labelled dataset in the distill layouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2, help="max workers (one GPU each)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="CPU workers: a functional check of this script")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import ray
    import torch

    from jobs.distill import run_distill
    from sas_ray.config import DistillConfig, parse_config
    from sas_ray.faults import ENV
    from sas_ray.storage import Storage

    store = Storage(args.work)
    write_dataset(store, num_scenes=args.scenes, points=args.points)
    marker = os.path.join(args.work, "fault-fired")
    os.environ[ENV] = f"distill-rank1:{args.kill_at}:{marker}"  # the workers inherit the driver's environment
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             num_cpus=4 if args.cpu else None)
    cfg = parse_config({"prepared": args.work, "output": args.work, "voxel_size": 0.02,
                        "stage1": {"epochs": args.epochs}, "stage2": {"epochs": 0}, "loop": 1, "batch_size": 1,
                        "num_workers": [1, args.gpus], "use_gpu": not args.cpu, "checkpoint_every": 2,
                        "max_failures": 2, "progress": False}, DistillConfig)
    start = time.perf_counter()
    report = run_distill(cfg)
    seconds = time.perf_counter() - start
    curve = json.loads(store.read_bytes("distill/stage1/losses.json"))
    planned = args.epochs * (args.scenes // args.gpus)  # steps at full size (batch 1 per worker, loop 1)
    result = {"benchmark": "distill_elastic", "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
              "max_workers": args.gpus, "killed_rank": 1, "kill_after_step": args.kill_at,
              "fault_fired": os.path.exists(marker), "final_step": int(report.outputs["stage1 steps"]),
              "planned_steps_at_full_size": planned,
              "loss_curve_steps_contiguous": curve["steps"] == list(range(1, len(curve["steps"]) + 1)),
              "loss_first": curve["loss"][0], "loss_last": curve["loss"][-1], "seconds": round(seconds, 1)}
    ray.shutdown()
    emit(result, args.out)


if __name__ == "__main__":
    main()
