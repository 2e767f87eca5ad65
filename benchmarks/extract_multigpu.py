"""Extraction with two 2D teachers on N GPUs: each teacher's actors pinned to their own GPU(s) (num_gpus=1), or
sharing one GPU (0.5 each) when N = 1. Reports frames/s (frames x teachers), scaling efficiency against the
1-GPU run of the same work folder (end to end, and steady: between the first and last finished scene), per-GPU
utilisation, and whether the outputs equal the 1-GPU run's.

Run once per GPU count, 1 first (CUDA_VISIBLE_DEVICES selects the GPUs):
    CUDA_VISIBLE_DEVICES=0   python -m benchmarks.extract_multigpu --gpus 1 --work /tmp/mg
    CUDA_VISIBLE_DEVICES=0,1 python -m benchmarks.extract_multigpu --gpus 2 --work /tmp/mg
Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from benchmarks import emit  # noqa: E402
from benchmarks.extract import Sampler, build_dataset, random_checkpoint, replicate  # noqa: E402
from jobs.extract import run_extract  # noqa: E402
from sas_ray.config import ExtractConfig, parse_config  # noqa: E402
from sas_ray.features import read_features  # noqa: E402
from sas_ray.prepared import read_frame_index, read_info  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402


class GpuUtilisation(Sampler):
    """Mean utilisation per visible GPU, sampled from nvidia-smi."""

    period = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[list[float]] = []

    def sample(self) -> None:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        self.samples.append([float(x) for x in out.split()])

    def mean(self) -> list[float]:
        return [round(sum(col) / len(col), 1) for col in zip(*self.samples)] if self.samples else []


def steady_frames_per_s(output: Storage, teachers: list[str], frames_per_scene: int) -> float:
    """Teacher-frames/s between each teacher's first and last finished scene (feature files' modification
    times), summed over teachers: throughput without the start-up (Ray Data, actors, checkpoint loads)."""
    total = 0.0
    for teacher in teachers:
        folder = output.child("features", teacher)
        times = sorted(os.path.getmtime(os.path.join(folder.root, name)) for name in folder.list()
                       if name.endswith(".safetensors"))  # the work folder is local
        if len(times) > 1 and times[-1] > times[0]:
            total += (len(times) - 1) * frames_per_scene / (times[-1] - times[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--work", required=True, help="folder kept between the runs of different GPU counts")
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--unique-views", type=int, default=12)
    parser.add_argument("--points", type=int, default=150_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    prepared = Storage(f"{args.work}/data")
    if not prepared.exists("dataset.json"):
        base = build_dataset(args.work, 2, args.unique_views, args.points)
        replicate(base, prepared, args.scenes, args.frames)
        for i in range(2):
            random_checkpoint(args.arch, f"{args.work}/clip{i}.safetensors")
    per_teacher = max(1, args.gpus // 2)
    gpus_per_actor = 1.0 if args.gpus >= 2 else 0.5
    teachers = [{"name": "openclip-dense", "output_name": f"teacher{i}", "weights": f"{args.work}/clip{i}.safetensors",
                 "gpus": gpus_per_actor, "pool": [per_teacher, per_teacher], "batch_size": args.batch_size,
                 "dtype": "float16", "options": {"arch": args.arch}} for i in range(2)]
    output = f"{args.work}/out-g{args.gpus}"
    cfg = parse_config({"prepared": prepared.root_url, "output": output, "teachers": teachers,
                        "frames_per_task": 128, "progress": False}, ExtractConfig)
    frames = len(read_frame_index(prepared))
    with GpuUtilisation() as utilisation:
        start = time.perf_counter()
        reports = run_extract(cfg)
        seconds = time.perf_counter() - start
    assert all(r.failed == 0 for r in reports), [r.summary() for r in reports]
    fps = 2 * frames / seconds
    steady = steady_frames_per_s(Storage(output), [t["output_name"] for t in teachers], args.frames)
    result = {"benchmark": "extract_multigpu", "device": torch.cuda.get_device_name(), "gpus": args.gpus,
              "teachers": 2, "teacher": f"openclip-dense {args.arch} fp16", "actors_per_teacher": per_teacher,
              "gpus_per_actor": gpus_per_actor, "scenes": args.scenes, "frames_per_scene": args.frames,
              "teacher_frames_per_s": round(fps, 2), "steady_teacher_frames_per_s": round(steady, 2),
              "seconds": round(seconds, 1),
              "gpu_utilisation_pct": utilisation.mean()}
    baseline_file = f"{args.work}/g1.json"
    if args.gpus == 1:
        with open(baseline_file, "w") as f:
            json.dump(result, f)
    elif os.path.exists(baseline_file):
        with open(baseline_file) as f:
            base = json.load(f)
        result["scaling_efficiency"] = round(fps / (args.gpus * base["teacher_frames_per_s"]), 3)
        result["steady_scaling_efficiency"] = round(steady / (args.gpus * base["steady_teacher_frames_per_s"]), 3)
        worst = 0.0
        masks_equal = True
        for scene in read_info(prepared)["scenes"]:
            for t in ("teacher0", "teacher1"):
                a = read_features(Storage(f"{args.work}/out-g1"), t, scene)
                b = read_features(Storage(output), t, scene)
                masks_equal &= bool(torch.equal(a.mask_full, b.mask_full))
                worst = max(worst, float((a.feat.float() - b.feat.float()).abs().max()))
        result.update({"outputs_masks_equal_1gpu": masks_equal, "outputs_max_abs_diff_vs_1gpu": worst})
    ray.shutdown()
    emit(result, args.out)


if __name__ == "__main__":
    main()
