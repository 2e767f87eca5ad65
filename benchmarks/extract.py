"""Extraction end to end: `run_extract` over a dataset-size run vs each teacher's model-only rate, side by side.

Data: synthetic ScanNet-size scenes (320x240 frames, ~150k-point rooms). Rendering is not what is measured, so a
few base rooms with `--unique-views` rendered views each are replicated into `--scenes` scenes of `--frames` frames
(index rows cycle over the rendered views; every frame is still decoded, encoded and fused by every teacher).

    python -m benchmarks.extract --device cuda --teachers openclip-dense,sam-clip --scenes 40 --frames 100 \
        --out docs/perf/extract-sas-pair-h200.json         # the SAS pair on one GPU (0.5 GPU per actor)
    python -m benchmarks.extract --device cpu --arch tiny --teachers openclip-dense --scenes 2 --frames 8 \
        --unique-views 2 --points 150000 --batch-size 4 --memory-10x      # peak memory at 1x and 10x scenes

Reported: `pipeline_fps` = frames written per second from the job's start (Ray start included) to its end, every
teacher having fused every frame; `startup_s`, the fixed cost, and its share of the run: the run's seconds outside
the stage of the teacher that finished last (`before_stages_s`: Ray's start, planning) plus that stage's seconds
before its actor began the work of its first result (model loads, scheduling; the first group's own compute, up to
`--frames-per-task` frames, is work, not start-up); each teacher's first result's arrival (`first_output_s`) and
its slowest actor's construction (`actor_load_s`: imports, checkpoint reads, moving the model to the device);
each teacher's model-only frames/s (teacher.encode on frames already on the device, same options and weights) and
the pipeline's ratio to the slower one; the GPU-busy fraction over the run (NVML utilisation sampled every 0.2 s);
peak PSS of the driver and Ray's processes. Random SAM weights keep no masks at SAM's thresholds, so `sam-clip` runs
at a calibrated IoU threshold and `max_masks` (`--masks`, see benchmarks/sam_clip.py). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
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


class GpuBusy(Sampler):
    """The mean NVML utilisation of the current GPU (fraction of time a kernel was running) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(torch.cuda.utilization() / 100)

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 3) if self.samples else None


def random_checkpoint(arch: str, path: str) -> str:
    """A real-size open_clip architecture with random weights, saved as safetensors (the real loading path)."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def teacher_specs(args, work: str) -> list[dict]:
    """The teachers' spec dicts (ExtractConfig.teachers) with random real-size checkpoints, or tiny models."""
    tiny = args.arch == "tiny"
    clip = None if tiny else random_checkpoint(args.arch, f"{work}/clip.safetensors")
    specs = []
    for name in args.teachers.split(","):
        options = {} if tiny else {"arch": args.arch}
        if name == "sam-clip" and not tiny:
            from segment_anything import sam_model_registry

            from sas_ray.models.weights import write_checkpoint

            with torch.device(args.device):
                write_checkpoint(sam_model_registry[args.sam_arch](checkpoint=None).state_dict(),
                                 f"{work}/sam.safetensors")
            options.update(sam_weights=f"{work}/sam.safetensors", sam_arch=args.sam_arch)
        specs.append({"name": name, "weights": clip, "tiny": tiny, "gpus": args.gpus_per_actor,
                      "pool": [args.actors, args.actors], "batch_size": args.batch_size[name], "dtype": args.dtype,
                      "options": {**options, **args.teacher_options.get(name, {})}})
    return specs


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


