"""Extraction throughput, side by side in one run: the Ray Data pipeline vs the same teacher model-only vs the
sequential OpenScene-style reference, plus peak memory at 1x and 10x the number of scenes.

Data: synthetic ScanNet-size scenes (320x240 frames, ~150k-point rooms). Rendering is not what is measured, so a
few base rooms with `--unique-views` rendered views each are replicated into `--scenes` scenes of `--frames` frames
(index rows cycle over the rendered views; every frame is still decoded, encoded and fused).

    python benchmarks/extract.py --device cuda --scenes 4 --frames 100 --out docs/perf/extract-h100.json

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sas_ray.models  # noqa: E402,F401  (the CPU torchvision shim)
from benchmarks import emit  # noqa: E402
from jobs.extract import run_extract  # noqa: E402
from jobs.prepare import run_prepare  # noqa: E402
from sas_ray.config import ExtractConfig, PrepareConfig, parse_config  # noqa: E402
from sas_ray.datasets.frames import frame_index_table, read_frame  # noqa: E402
from sas_ray.models import build_teacher  # noqa: E402
from sas_ray.prepared import FRAMES, INFO, SCENES, read_frame_index, read_info, read_scene, scene_file  # noqa: E402
from sas_ray.reference import reference_fusion  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402


def build_dataset(work: str, base_scenes: int, unique_views: int, points: int, size: str = "real") -> Storage:
    cfg = parse_config({"dataset": {"layout": "scannet", "root": f"{work}/raw", "split": "val",
                                    "synthetic": {"num_scenes": base_scenes, "frames_per_scene": unique_views,
                                                  "size": size, "points_per_scene": points, "seed": 0}},
                        "output": f"{work}/base", "progress": False}, PrepareConfig)
    run_prepare(cfg)
    return Storage(cfg.output)


def replicate(base: Storage, target: Storage, scenes: int, frames: int) -> None:
    """`scenes` scenes of `frames` frames each, copied from the base scenes (new ids, same content)."""
    info = read_info(base)
    rows = read_frame_index(base).to_pylist()
    out_rows, names = [], []
    for i in range(scenes):
        source = info["scenes"][i % len(info["scenes"])]
        name = f"scene{i:04d}_00"
        names.append(name)
        target.write_bytes(f"{SCENES}/{scene_file(name)}", base.read_bytes(f"{SCENES}/{scene_file(source)}"))
        views = [r for r in rows if r["scene"] == source]
        for f in range(frames):
            out_rows.append({**views[f % len(views)], "scene": name, "frame": str(f)})
    target.write_table(FRAMES, frame_index_table(out_rows))
    target.write_json(INFO, {**info, "scenes": names})


class Sampler:
    """Calls `sample()` every `period` seconds on a background thread while the `with` block runs."""

    period = 0.2

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) bytes summed over `root` and its descendants (a local Ray's GCS, raylet and workers). PSS counts
    shared pages (the object store, mapped by every worker) once; RSS counts them in every process."""
    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:  # exited between listing and reading
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


