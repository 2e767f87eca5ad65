"""Elastic `sas-ray distill` on a multi-node cluster (ray.cluster_utils.Cluster, CPU workers): `num_workers: [1, 2]`
starts with one worker node, so one worker; a node joins and Ray Train grows the group to 2 workers from the last
checkpoint (its autoscaling coordinator looks every 20 s); near the end the node hosting a worker is killed and the
group shrinks back to 1. The run ends after exactly its planned scenes, every step once in the loss curve, and
every step's learning rate is the poly schedule at the scenes consumed before it, scaled to that step's global
batch (it follows scenes seen, not the worker count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))  # tests/jobs/distill_data.py
from distill_data import write_dataset  # noqa: E402
from local_cluster import LocalCluster  # noqa: E402

from sas_ray.distill.steps import learning_rate  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402

CLI = os.path.join(os.path.dirname(sys.executable), "sas-ray")
WAIT = 150  # seconds for each phase
SETTINGS = {"voxel_size": 0.1, "stage1": {"epochs": 100}, "stage2": {"epochs": 0}, "loop": 1, "batch_size": 2,
            "num_workers": [1, 2], "resize_interval_s": 1, "backend": "torch", "base_lr": 1e-3,
            "lr_reference_batch": 2, "lr_x10_quirk": False, "checkpoint_every": 4, "max_failures": 3,
            "progress": False}
pytestmark = pytest.mark.timeout(600)


def test_workers_grow_when_a_node_joins_and_shrink_when_it_leaves(tmp_path):
    root = tmp_path / "run"
    scenes = write_dataset(Storage(str(root)), num_scenes=4, points=300)
    planned = SETTINGS["stage1"]["epochs"] * len(scenes)
    config = tmp_path / "distill.yaml"
    config.write_text(json.dumps({**SETTINGS, "prepared": str(root), "output": str(root)}))
    cluster, driver = LocalCluster(workers=1, cpus=1), None
    try:
        driver = subprocess.Popen([CLI, "distill", "--config", str(config), "--address", cluster.address],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "TQDM_DISABLE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})
        _wait_for(lambda: _latest(root)["step"] >= 4, driver, "a checkpoint on one worker")
        cluster.add_node()
        # shrink near the end (the last start then runs a few steps), once two workers have reported
        _wait_for(lambda: _latest(root)["workers"][-1][1] == 2 and _latest(root)["consumed"] >= planned - 24,
                  driver, "two workers near the end")
        assert cluster.remove_node_running("RayTrainWorker"), "no worker node hosts a Ray Train worker"
        output, _ = driver.communicate(timeout=WAIT * 2)
        assert driver.returncode == 0, output[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=30)
        cluster.close()

    curve = json.loads((root / "distill/stage1/losses.json").read_text())
    workers = [w for _, w in curve["workers"]]
    assert workers[:2] == [1, 2] and workers[-1] == 1, curve["workers"]  # grew, then shrank
    assert curve["consumed"] == planned  # the last start (2 scenes a step) consumes what is left
    assert curve["steps"] == list(range(1, len(curve["steps"]) + 1))  # each step once, in order
    consumed = 0
    for step, lr in zip(curve["steps"], curve["lr"]):
        size = 2 * next(w for first, w in reversed(curve["workers"]) if first < step)  # the step's global batch
        assert lr == pytest.approx(learning_rate(1e-3, consumed / planned, consumed == 0, size, 2, False)), step
        consumed += size
    assert consumed == planned


def _latest(root: Path) -> dict:
    """The progress of the newest checkpoint ({"step": 0, ...} before the first)."""
    for folder in sorted((root / "distill/train/stage1").glob("checkpoint_*"), reverse=True):
        try:
            return json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):  # still being written
            continue
    return {"step": 0, "consumed": 0, "workers": [(0, 0)]}


def _wait_for(condition, driver: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if driver.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{driver.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT} s")
        time.sleep(0.2)
