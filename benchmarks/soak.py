"""Soak: extraction over 1x and 10x the scenes (tiny teacher, CPU) while the memory of the driver and every Ray
process (summed RSS and PSS), their number and the object store's bytes in use are sampled every 0.5 s. Bounded
memory means the peak at 10x stays close to the peak at 1x, and memory does not grow with each finished scene (the
slope of memory against scenes written over the second half of the run, once every process has started).

    python -m benchmarks.soak --scenes 4 --factors 1 10 --frames 6 --frames-per-task 3 --out docs/perf/soak-cpu.json

Each run gets a fresh local Ray, so worker processes left by one run never count in the next. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from benchmarks import emit  # noqa: E402
from benchmarks.extract import Sampler, build_dataset, replicate, tree_memory  # noqa: E402
from jobs.extract import run_extract  # noqa: E402
from sas_ray.config import ExtractConfig, parse_config  # noqa: E402
from sas_ray.features import FEATURES  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402

TEACHER = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 4}


@contextmanager
def local_ray(cpus: int | None):
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


class MemoryTrace(Sampler):
    """Samples (seconds, scenes written, RSS, PSS, the driver's PSS, object-store bytes in use, processes) every
    `period` seconds."""

    period = 0.5

    def __init__(self, features: str) -> None:
        from ray._private.internal_api import get_state_from_address

        super().__init__()
        self.samples: list[tuple[float, ...]] = []
        self._features = features
        self._me = psutil.Process()
        self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self._start = time.perf_counter()

    def _scenes_written(self) -> int:
        try:
            return sum(name.endswith(".safetensors") for name in os.listdir(self._features))
        except FileNotFoundError:
            return 0

    def _object_store_bytes(self) -> int:
        """What `ray memory --stats-only` reports, summed over nodes (Ray's internal API; no dashboard needed)."""
        from ray._private.internal_api import get_memory_info_reply

        return get_memory_info_reply(self._state, timeout_seconds=5).store_stats.object_store_bytes_used

    def sample(self) -> None:
        rss, pss = tree_memory(self._me)
        self.samples.append((time.perf_counter() - self._start, self._scenes_written(), rss, pss,
                             self._me.memory_full_info().pss, self._object_store_bytes(),
                             1 + len(self._me.children(recursive=True))))


def summarise(samples: list[tuple], scenes: int, seconds: float) -> dict:
    """Peaks, and memory growth per written scene (least squares over the second half of the scenes)."""
    _, written, rss, pss, driver, store, processes = (np.asarray(column, np.float64) for column in zip(*samples))
    steady = written >= scenes / 2

    def slope_mb(values: np.ndarray) -> float:
        if len(np.unique(written[steady])) < 2:
            return 0.0
        return round(float(np.polyfit(written[steady], values[steady], 1)[0]) / 1e6, 2)

    return {"scenes": scenes, "seconds": round(seconds, 1), "samples": len(samples),
            "peak_rss_gb": round(rss.max() / 1e9, 3), "peak_pss_gb": round(pss.max() / 1e9, 3),
            "peak_object_store_mb": round(store.max() / 1e6, 1), "peak_processes": int(processes.max()),
            "pss_slope_mb_per_scene": slope_mb(pss), "driver_pss_slope_mb_per_scene": slope_mb(driver),
            "object_store_slope_mb_per_scene": slope_mb(store)}


def soak_run(args, prepared: Storage, output: str, scenes: int) -> dict:
    budget = {"object_store_gb": args.object_store_gb} if args.object_store_gb else {}
    cfg = parse_config({"prepared": prepared.root_url, "output": output, "teachers": [TEACHER],
                        "frames_per_task": args.frames_per_task, "progress": False, **budget}, ExtractConfig)
    with local_ray(args.cpus):
        with MemoryTrace(Storage(output).url(FEATURES, TEACHER["name"])) as trace:
            start = time.perf_counter()
            (report,) = run_extract(cfg)
            seconds = time.perf_counter() - start
    if report.done != scenes:
        raise RuntimeError(report.summary())
    return summarise(trace.samples, scenes, seconds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4, help="scenes at 1x")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--frames", type=int, default=8, help="frames per scene")
    parser.add_argument("--frames-per-task", type=int, default=4)
    parser.add_argument("--size", choices=["real", "tiny"], default="real", help="frame size: 320x240 or tiny")
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--object-store-gb", type=float, default=None,
                        help="the pipeline's object-store budget (default: ExtractConfig's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as work:
        with local_ray(args.cpus):
            base = build_dataset(work, 2, args.frames, args.points, args.size)
        runs = []
        for factor in args.factors:
            prepared = Storage(f"{work}/x{factor}")
            replicate(base, prepared, args.scenes * factor, args.frames)
            runs.append(soak_run(args, prepared, f"{work}/out-x{factor}", args.scenes * factor))
    result = {"benchmark": "soak", "device": "cpu", "cpus": args.cpus or os.cpu_count(),
              "teacher": "openclip-dense tiny float32", "frames_per_scene": args.frames, "size": args.size,
              "points": args.points, "frames_per_task": args.frames_per_task,
              "object_store_gb": args.object_store_gb or ExtractConfig.model_fields["object_store_gb"].default,
              "runs": runs,
              "peak_pss_ratio": round(runs[-1]["peak_pss_gb"] / runs[0]["peak_pss_gb"], 3),
              "peak_rss_ratio": round(runs[-1]["peak_rss_gb"] / runs[0]["peak_rss_gb"], 3)}
    emit(result, args.out, append=False)
    return result


if __name__ == "__main__":
    main()
