"""`sas-ray distill` when a Ray Train worker dies: rank 1 exits abruptly after optimizer step 5 ($SAS_RAY_FAULT),
Ray Train restarts the worker group from the last checkpoint it collected (step 4, or step 2 when the worker died
before the controller's next poll collected step 4), and the run ends exactly where a run without the fault ends:
the same loss at every step, the same learning rate, the same model, bit for bit (CPU training is deterministic, and
every random draw is a function of (seed, rank, step), not of when a worker started).

Stage 1 only (stage 2's EMA history lives outside the checkpoint, see docs/reliability.md). 4 scenes, 2 workers,
batch 1: 2 steps an epoch, 3 epochs, a checkpoint every 2 steps. The clean run uses the tests' Ray session; the
faulty one is `sas-ray distill` in a subprocess whose local Ray passes the fault variable to its workers; its config
names its folders relative to the driver's working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))  # tests/jobs/distill_data.py
from distill_data import write_dataset  # noqa: E402

from jobs.distill import run_distill  # noqa: E402
from sas_ray.config import DistillConfig, parse_config  # noqa: E402
from sas_ray.faults import ENV  # noqa: E402

CLI = os.path.join(os.path.dirname(sys.executable), "sas-ray")
SETTINGS = {"voxel_size": 0.05, "stage1": {"epochs": 3}, "stage2": {"epochs": 0}, "loop": 1, "batch_size": 1,
            "num_workers": [2, 2], "backend": "torch", "base_lr": 1e-3, "lr_reference_batch": 2,
            "checkpoint_every": 2, "max_failures": 2, "progress": False}


def test_worker_killed_mid_run_resumes_to_the_same_model(ray_session, tmp_path):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    for root in (clean, faulty):
        write_dataset(_storage(root), num_scenes=4)
    report = run_distill(parse_config({**SETTINGS, "prepared": str(clean), "output": str(clean)}, DistillConfig))
    assert report.outputs["stage1 steps"] == "6", report.summary()

    marker = tmp_path / "rank1-died"
    config = tmp_path / "faulty.yaml"
    # relative paths, as a user types them: Ray Train workers run in another working directory than the driver
    config.write_text(json.dumps({**SETTINGS, "prepared": "faulty", "output": "faulty"}))
    driver = subprocess.run([CLI, "distill", "--config", str(config)], capture_output=True, text=True, timeout=400,
                            cwd=tmp_path,
                            env={**os.environ, ENV: f"distill-rank1:5:{marker}",
                                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})  # collect each report promptly
    assert driver.returncode == 0, (driver.stdout + driver.stderr)[-3000:]
    assert marker.exists(), "the fault never fired"
    assert "stage1 steps: 6" in driver.stdout

    curves = [json.loads((root / "distill/stage1/losses.json").read_text()) for root in (clean, faulty)]
    assert curves[0]["resumed_at"] == [] and curves[1]["resumed_at"] in ([2], [4])  # restored, not from scratch
    assert curves[1]["steps"] == list(range(1, 7))  # the step counter continued from the checkpoint, once each
    assert curves[1]["loss"] == curves[0]["loss"]  # same batches, same learning rate at every step
    models = [load_file(root / "distill/stage1/model.safetensors") for root in (clean, faulty)]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    states = [torch.load(_last_checkpoint(root) / "state.pt", weights_only=True) for root in (clean, faulty)]
    assert [g["lr"] for g in states[1]["optimizer"]["param_groups"]] == \
        [g["lr"] for g in states[0]["optimizer"]["param_groups"]]
    assert states[1]["consumed"] == states[0]["consumed"] == 12


def _storage(root: Path):
    from sas_ray.storage import Storage

    return Storage(str(root))


def _last_checkpoint(root: Path) -> Path:
    folders = sorted(p for p in (root / "distill/train/stage1").glob("checkpoint_*") if p.is_dir())
    assert folders, f"no Ray Train checkpoint under {root}"
    return folders[-1]
