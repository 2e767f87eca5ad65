"""Where the time goes, stage by stage: each product stage's real code path under torch.profiler after warm-up, its
device time split into kernel categories, the device-idle share and the top kernels (issue #12, item 6).

  python -m benchmarks.profile_stages --device cuda --out docs/perf/profile-stages.jsonl \
      --markdown docs/perf/profile-stages.md [--stages sam,sd] [--traces /tmp/traces]
  python -m benchmarks.profile_stages --device cpu --tiny                 # checks the script (numbers meaningless)
  python -m benchmarks.profile_stages --render docs/perf/profile-stages.jsonl --markdown docs/perf/profile-stages.md

Stages (real sizes, random weights through the real loading paths; --tiny: toy sizes of the same code):
- sam: SAM ViT-H image encoder as `FastImageEncoder` (rel-pos folded, torch.compile "default" as in
  gpu_fast_suite.sh; --sam-compile eager turns it off), 8 x 1024² images (benchmarks.sam_fast.EncoderBench).
- openclip: the openclip-dense ViT-L-14 teacher's `encode` on 8 frames 240x320 already on the device, the teacher
  built by the extraction actor from a random checkpoint file (its CUDA defaults).
- sd: `DiffusionGenerator.generate` (SD1.5 shapes, PNDM, capture, coarse masks) on its CUDA default fast path:
  fused QKV + SDPA + capture beside it, channels-last, compile "reduce-overhead" (compiled on a 2-step call first,
  as benchmarks.sd_fast), --sd-steps steps (SAS: 50), 4 prompts, 512 px.
- fusion: one frame's fusion arithmetic as `multiview.fuse_views` runs it per batch: `project_points` with the depth
  test, then `FeatureAccumulator.add`, on ~200k points of a synthetic room and a 240x320x768 feature map already on
  the device (the map's dtype is the teacher's).
- extract: `TeacherFusionActor.__call__` on one group of --group-frames decoded frames (what the Ray actor gets per
  batch, here without Ray): H2D, teacher encode, projection, accumulation, the partial's fp16 D2H.
- distill: one stage-1 step (forward, loss, backward, Adam; fp16 autocast + loss scaling on CUDA) of MinkUNet18A on
  the spconv backend, batch 8 x 150k points (benchmarks.distill.synthetic_scene).

Per stage: build (setup_s), warm-up calls (warmup_s, compilation included), the wall time of a few calls without the
profiler, then a few calls under torch.profiler (CPU + CUDA). Device activities (kernels, memcpy, memset) are summed per
`kernel_category`; busy = the union of their intervals; idle share = 1 - busy / unprofiled wall. On the CPU, ops'
self CPU times stand in for kernels (time outside any op counts as idle). One JSON line per stage (`error` instead
when it failed; the other stages still run); --markdown writes one table per stage; --traces DIR a chrome trace each.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

STARTED = time.perf_counter()  # progress lines count from here, the heavy imports included

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sas_ray.models  # noqa: E402,F401  (the CPU torchvision shim, the teacher registry)
from benchmarks import emit  # noqa: E402
from benchmarks.models import DTYPES, _sync, _timed  # noqa: E402

CATEGORIES = ("GEMM/matmul", "attention", "convolution", "normalisation", "elementwise/activation",
              "reduction/scatter/index", "memcpy", "other")
_NORM = r"layer_?norm|group_?norm|batch_?norm|rms_?norm|instance_?norm|\bbn_(fw|bw)|rowwisemoments|computefusedparams"
# (category, pattern) on the lower-cased kernel or op name, first match wins: memcpy/memset by CUPTI's names;
# Inductor's kernels by their prefix (triton_poi_fused_convolution_* is the pointwise epilogue of a convolution, not
# one); fused attention before GEMM (mem-efficient attention is a CUTLASS kernel); convolution before GEMM (cuDNN's
# implicit-GEMM fprop/dgrad/wgrad kernels, spconv's cumm::conv); CPU runs name aten ops (aten::addmm, ...).
_RULES = tuple((category, re.compile(pattern)) for category, pattern in (
    ("memcpy", r"^memcpy"),
    ("other", r"^memset"),
    ("normalisation", rf"^triton_\w*(?:{_NORM})"),
    ("elementwise/activation", r"^triton_poi"),
    ("reduction/scatter/index", r"^triton_(?:red|per)"),
    ("GEMM/matmul", r"^triton_(?:tem|mm)"),
    ("attention", r"flash|fmha|attention|attn|sdpa"),
    ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad|winograd|im2col|col2im|nchwtonhwc|nhwctonchw"),
    ("reduction/scatter/index", r"gather|scatter"),  # before GEMM: cumm::gemm::gather (spconv's native algorithm)
    ("GEMM/matmul", r"gemm|gemv|matmul|cutlass|cublas|nvjet|xmma|splitkreduce|addmm|\bmm\b|\bbmm\b|baddbmm|einsum"
                    r"|\blinear\b|\bdot\b"),
    ("normalisation", _NORM),
    ("reduction/scatter/index", r"reduce|softmax|aten::(?:sum|mean|amax|amin|max|min|prod|var|std|any|all)\b|argmax"
                                r"|argmin|vector_norm|\bnorm\b|topk|sort|scan|nonzero|unique|index|gather|scatter"
                                r"|embedding|bincount|histc|cumsum|masked_select|segment|cub::"),
    ("elementwise/activation", r"elementwise|vectorized|unrolled|pointwise|multi_tensor|foreach|copy|fill"
                               r"|\bzero_|\bcat\b|catarray|\bstack\b|gelu|silu|relu|sigmoid|tanh|softplus|clamp"
                               r"|\bwhere\b|round|floor|ceil|\babs\b|\bneg\b|\bexp\b|\blog\b|sqrt|\bpow\b"
                               r"|\b(?:add|sub|mul|div)_?\b|maximum|minimum|flip|upsample|grid_sampler"
                               r"|\b(?:eq|ne|lt|le|gt|ge)\b|bitwise|logical|masked_fill|arange|normal_|uniform_"
                               r"|random_|randn|\brand\b|lerp|addc(?:mul|div)|\bsign\b|remainder|\berf\b|\bcos\b"
                               r"|\bsin\b|repeat|\bto\b|clone|contiguous|roll|pad"),
))


def kernel_category(name: str) -> str:
    """The `CATEGORIES` entry of a CUDA kernel / memcpy name (as CUPTI reports it) or of a CPU aten op name."""
    lowered = name.lower()
    for category, pattern in _RULES:
        if pattern.search(lowered):
            return category
    return "other"


@dataclass(frozen=True)
class Activity:
    """One span of device work (a kernel, memcpy or memset; on the CPU an op's self time): name, start, length (µs)."""

    name: str
    start_us: float
    duration_us: float


def device_activities(events, device: torch.device) -> list[Activity]:
    """The profiled activity that counts as the device working: CUDA kernels, memcpys and memsets (GPU-side user
    annotations excluded: they span kernels already counted); on the CPU, every aten op with its self CPU time.

    Events carry `activity_type` from torch 2.13 on; before it (the GPU image's 2.11) the device type and the
    user-annotation flag say the same."""
    def kind(e) -> str | None:
        known = getattr(e, "activity_type", None)
        if known is not None or getattr(e, "is_user_annotation", False):
            return known
        return "device" if e.device_type == DeviceType.CUDA else "cpu_op"

    if device.type == "cuda":
        return [Activity(e.name, e.time_range.start, e.time_range.elapsed_us()) for e in events
                if kind(e) in ("kernel", "gpu_memcpy", "gpu_memset", "device")]
    return [Activity(e.name, e.time_range.start, e.self_cpu_time_total) for e in events
            if kind(e) == "cpu_op" and not e.is_async]


def interval_union_us(activities: list[Activity]) -> float:
    """Total length of the union of the activities' [start, start + duration) intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for a in sorted(activities, key=lambda a: a.start_us):
        stop = a.start_us + a.duration_us
        if stop > end:
            total += stop - max(a.start_us, end)
            end = stop
    return total


def summarize(activities: list[Activity], busy_us: float, calls: int, units_per_call: int, wall_s_per_call: float,
              top: int = 8) -> dict:
    """Per-unit numbers of `calls` profiled calls of `units_per_call` units each: device time per category (share of
    the summed device time), memcpy by direction, the `top` names by device time, and busy/idle against the
    (unprofiled) wall time per call. `busy_us`: the device's busy time over all calls (the union of intervals)."""
    units = calls * units_per_call
    total = sum(a.duration_us for a in activities)
    by_category = dict.fromkeys(CATEGORIES, 0.0)
    by_name: dict[str, list[float]] = {}
    memcpy: dict[str, float] = {}
    for a in activities:
        category = kernel_category(a.name)
        by_category[category] += a.duration_us
        entry = by_name.setdefault(a.name, [0, 0.0])
        entry[0] += 1
        entry[1] += a.duration_us
        if category == "memcpy":
            direction = a.name.split()[1] if len(a.name.split()) > 1 else a.name
            memcpy[direction] = memcpy.get(direction, 0.0) + a.duration_us / 1000 / units
    wall_ms = 1000 * wall_s_per_call / units_per_call
    busy_ms = busy_us / 1000 / units
    ranked = sorted(by_name.items(), key=lambda item: -item[1][1])[:top]
    return {
        "wall_ms_per_unit": wall_ms, "device_ms_per_unit": total / 1000 / units, "busy_ms_per_unit": busy_ms,
        "busy_share_of_wall": busy_ms / wall_ms if wall_ms else 0.0,
        "idle_share": max(0.0, 1.0 - busy_ms / wall_ms) if wall_ms else 0.0,
        "categories": {c: {"ms_per_unit": t / 1000 / units, "share": t / total if total else 0.0}
                       for c, t in by_category.items()},
        "memcpy_ms_per_unit": memcpy,
        "top": [{"name": name[:300], "category": kernel_category(name), "calls_per_unit": count / units,
                 "ms_per_unit": t / 1000 / units, "share": t / total if total else 0.0}
                for name, (count, t) in ranked],
    }


@dataclass
class StageRun:
    """One stage ready to profile: `call()` does one unit of its work (`units` of `unit`); `prepare()` (optional) runs
    once before the warm-up calls (e.g. a short compiling call)."""

    call: Callable[[], object]
    units: int
    unit: str
    workload: str
    note: str = ""
    prepare: Callable[[], object] | None = None
    warmup_calls: int = 2
    timed_calls: int = 3
    profiled_calls: int = 2


def profile_stage(run: StageRun, device: torch.device, trace: str | None) -> dict:
    """Warm up, time without the profiler, then profile `run` and summarise where its time goes."""
    start = time.perf_counter()
    if run.prepare is not None:
        run.prepare()
    for _ in range(run.warmup_calls):
        run.call()
    _sync(device)
    warmup_s = time.perf_counter() - start
    wall_s = _timed(run.call, device, run.timed_calls, warmup=0)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(run.profiled_calls):
            run.call()
        _sync(device)
        profiled_s = (time.perf_counter() - start) / run.profiled_calls
    spans = device_activities(prof.events(), device)
    busy_us = interval_union_us(spans) if device.type == "cuda" else sum(a.duration_us for a in spans)
    if trace:
        prof.export_chrome_trace(trace)
    return {"workload": run.workload, "unit": run.unit, "units_per_call": run.units,
            "device_time": "CUDA kernels + memcpy/memset" if device.type == "cuda" else "CPU op self time",
            "warmup_s": warmup_s, "warmup_calls": run.warmup_calls, "timed_calls": run.timed_calls,
            "profiled_calls": run.profiled_calls, "wall_ms_per_call": 1000 * wall_s,
            "profiled_wall_ms_per_call": 1000 * profiled_s,
            **summarize(spans, busy_us, run.profiled_calls, run.units, wall_s), "note": run.note, "trace": trace}


class Workload:
    """Settings and the inputs, models and actor shared by the stages of one run (built on first use)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, scratch: str):
        self.args, self.device, self.scratch, self.tiny = args, device, scratch, args.tiny
        self.dtype_name = args.dtype if device.type == "cuda" else "float32"  # CPU runs float32, as the actors do
        self.dtype = DTYPES[self.dtype_name]
        self.image_size = (32, 48) if self.tiny else (240, 320)

    @cached_property
    def visibility(self):
        from sas_ray.config import PRESETS
        from sas_ray.multiview import Visibility

        preset = PRESETS["scannet"]
        return Visibility(cut_bound=preset.cut_bound, vis_thres=preset.vis_thres)

    @cached_property
    def room(self):
        """(Scene, rendered RGB-D frames) of a synthetic ScanNet-size room (~200k points, 8 views)."""
        from sas_ray.datasets.synthetic import make_indoor_frames, make_indoor_scene

        scene, room = make_indoor_scene("scene0000_00", seed=0, num_points_target=4000 if self.tiny else 200_000)
        frames, _ = make_indoor_frames(scene, room, 2 if self.tiny else 8, size=self.image_size)
        return scene, frames

    @cached_property
    def actor(self):
        """The extraction actor (no Ray) over a prepared copy of the room in memory://, its openclip-dense teacher
        loaded from a random checkpoint file of --clip-arch (tiny: the tiny random teacher)."""
        from actors.extraction import TeacherFusionActor
        from sas_ray.prepared import SCENES, encode_scene, scene_file
        from sas_ray.storage import Storage

        scene, _ = self.room
        prepared = Storage(f"memory://profile-stages/{os.getpid()}/prepared")
        prepared.write_tensors(f"{SCENES}/{scene_file(scene.scene_id)}", *encode_scene(scene, []))
        weights, options = None, {}
        if not self.tiny:
            from benchmarks.extract import random_checkpoint  # imports ray: only when needed

            weights = random_checkpoint(self.args.clip_arch, os.path.join(self.scratch, "clip.safetensors"))
            options["arch"] = self.args.clip_arch
        if self.args.clip_compile:
            options["compile_mode"] = self.args.clip_compile
        spec = {"name": "openclip-dense", "weights": weights, "tiny": self.tiny, "dtype": self.dtype_name,
                "batch_size": 2 if self.tiny else 8, "options": options}
        actor = TeacherFusionActor(spec, prepared.root_url, {}, vars(self.visibility), labelled_only=False)
        if actor.device.type != self.device.type:
            raise RuntimeError(f"the extraction actor picks {actor.device} itself (CUDA when available); "
                               f"asked for --device {self.device}")
        return actor


def stage_sam(work: Workload) -> StageRun:
    from benchmarks.sam_fast import EncoderBench
    from sas_ray.models.sam_fast import FastImageEncoder

    batch = 2 if work.tiny else 8
    mode = work.args.sam_compile or ("default" if work.device.type == "cuda" else "eager")
    bench = EncoderBench(work.device, work.dtype_name, work.tiny, batch, iters=0, warmup=0)
    encoder = FastImageEncoder(bench.vit, dtype=work.dtype, rel_pos="fold")  # the weights, cast in place
    if mode != "eager":
        torch._dynamo.reset()
        encoder.compile(mode=mode)

    def call():
        with torch.inference_mode():
            return encoder(bench.images)

    size = bench.vit.img_size
    return StageRun(call, batch, "image",
                    f"SAM {'tiny' if work.tiny else 'ViT-H'} image encoder, FastImageEncoder rel_pos=fold, compile "
                    f"{mode}, {work.dtype_name}, {batch} x 3 x {size} x {size}",
                    note="SamRefiner's own default on CUDA is this path uncompiled (docs/perf); compiled as in "
                         "gpu_fast_suite.sh sam-compiled", warmup_calls=2, timed_calls=5, profiled_calls=3)


def stage_openclip(work: Workload) -> StageRun:
    teacher = work.actor.teacher
    batch = 2 if work.tiny else 8
    frames = torch.randint(0, 256, (batch, *work.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(work.device)
    arch = "tiny" if work.tiny else work.args.clip_arch
    return StageRun(lambda: teacher.encode(frames), batch, "frame",
                    f"openclip-dense {arch} encode, {work.dtype_name}, {batch} frames {work.image_size[0]}x"
                    f"{work.image_size[1]} uint8 on the device (flip TTA, 2x upscale)",
                    note="the teacher as the extraction actor builds it (its device defaults"
                         f"{', compile ' + work.args.clip_compile if work.args.clip_compile else ''})",
                    warmup_calls=3, timed_calls=5, profiled_calls=3)


def stage_sd(work: Workload) -> StageRun:
    from benchmarks.sd_fast import GenerationBench

    steps = 2 if work.tiny else work.args.sd_steps
    batch = 2 if work.tiny else 4
    bench = GenerationBench(work.device, work.dtype_name, work.tiny, batch, steps, iters=0, warmup=0)
    options = {"fast": True} if work.args.sd_compile is None else {"fast": True, "compile_mode": work.args.sd_compile}
    generator = bench.generator(**options)
    mode = work.args.sd_compile or ("reduce-overhead" if work.device.type == "cuda" else "eager")

    def compile_call():  # benchmarks.sd_fast's recipe: compile on a short call with the timed calls' shapes
        generator.steps = 2
        generator.generate(bench.names, bench.seeds)
        generator.steps = steps

    return StageRun(lambda: generator.generate(bench.names, bench.seeds), batch, "image",
                    f"{'tiny SD' if work.tiny else 'SD1.5'} generate with capture + coarse masks, fast path "
                    f"(fused QKV, SDPA, capture beside it), {'channels-last, ' if work.device.type == 'cuda' else ''}"
                    f"compile {mode}, {work.dtype_name}, {batch} prompts, "
                    f"{generator.image_size} px, {steps} PNDM steps, CFG",
                    note=f"{steps} steps, not SAS's 50: text encoding, VAE decode and the masks weigh more per image "
                         "here than at 50 steps", prepare=compile_call if mode != "eager" else None,
                    warmup_calls=1, timed_calls=2, profiled_calls=1)


def stage_fusion(work: Workload) -> StageRun:
    from sas_ray.geometry.accumulator import FeatureAccumulator
    from sas_ray.geometry.projection import project_points

    scene, frames = work.room
    frame = frames[0]
    dim = 16 if work.tiny else 768
    device, size, vis = work.device, work.image_size, work.visibility
    points = torch.from_numpy(scene.points).to(device)
    depth = torch.from_numpy(frame.depth[None]).to(device)
    pose, intrinsic = frame.pose[None], frame.intrinsic[None]
    torch.manual_seed(0)
    features = torch.randn(1, *size, dim, device=device, dtype=work.dtype)  # [B, H, W, C] as a teacher returns
    accumulator = FeatureAccumulator(len(points), dim, device=device)

    def call():  # the body of multiview.fuse_views' loop for one frame, after teacher.encode
        rows, cols, valid = project_points(points, pose, intrinsic, size, cut_bound=vis.cut_bound, depth=depth,
                                           visibility_threshold=vis.vis_thres)
        accumulator.add(features, rows, cols, valid, size)

    return StageRun(call, 1, "frame",
                    f"project_points (depth test) + FeatureAccumulator.add, {len(points)} points, "
                    f"{size[0]}x{size[1]}x{dim} {work.dtype_name} features, 1 frame",
                    note="depth and feature map already on the device (their H2D is in the extract stage)",
                    warmup_calls=3, timed_calls=20, profiled_calls=10)


def stage_extract(work: Workload) -> StageRun:
    actor = work.actor
    scene, frames = work.room
    group = 4 if work.tiny else work.args.group_frames
    views = [frames[i % len(frames)] for i in range(group)]
    row = {"scene": [scene.scene_id], "group": [0], "num_groups": [1], "num_frames": [group], "error": [""],
           "rgb": [np.stack([f.rgb for f in views])], "depth": [np.stack([f.depth for f in views])],
           "intrinsic": [np.stack([f.intrinsic for f in views])], "pose": [np.stack([f.pose for f in views])]}
    batch = {k: np.array(v) for k, v in row.items()}  # Ray Data's numpy batch of one row (batch_size=1)

    def call():
        out = actor(batch)
        if out["error"][0]:
            raise RuntimeError(out["error"][0])
        return out

    return StageRun(call, group, "frame",
                    f"TeacherFusionActor on one group of {group} decoded frames {work.image_size[0]}x"
                    f"{work.image_size[1]} (teacher batch {actor.batch_size}, {work.dtype_name}), "
                    f"{scene.num_points} points: H2D, encode, projection, accumulation, partial D2H (fp16)",
                    note=f"{len(frames)} rendered views cycled; what the Ray actor does per batch, without Ray",
                    warmup_calls=1, timed_calls=2, profiled_calls=1)


def stage_distill(work: Workload) -> StageRun:
    from benchmarks.distill import synthetic_scene
    from sas_ray.distill.backends import get_backend
    from sas_ray.distill.batch import collate, voxelize_scene
    from sas_ray.distill.losses import SUPERVISION_LIMIT
    from sas_ray.distill.minkunet import MinkUNet18A
    from sas_ray.distill.steps import optimizer_step, stage1_step

    device = work.device
    points, scenes_per_batch, dim = (800, 2, 16) if work.tiny else (150_000, 8, 512)
    backend = get_backend(work.args.distill_backend)
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(points, dim, rng, i) for i in range(scenes_per_batch)]
    augmentation = torch.Generator().manual_seed(0)  # the loader's augmentation draws
    batches = [collate([voxelize_scene(s, 0.02, augmentation, train=True) for s in scenes], augmentation)
               for _ in range(3)]
    torch.manual_seed(0)
    model = MinkUNet18A(3, dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    generator = torch.Generator().manual_seed(0)
    cycle = itertools.cycle(batches)

    def call():
        loss, _ = stage1_step(model, backend, next(cycle), device, generator, SUPERVISION_LIMIT, amp)
        optimizer_step(optimizer, scaler, loss)

    return StageRun(call, 1, "step",
                    f"stage-1 step of MinkUNet18A ({backend.name}), {scenes_per_batch} x {points} points "
                    f"(~{int(batches[0].coords.shape[0])} voxels), {dim}-d targets, "
                    f"{'fp16 autocast + GradScaler' if amp else 'float32'}, Adam",
                    note="3 voxelized batches cycled (each seen once in the warm-up: spconv tunes per shape)",
                    **(dict(warmup_calls=1, timed_calls=1, profiled_calls=1) if work.tiny
                       else dict(warmup_calls=3, timed_calls=3, profiled_calls=3)))


STAGES = {"sam": stage_sam, "openclip": stage_openclip, "sd": stage_sd, "fusion": stage_fusion,
          "extract": stage_extract, "distill": stage_distill}


def render_markdown(records: list[dict]) -> str:
    """One section per stage: heading, wall/busy/idle line, a category table and a top-kernel table."""
    parts = ["# Where the time goes, per stage (benchmarks/profile_stages.py)\n"]
    for rec in records:
        parts.append(f"## {rec['stage']}\n")
        if "error" in rec:
            parts.append(f"Failed: `{rec['error'][:500]}`\n")
            continue
        unit, device_time = rec["unit"], rec["device_time"]
        parts.append(f"{rec['workload']}. {rec.get('device', '')}, torch {rec.get('torch', '')}"
                     f"{', tiny' if rec.get('tiny') else ''}.\n\n"
                     f"Wall {rec['wall_ms_per_call']:.2f} ms per call = **{rec['wall_ms_per_unit']:.3f} ms per "
                     f"{unit}** (under the profiler: {rec['profiled_wall_ms_per_call']:.2f} ms per call); busy "
                     f"{rec['busy_ms_per_unit']:.3f} ms per {unit} ({100 * rec['busy_share_of_wall']:.1f}% of wall), "
                     f"**idle {100 * rec['idle_share']:.1f}%**. Setup {rec['setup_s']:.1f} s, warm-up "
                     f"{rec['warmup_s']:.1f} s ({rec['warmup_calls']} calls, compilation included). Device time = "
                     f"{device_time}.\n")
        parts.append(f"| where the time goes | ms / {unit} | % of device time | % of wall |\n|---|---:|---:|---:|")
        wall = rec["wall_ms_per_unit"] or float("nan")
        for category, entry in rec["categories"].items():
            parts.append(f"| {category} | {entry['ms_per_unit']:.3f} | {100 * entry['share']:.1f} | "
                         f"{100 * entry['ms_per_unit'] / wall:.1f} |")
        idle_ms = rec["idle_share"] * rec["wall_ms_per_unit"]
        parts.append(f"| idle (wall - busy) | {idle_ms:.3f} | | {100 * rec['idle_share']:.1f} |\n")
        if rec["memcpy_ms_per_unit"]:
            parts.append("memcpy by direction (ms / " + unit + "): " + ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(rec["memcpy_ms_per_unit"].items())) + "\n")
        parts.append(f"| top kernels / ops by device time | category | calls / {unit} | ms / {unit} | % of device "
                     f"time |\n|---|---|---:|---:|---:|")
        for entry in rec["top"]:
            parts.append(f"| `{_short_name(entry['name'])}` | {entry['category']} | {entry['calls_per_unit']:.2f} | "
                         f"{entry['ms_per_unit']:.3f} | {100 * entry['share']:.1f} |")
        if rec.get("note"):
            parts.append(f"\nNote: {rec['note']}.")
        parts.append("")
    return "\n".join(parts)


def _short_name(name: str, limit: int = 110) -> str:
    """A kernel name short enough for a table: no `void `, no argument list, at most `limit` characters."""
    name = name.removeprefix("void ")
    depth = 0
    for i, char in enumerate(name):  # cut the argument list: the first '(' outside template brackets
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "(" and depth == 0 and i > 0:
            name = name[:i]
            break
    name = name if len(name) <= limit else name[:limit - 3] + "..."
    return name.replace("|", "\\|").replace("`", "'")


def read_records(path: str) -> list[dict]:
    """The last profile record of each stage in a JSON-lines file, in stage order."""
    latest: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("bench") == "profile":
                    latest[rec["stage"]] = rec
    return [latest[s] for s in STAGES if s in latest]


def _log(message: str) -> None:
    print(f"[profile_stages {time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def run_stages(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    names = [s for s in args.stages.split(",") if s]
    if args.traces:
        os.makedirs(args.traces, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Workload(args, device, scratch)
        for name in names:
            _log(f"{name}: building")
            record = {"bench": "profile", "stage": name}
            try:
                t0 = time.perf_counter()
                run = STAGES[name](work)
                setup_s = time.perf_counter() - t0
                _log(f"{name}: built in {setup_s:.1f} s; warm-up, timing, profiling")
                trace = os.path.join(args.traces, f"{name}.json.gz") if args.traces else None
                record.update(setup_s=setup_s, **profile_stage(run, device, trace))
                shares = sorted(record["categories"].items(), key=lambda item: -item[1]["share"])[:3]
                _log(f"{name}: {record['wall_ms_per_unit']:.3f} ms per {record['unit']}, idle "
                     f"{100 * record['idle_share']:.1f}%; " + ", ".join(
                         f"{c} {100 * e['share']:.0f}%" for c, e in shares) + " of device time")
            except Exception as err:  # noqa: BLE001 - recorded in the stage's line; the other stages still run
                traceback.print_exc(file=sys.stderr)
                record["error"] = f"{type(err).__name__}: {err}"[:2000]
                _log(f"{name}: failed: {record['error'][:200]}")
            record.update(device=card, dtype=work.dtype_name, tiny=args.tiny, torch=torch.__version__,
                          stage_s=time.perf_counter() - t0)
            emit(record, args.out)
            records.append(record)
            run = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if args.markdown:  # rewritten after every stage: a timeout later keeps the tables so far
                _write(args.markdown, render_markdown(records))
    return records


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES), help="on CUDA (the CPU runs float32)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (checks the script, numbers meaningless)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    parser.add_argument("--out", help="JSON-lines file the stage records are appended to")
    parser.add_argument("--markdown", help="file the per-stage tables are written to")
    parser.add_argument("--traces", help="folder for one chrome trace per stage (<stage>.json.gz; off by default)")
    parser.add_argument("--render", metavar="JSONL", help="only write --markdown from the records in this file")
    parser.add_argument("--sam-compile", help="torch.compile mode of the SAM encoder (default: 'default' on CUDA, "
                                              "'eager' = uncompiled)")
    parser.add_argument("--sd-compile", help="DiffusionGenerator compile_mode (default: its own, 'reduce-overhead' "
                                             "on CUDA; 'eager' = uncompiled)")
    parser.add_argument("--sd-steps", type=int, default=10, help="PNDM steps per generate call (SAS: 50)")
    parser.add_argument("--clip-arch", default="ViT-L-14")
    parser.add_argument("--clip-compile", help="openclip-dense compile_mode option (default: the teacher's own)")
    parser.add_argument("--group-frames", type=int, default=64, help="frames per extraction group (frames_per_task)")
    parser.add_argument("--distill-backend", default="spconv")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.stages.split(",")) - set(STAGES) - {""})
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    if args.render:
        if not args.markdown:
            parser.error("--render needs --markdown")
        records = read_records(args.render)
        _write(args.markdown, render_markdown(records))
        return records
    return run_stages(args)


if __name__ == "__main__":
    main()