class PeakMemory(Sampler):
    """The peak summed PSS of this process and its descendants (Ray workers)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self._me = psutil.Process()

    def sample(self) -> None:
        self.peak = max(self.peak, tree_memory(self._me)[1])


def teacher_spec(args, weights: str | None) -> dict:
    return {"name": "openclip-dense", "weights": weights, "tiny": weights is None, "gpus": args.gpus_per_actor,
            "pool": [args.actors, args.actors], "batch_size": args.batch_size, "dtype": args.dtype,
            "options": {**({"arch": args.arch} if weights else {}), **args.teacher_options}}


def random_checkpoint(arch: str, path: str) -> str:
    """A real-size open_clip architecture with random weights, saved as safetensors (the real loading path)."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def model_only(teacher, frames: torch.Tensor, batch_size: int, iters: int) -> float:
    """frames/s of teacher.encode alone on frames already on the device."""
    teacher.encode(frames[:batch_size])
    if frames.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    for i in range(iters):
        batch = frames[(i * batch_size) % len(frames):][:batch_size]
        teacher.encode(batch)
        done += len(batch)
    if frames.is_cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def pipeline(args, prepared: Storage, work: str, weights: str | None, tag: str) -> tuple[float, float, float, int]:
    """(end-to-end frames/s, steady-state frames/s after the first scene, start-up seconds, peak PSS bytes)."""
    cfg = parse_config({"prepared": prepared.root_url, "output": f"{work}/out-{tag}",
                        "teachers": [teacher_spec(args, weights)], "frames_per_task": args.frames_per_task,
                        "progress": False}, ExtractConfig)
    frames = len(read_frame_index(prepared))
    with PeakMemory() as memory:
        start = time.perf_counter()
        (report,) = run_extract(cfg)
        seconds = time.perf_counter() - start
    assert report.failed == 0, report.summary()
    steady = (frames - args.frames) / (seconds - report.first_output_seconds)
    return frames / seconds, steady, report.first_output_seconds, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="ViT-L-14", help="open_clip arch with random weights ('tiny' = tiny model)")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--scenes", type=int, default=4, help="scenes at 1x (10x is also run unless --no-10x)")
    parser.add_argument("--frames", type=int, default=100, help="frames per scene (ScanNet every 20th ~ 100)")
    parser.add_argument("--unique-views", type=int, default=12)
    parser.add_argument("--base-scenes", type=int, default=2)
    parser.add_argument("--points", type=int, default=150_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=1.0)
    parser.add_argument("--frames-per-task", type=int, default=128)
    parser.add_argument("--reference-frames", type=int, default=30)
    parser.add_argument("--no-10x", action="store_true")
    parser.add_argument("--teacher-options", type=json.loads, default={},
                        help='JSON options of openclip-dense for every column, e.g. \'{"compile_mode": "default"}\'')
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        args.gpus_per_actor = 0.0
        args.dtype = "float32"

    import ray

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        base = build_dataset(work, args.base_scenes, args.unique_views, args.points)
        render_s = time.perf_counter() - t0
        weights = None if args.arch == "tiny" else random_checkpoint(args.arch, f"{work}/clip.safetensors")
        one_x = Storage(f"{work}/x1")
        replicate(base, one_x, args.scenes, args.frames)

        dtype = getattr(torch, args.dtype)
        teacher = build_teacher("openclip-dense", weights, tiny=weights is None, device=args.device, dtype=dtype,
                                **({"arch": args.arch} if weights else {}), **args.teacher_options)
        rows = read_frame_index(one_x).to_pylist()
        images = torch.stack([torch.from_numpy(read_frame(r).rgb) for r in rows[:args.batch_size * 2]])
        model_fps = model_only(teacher, images.to(args.device), args.batch_size,
                               iters=max(4, args.reference_frames // args.batch_size * 4))

        scene_id = rows[0]["scene"]
        ref_frames = [read_frame(r) for r in rows if r["scene"] == scene_id][:args.reference_frames]
        start = time.perf_counter()
        reference_fusion(teacher, read_scene(one_x, scene_id), ref_frames, cut_bound=10, vis_thres=0.25)
        reference_fps = len(ref_frames) / (time.perf_counter() - start)
        fast = teacher.fast
        del teacher
        torch.cuda.empty_cache() if args.device == "cuda" else None

        pipe_fps, steady_fps, startup_s, peak_1x = pipeline(args, one_x, work, weights, "x1")
        result = {"benchmark": "extract", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "teacher": f"openclip-dense {args.arch} {args.dtype}", "teacher_options": args.teacher_options,
                  "fast": fast, "scenes": args.scenes,
                  "frames_per_scene": args.frames, "points": read_scene(one_x, scene_id).num_points,
                  "image": "320x240", "batch_size": args.batch_size, "actors": args.actors,
                  "gpus_per_actor": args.gpus_per_actor, "model_only_fps": round(model_fps, 2),
                  "pipeline_fps": round(pipe_fps, 2), "pipeline_fps_steady": round(steady_fps, 2),
                  "startup_s": round(startup_s, 1), "reference_fps": round(reference_fps, 2),
                  "pipeline_vs_model": round(pipe_fps / model_fps, 3),
                  "steady_vs_model": round(steady_fps / model_fps, 3),
                  "pipeline_vs_reference": round(pipe_fps / reference_fps, 2),
                  "peak_pss_gb_1x": round(peak_1x / 1e9, 2),
                  "render_seconds": round(render_s, 1)}
        if not args.no_10x:
            ten_x = Storage(f"{work}/x10")
            replicate(base, ten_x, args.scenes * 10, args.frames)
            pipe_fps_10, steady_10, _, peak_10x = pipeline(args, ten_x, work, weights, "x10")
            result.update({"pipeline_fps_10x": round(pipe_fps_10, 2), "pipeline_fps_steady_10x": round(steady_10, 2),
                           "steady_vs_model_10x": round(steady_10 / model_fps, 3),
                           "steady_vs_reference_10x": round(steady_10 / reference_fps, 2),
                           "peak_pss_gb_10x": round(peak_10x / 1e9, 2),
                           "peak_pss_ratio_10x_vs_1x": round(peak_10x / peak_1x, 3)})
    ray.shutdown()
    emit(result, args.out, append=False)


if __name__ == "__main__":
    main()