def measure_models(args, specs: list[dict], images: torch.Tensor) -> dict:
    """Each teacher's model-only frames/s; a sam-clip spec gets its calibrated mask options written into it."""
    from benchmarks.sam_clip import calibrate, configure, shift_checkpoint

    rates = {}
    for spec in specs:
        teacher = build_teacher(spec["name"], spec["weights"], tiny=spec["tiny"], device=args.device,
                                dtype=getattr(torch, args.dtype), **spec["options"])
        if spec["name"] == "sam-clip":
            options = calibrate(teacher.masks, images[:spec["batch_size"]].to(args.device), args.candidates,
                                args.masks)
            configure(teacher.masks, options)
            if "sam_weights" in spec["options"]:  # the pipeline's actors load SAM from it: the same shift there
                shift_checkpoint(spec["options"]["sam_weights"], options["iou_shift"])
            spec["options"].update({k: options[k] for k in ("pred_iou_thresh", "stability_score_thresh",
                                                            "box_nms_thresh", "max_masks")})
        rates[spec["name"]] = model_only(teacher, images.to(args.device), spec["batch_size"],
                                         iters=max(4, 2 * len(images) // spec["batch_size"]))
        del teacher
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return rates


def pipeline(args, prepared: Storage, work: str, specs: list[dict], tag: str) -> dict:
    """One `run_extract` from a cold start (Ray started inside the timed region) to its last write."""
    import ray

    cfg = parse_config({"prepared": prepared.root_url, "output": f"{work}/out-{tag}", "teachers": specs,
                        "frames_per_task": args.frames_per_task, "progress": False}, ExtractConfig)
    frames = len(read_frame_index(prepared))
    ray.shutdown()  # the dataset's preparation started Ray: the timed job starts its own, as a user's does
    busy = GpuBusy() if args.device == "cuda" else contextlib.nullcontext()
    with PeakMemory() as memory, busy:
        start = time.perf_counter()
        reports = run_extract(cfg)
        seconds = time.perf_counter() - start
    ray.shutdown()
    for report in reports:
        assert report.failed == 0, report.summary()
    last = max(reports, key=lambda r: r.seconds)  # the teacher that sets the run's length
    startup = seconds - last.seconds + last.first_work_seconds
    return {"frames": frames, "seconds": round(seconds, 1), "pipeline_fps": round(frames / seconds, 2),
            "startup_s": round(startup, 1), "startup_share": round(startup / seconds, 3),
            "before_stages_s": round(seconds - last.seconds, 1),
            "first_output_s": {r.stage: round(r.first_output_seconds, 1) for r in reports},
            "actor_load_s": {r.stage: round(r.load_seconds, 1) for r in reports},
            "gpu_busy": getattr(busy, "mean", None), "peak_pss_gb": round(memory.peak / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teachers", default="openclip-dense,sam-clip", help="comma list (the SAS pair by default)")
    parser.add_argument("--arch", default="ViT-L-14", help="open_clip arch with random weights ('tiny' = tiny models)")
    parser.add_argument("--sam-arch", default="vit_h")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100, help="frames per scene (ScanNet every 20th ~ 100)")
    parser.add_argument("--unique-views", type=int, default=12)
    parser.add_argument("--base-scenes", type=int, default=2)
    parser.add_argument("--points", type=int, default=150_000)
    parser.add_argument("--batch-size", type=json.loads, default={"openclip-dense": 16, "sam-clip": 8},
                        help='frames per forward per teacher, JSON, e.g. \'{"openclip-dense": 16}\'')
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 / number of teachers")
    parser.add_argument("--frames-per-task", type=int, default=64)
    parser.add_argument("--masks", type=int, default=100, help="sam-clip: masks kept per frame (max_masks)")
    parser.add_argument("--candidates", type=int, default=400, help="sam-clip: candidates passing the IoU filter")
    parser.add_argument("--reference-frames", type=int, default=0, help="also time OpenScene's sequential loop "
                        "(first teacher) on this many frames")
    parser.add_argument("--memory-10x", action="store_true", help="also run 10x the scenes: peak memory ratio")
    parser.add_argument("--teacher-options", type=json.loads, default={},
                        help='JSON options per teacher, e.g. \'{"openclip-dense": {"compile_mode": "default"}}\'')
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    names = args.teachers.split(",")
    if isinstance(args.batch_size, int):
        args.batch_size = dict.fromkeys(names, args.batch_size)
    args.batch_size = {n: args.batch_size.get(n, 8) for n in names}
    if args.gpus_per_actor is None:
        args.gpus_per_actor = 1.0 / len(names)
    if args.device == "cpu":
        args.gpus_per_actor = 0.0
        args.dtype = "float32"

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        base = build_dataset(work, args.base_scenes, args.unique_views, args.points)
        render_s = time.perf_counter() - t0
        one_x = Storage(f"{work}/x1")
        replicate(base, one_x, args.scenes, args.frames)
        specs = teacher_specs(args, work)
        rows = read_frame_index(one_x).to_pylist()
        images = torch.stack([torch.from_numpy(read_frame(r).rgb) for r in rows[:32]])
        rates = measure_models(args, specs, images)
        slower = min(rates, key=rates.get)
        result = {"benchmark": "extract", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "teachers": {s["name"]: {k: s[k] for k in ("batch_size", "gpus", "options")} for s in specs},
                  "arch": args.arch, "dtype": args.dtype, "scenes": args.scenes, "frames_per_scene": args.frames,
                  "points": read_scene(one_x, rows[0]["scene"]).num_points, "image": "320x240",
                  "model_only_fps": {k: round(v, 2) for k, v in rates.items()}, "render_seconds": round(render_s, 1)}
        if args.reference_frames:
            result["reference_fps"] = reference_rate(args, specs[0], one_x, rows)
        run = pipeline(args, one_x, work, specs, "x1")
        result.update(run)
        result["pipeline_vs_slower_model"] = round(run["pipeline_fps"] / rates[slower], 3)
        result["slower_teacher"] = slower
        if args.memory_10x:
            ten_x = Storage(f"{work}/x10")
            replicate(base, ten_x, args.scenes * 10, args.frames)
            run10 = pipeline(args, ten_x, work, specs, "x10")
            result.update({"pipeline_fps_10x": run10["pipeline_fps"], "peak_pss_gb_10x": run10["peak_pss_gb"],
                           "peak_pss_ratio_10x_vs_1x": round(run10["peak_pss_gb"] / run["peak_pss_gb"], 3)})
    emit(result, args.out, append=False)


def reference_rate(args, spec: dict, prepared: Storage, rows: list[dict]) -> float:
    """frames/s of OpenScene's sequential fusion loop with the first teacher on one scene's frames."""
    teacher = build_teacher(spec["name"], spec["weights"], tiny=spec["tiny"], device=args.device,
                            dtype=getattr(torch, args.dtype), **spec["options"])
    scene_id = rows[0]["scene"]
    frames = [read_frame(r) for r in rows if r["scene"] == scene_id][:args.reference_frames]
    start = time.perf_counter()
    reference_fusion(teacher, read_scene(prepared, scene_id), frames, cut_bound=10, vis_thres=0.25)
    return round(len(frames) / (time.perf_counter() - start), 2)


if __name__ == "__main__":
    main()
