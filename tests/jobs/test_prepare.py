"""`sas-ray prepare` end to end on synthetic data: local and S3, resume, the CLI."""

import subprocess
import sys

import numpy as np
import pytest

from jobs.prepare import run_prepare
from sas_ray.config import PrepareConfig, parse_config
from sas_ray.errors import ConfigError
from sas_ray.prepared import FRAMES, read_frame_index, read_info, read_scene
from sas_ray.reference import compute_mapping
from sas_ray.datasets.frames import read_frame
from sas_ray.storage import Storage


def _config(raw: str, out: str, options: dict | None = None, layout: str = "scannet", scenes: int = 2):
    return parse_config({
        "dataset": {"layout": layout, "root": raw, "split": "val",
                    "synthetic": {"num_scenes": scenes, "frames_per_scene": 4, "size": "tiny",
                                  "points_per_scene": 2000, "seed": 3}},
        "output": out, "storage": {"options": options or {}}, "progress": False,
    }, PrepareConfig)


def _check_prepared(out: Storage, expected_scenes: int):
    info = read_info(out)
    index = read_frame_index(out).to_pylist()
    assert len(info["scenes"]) == expected_scenes
    assert {r["scene"] for r in index} == set(info["scenes"])
    # Closed-form check: projecting the scene's points into a decoded frame lands on the rendered depth.
    row = index[0]
    scene = read_scene(out, row["scene"])
    frame = read_frame(row, out.options)
    mapping = compute_mapping(scene.points.astype(np.float64), frame.pose, frame.intrinsic, frame.size, 0,
                              frame.depth, 0.05)
    assert mapping[:, 2].sum() > 0.05 * scene.num_points  # a real share of the room is visible and depth-consistent


def test_prepare_local_then_resume(ray_session, tmp_path):
    cfg = _config(str(tmp_path / "raw"), str(tmp_path / "prepared"))
    report = run_prepare(cfg)
    assert (report.done, report.failed) == (2, 0), report.summary()
    out = Storage(cfg.output)
    _check_prepared(out, 2)
    mtime = (tmp_path / "prepared" / "scenes" / "scene0000_00.safetensors").stat().st_mtime_ns

    (tmp_path / "prepared" / "scenes" / "scene0001_00.safetensors").unlink()
    again = run_prepare(cfg)
    assert (again.done, again.skipped) == (1, 1)
    assert (tmp_path / "prepared" / "scenes" / "scene0000_00.safetensors").stat().st_mtime_ns == mtime
    assert again.reran == {"output missing": 1}


def test_prepare_to_s3(ray_session, tmp_path, s3_bucket):
    root, options = s3_bucket
    cfg = _config(f"{root}/raw", f"{root}/prepared", options, scenes=1)
    report = run_prepare(cfg)
    assert (report.done, report.failed) == (1, 0), report.summary()
    _check_prepared(Storage(cfg.output, options), 1)


def test_bad_scene_fails_alone(ray_session, tmp_path):
    cfg = _config(str(tmp_path / "raw"), str(tmp_path / "prepared"))
    run_prepare(cfg)
    pth = next((tmp_path / "raw").rglob("scene0001_00*.pth"))
    pth.write_bytes(b"not a pickle")
    (tmp_path / "prepared" / "scenes" / "scene0001_00.safetensors").unlink()
    report = run_prepare(cfg)
    assert report.failed == 1 and "scene0001_00" in report.errors[0]
    assert Storage(cfg.output).exists(FRAMES)


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("dataset: {layout: scannet, root: x, colour: red}\noutput: y\n")
    from jobs.cli import load_stage_config

    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown key 'dataset.colour'"):
        load_stage_config(str(path), [], PrepareConfig)


def test_cli_help_explains():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "prepare", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--config" in out and "frame index" in out and "resumable" in out


def test_raw_scannet_export_keeps_every_20th_frame(ray_session, tmp_path):
    """A raw every-frame export (frames 0..45) gives OpenScene's frames 0, 20, 40; `frame_skip: 1` keeps all. The
    preset's frame size is recorded for extract (a 640x480 export is resized to 320x240 there, as OpenScene did)."""
    from sas_ray.datasets.scannet import write_scannet
    from sas_ray.scene import Frame, Scene

    rng = np.random.default_rng(0)
    k = np.array([[57.8, 0, 31.5], [0, 57.8, 23.5], [0, 0, 1]])
    frames = [Frame("scene0000_00", str(i), np.zeros((48, 64, 3), np.uint8), k, np.eye(4),
                    np.ones((48, 64), np.float32)) for i in range(46)]
    write_scannet(str(tmp_path / "raw"), "val", Scene("scene0000_00", rng.random((50, 3)).astype(np.float32)), frames)
    for frame_skip, expected in ((None, ["0", "20", "40"]), (1, [str(i) for i in range(46)])):
        out = tmp_path / f"prepared{frame_skip}"
        cfg = parse_config({"dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "frame_skip": frame_skip},
                            "output": str(out), "progress": False}, PrepareConfig)
        assert run_prepare(cfg).done == 1
        assert [r["frame"] for r in read_frame_index(Storage(str(out))).to_pylist()] == expected
        info = read_info(Storage(str(out)))
        assert (info["frame_skip"], info["image_size"], info["resize"]) == (frame_skip or 20, [240, 320], "nearest")
