"""`sas-ray superpoints` over a prepared synthetic dataset: one id per point, segments follow the room's objects."""

import numpy as np

from jobs.prepare import run_prepare
from jobs.superpoints import run_superpoints
from sas_ray.superpoints import read_superpoints
from sas_ray.config import PrepareConfig, SuperpointsConfig, parse_config
from sas_ray.prepared import read_scene
from sas_ray.storage import Storage


def test_superpoints_stage_end_to_end(ray_session, tmp_path):
    prepared = str(tmp_path / "prepared")
    run_prepare(parse_config({
        "dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val",
                    "synthetic": {"num_scenes": 2, "frames_per_scene": 1, "size": "tiny",
                                  "points_per_scene": 3000, "seed": 2}},
        "output": prepared, "progress": False}, PrepareConfig))
    cfg = parse_config({"prepared": prepared, "output": str(tmp_path / "out"), "progress": False},
                       SuperpointsConfig)
    report = run_superpoints(cfg)
    assert (report.done, report.failed) == (2, 0), report.summary()
    for scene_id in ("scene0000_00", "scene0001_00"):
        scene = read_scene(Storage(prepared), scene_id)
        ids = read_superpoints(Storage(cfg.output), scene_id).numpy()
        assert ids.shape == (scene.num_points,) and ids.min() == 0
        assert 1 < ids.max() + 1 < scene.num_points // 10
        # Each superpoint lies (almost entirely) on one labelled object: purity over points.
        pure = sum(np.bincount(scene.labels[ids == s]).max() for s in np.unique(ids))
        assert pure / scene.num_points > 0.9
    again = run_superpoints(cfg)
    assert (again.done, again.skipped) == (0, 2)
