"""What a geometry-only student can learn from the synthetic rooms: the study's oracle alone (jobs/study.py).

Runs the stage jobs the oracle needs (prepare -> superpoints -> ground-truth targets -> distill stage 1 -> predict ->
evaluate) on a study config's dataset and student (`--config`), resized by the flags, and prints one JSON line: the
oracle's mIoU, its per-class IoU, the classes at IoU >= jobs.study.LEARNABLE_IOU, the mean vertex spacing of the
rooms and the seconds of every stage. Frames are rendered at the tiny size (the oracle reads none of them). Without
resizing flags it is the study's own oracle row: the same rooms, and stage 1 stopped where the study's 3D rows stop
it (`until_stage: stage1` of the stage-1 + stage-2 schedule); `--steps` plans stage 1 alone (its rate decays to 0).

    PYTHONPATH=. python benchmarks/oracle.py --rooms 6 --points 20000 --voxel 0.2 --steps 200 --batch 2 --lr 0.01
    PYTHONPATH=. python benchmarks/oracle.py --config configs/study-gpu.yaml [--cpu]  # the GPU study's oracle row
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "study.yaml"),
                        help="the study config whose dataset and student it runs (flags below override)")
    parser.add_argument("--rooms", type=int, default=None, help="evaluated (and trained-on) rooms")
    parser.add_argument("--points", type=int, default=None, help="points_per_scene")
    parser.add_argument("--voxel", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (rounded to whole epochs)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="the dataset's")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--cpu", action="store_true", help="train and predict on the CPU whatever the config says "
                        "(the same steps: only the device differs)")
    parser.add_argument("--label", default="", help="free text stored with the result")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args()

    from jobs.runtime import ensure_ray
    from jobs.study import LEARNABLE_IOU, ORACLE, StudyConfig, _Study
    from sas_ray.config import parse_config
    from sas_ray.prepared import read_scene
    from sas_ray.storage import Storage

    data = yaml.safe_load(Path(args.config).read_text())
    work = tempfile.mkdtemp(prefix="oracle-")
    data.update(output=os.path.join(work, "study"), report=None, diffusion=None)
    dataset, distill = data["dataset"], data["distill"]
    dataset.update(frames_per_scene=1, size="tiny")
    if args.rooms is not None:
        data["calibration_scenes"] = 1
        dataset["num_scenes"] = args.rooms + 1
    given = {"points_per_scene": args.points, "seed": args.seed}
    dataset.update({k: v for k, v in given.items() if v is not None})
    given = {"voxel_size": args.voxel, "batch_size": args.batch, "lr_reference_batch": args.batch,
             "base_lr": args.lr}
    distill.update({k: v for k, v in given.items() if v is not None})
    if args.steps is not None:
        rooms = dataset["num_scenes"] - data["calibration_scenes"]
        epochs = max(1, round(args.steps * distill["batch_size"] / (rooms * distill.get("loop", 1))))
        distill.update(stage1={"epochs": epochs}, stage2={"epochs": 0})
    if args.cpu:
        distill["use_gpu"] = data.setdefault("predict", {})["use_gpu"] = False
    cfg = parse_config(data, StudyConfig)
    ensure_ray(None, num_cpus=None if cfg.distill.get("use_gpu") else 2)
    study = _Study(cfg, None)
    study.prepare()
    from jobs.superpoints import run_superpoints
    from sas_ray.config import SuperpointsConfig

    study.run("superpoints", run_superpoints, study.config(SuperpointsConfig, {
        **cfg.superpoints, "prepared": study.prepared, "output": study.root.url(), "scenes": study.evaluation},
        "superpoints"))
    study.oracle_targets()
    study.distill(study.root.child("oracle"), "oracle", with_stage2=False, features=ORACLE, superpoints=study.root)
    study.predict(study.root.child("oracle"), "stage1", ORACLE)
    result = study.evaluate(study.root.child("oracle"), ORACLE, "distill")
    spacing = []
    for scene_id in study.evaluation:
        scene = read_scene(Storage(study.prepared, study.options), scene_id)
        edges = scene.points[scene.faces[:, [0, 1]]] if scene.faces is not None else None
        if edges is not None:
            spacing.append(float(np.median(np.linalg.norm(edges[:, 0] - edges[:, 1], axis=1))))
    per_class = {k: (None if v is None else round(100 * v, 1)) for k, v in result["per_class_iou"].items()}
    emit({"benchmark": "oracle", "label": args.label, "config": Path(args.config).name,
          "device": "cuda" if distill.get("use_gpu") else "cpu",
          "rooms": len(study.evaluation), "points": dataset["points_per_scene"], "voxel": distill["voxel_size"],
          "batch": distill["batch_size"], "lr": distill["base_lr"], "steps": study.distill_steps,
          "median_edge_m": round(float(np.mean(spacing)), 3) if spacing else None,
          "miou": round(result["miou"], 1), "per_class_iou": per_class,
          "learnable": [k for k, v in result["per_class_iou"].items() if v is not None and v >= LEARNABLE_IOU],
          "seconds": {k: round(v, 1) for k, v in study.seconds.items()},
          "when": time.strftime("%Y-%m-%d %H:%M")}, args.out)


if __name__ == "__main__":
    main()
