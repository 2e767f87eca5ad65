"""Ray Train distillation scaling: stage-1 steps of MinkUNet18A on 1..N GPU workers (DDP over NCCL).

Two variants per GPU count:
- `fixed-global`: a global batch of --global-batch scenes split across the workers (strong scaling);
- `per-worker`: --global-batch scenes on every worker (weak scaling; the global batch grows with N).
Each worker voxelizes its own synthetic ScanNet-size rooms (benchmarks/distill.py's `synthetic_scene`) before the
clock starts, so the numbers are the training system's (forward, loss, backward + all-reduce, Adam), not loading.
Scaling efficiency = samples/s on N GPUs / (N x samples/s on 1 GPU) of the same variant. Prints one JSON line per
(variant, N); the training runs are the library's `stage1_step` under fp16 autocast, as `sas-ray distill` runs it.

    python -m benchmarks.distill_multigpu --gpus 1 2 --points 150000 --global-batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


from benchmarks import emit  # noqa: E402


def worker_loop(config: dict) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from benchmarks.distill import synthetic_scene
    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.batch import collate, voxelize_scene
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.steps import optimizer_step, stage1_step

    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    rng = np.random.default_rng([0, rank])
    scenes = [synthetic_scene(config["points"], config["dim"], rng, i) for i in range(config["batch"])]
    augmentation = torch.Generator().manual_seed(0)  # the loader's augmentation draws
    batches = [collate([voxelize_scene(s, 0.02, augmentation, train=True) for s in scenes], augmentation)
               for _ in range(2)]
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(MinkUNet18A(3, config["dim"]).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda _: None)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    backend = get_backend(config["backend"])
    generator = torch.Generator().manual_seed(rank)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = None
    for step in range(config["warmup"] + config["steps"]):
        if step == config["warmup"]:
            sync(device)
            dist.barrier()
            start = time.perf_counter()
        loss, _ = stage1_step(model, backend, batches[step % 2], device, generator, mixed_precision=True)
        optimizer_step(optimizer, scaler, loss)
    sync(device)
    dist.barrier()
    seconds = time.perf_counter() - start
    peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 1e9 if cuda else 0.0], device=device)
    peaks = [torch.zeros_like(peak) for _ in range(dist.get_world_size())]
    dist.all_gather(peaks, peak)
    if rank == 0:  # one host: the driver reads this file (Ray Train V2 keeps metrics only beside checkpoints)
        with open(config["metrics_file"], "w") as f:
            json.dump({"steps_per_s": config["steps"] / seconds, "peak_gpu_gb": [float(p) for p in peaks],
                       "voxels_per_worker_batch": int(batches[0].coords.shape[0]), "loss": float(loss.item())}, f)


def run(gpus: int, batch: int, args) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    metrics_file = os.path.join(args.storage, f"metrics-{gpus}-{batch}.json")
    os.makedirs(args.storage, exist_ok=True)
    config = {"points": args.points, "dim": args.dim, "batch": batch, "steps": args.steps, "warmup": args.warmup,
              "backend": args.backend, "metrics_file": metrics_file}
    trainer = TorchTrainer(worker_loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=gpus, use_gpu=not args.cpu),
                           run_config=RunConfig(name=f"scaling-{gpus}-{batch}", storage_path=args.storage))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"{gpus} workers x batch {batch}: {result.error}")
    with open(metrics_file) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--points", type=int, default=150000)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=["fixed-global", "per-worker"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--storage", default="/tmp/distill-scaling")
    parser.add_argument("--out", default="docs/perf/distill-multigpu.jsonl")
    parser.add_argument("--cpu", action="store_true", help="CPU workers (gloo): a functional check of this script")
    args = parser.parse_args()

    import ray
    import torch

    os.environ.update(NCCL_SAFE)
    ray.init(address="local", include_dashboard=False, num_cpus=4 if args.cpu else None, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {**NCCL_SAFE, "PYTHONPATH": os.pathsep.join(
                 p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}})
    gpu = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    for variant in args.variants:
        base = None
        for gpus in args.gpus:
            batch = args.global_batch // gpus if variant == "fixed-global" else args.global_batch
            metrics = run(gpus, batch, args)
            samples = metrics["steps_per_s"] * batch * gpus
            base = base or samples / gpus  # the 1-GPU run comes first
            emit({"benchmark": "distill_scaling", "variant": variant, "gpus": gpus, "gpu": gpu,
                  "batch_per_worker": batch, "global_batch": batch * gpus, "points_per_scene": args.points,
                  "steps_per_s": metrics["steps_per_s"], "samples_per_s": samples,
                  "efficiency": samples / (gpus * base), "peak_gpu_gb": metrics["peak_gpu_gb"],
                  "voxels_per_worker_batch": metrics["voxels_per_worker_batch"]}, args.out)
    ray.shutdown()


if __name__ == "__main__":
    main()
