"""`sas-ray extract` against the sequential OpenScene-style reference, per dataset preset, locally and on S3;
resume and per-scene error isolation."""

import json

import numpy as np
import pytest
import torch

from jobs.extract import _TeacherRun, frame_groups, run_extract
from sas_ray.features import decode_features, feature_file
from jobs.prepare import run_prepare
from sas_ray.config import PRESETS, ExtractConfig, PrepareConfig, parse_config
from sas_ray.datasets.frames import read_frame
from sas_ray.geometry.resize import resize_frame
from sas_ray.models import build_teacher
from sas_ray.prepared import read_frame_index, read_info, read_scene
from sas_ray.reference import reference_fusion
from sas_ray.storage import Storage, sha256_bytes

TEACHER = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 3, "options": {"flip": True}}


def _prepare(raw: str, out: str, layout: str, options: dict | None = None, scenes: int = 2, **dataset) -> str:
    cfg = parse_config({
        "dataset": {"layout": layout, "root": raw, "split": "val",
                    "synthetic": {"num_scenes": scenes, "frames_per_scene": 5, "size": "tiny",
                                  "points_per_scene": 1500, "seed": 1}, **dataset},
        "output": out, "storage": {"options": options or {}}, "progress": False}, PrepareConfig)
    report = run_prepare(cfg)
    assert report.failed == 0, report.summary()
    return out


def _extract(prepared: str, output: str, options: dict | None = None, frames_per_task: int = 3, **extra) -> tuple:
    cfg = parse_config({"prepared": prepared, "output": output, "teachers": [TEACHER], "frames_per_task": frames_per_task,
                        "storage": {"options": options or {}}, "progress": False, **extra}, ExtractConfig)
    (report,) = run_extract(cfg)
    return cfg, report


def _reference(prepared: Storage, scene_id: str, labelled_only: bool, skip_frames: tuple[str, ...] = ()):
    info = read_info(prepared)
    preset = PRESETS[info["preset"]]
    rows = [r for r in read_frame_index(prepared).to_pylist()
            if r["scene"] == scene_id and r["frame"] not in skip_frames]
    size = info.get("image_size")  # frames reach the teacher at the prepared size (SPEC §1.3), K rescaled (§2.3)
    frames = [resize_frame(read_frame(r, prepared.options), size and tuple(size), info["resize"]) for r in rows]
    teacher = build_teacher(TEACHER["name"], tiny=True, **TEACHER["options"])
    return reference_fusion(teacher, read_scene(prepared, scene_id), frames, preset.cut_bound, preset.vis_thres,
                            labelled_only=labelled_only)


def _assert_matches_reference(cfg: ExtractConfig, options: dict | None = None):
    prepared = Storage(cfg.prepared, options)
    features = Storage(cfg.output, options).child("features", "openclip-dense")
    labelled_only = not PRESETS[read_info(prepared)["preset"]].has_depth
    for scene_id in read_info(prepared)["scenes"]:
        ours = decode_features(features.read_tensors(feature_file(scene_id)), scene_id)
        ref = _reference(prepared, scene_id, labelled_only)
        assert torch.equal(ours.mask_full, ref.mask_full), scene_id
        assert ours.mask_full.sum() > 0
        torch.testing.assert_close(ours.feat.float(), ref.feat.float(), atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("layout", ["scannet", "matterport", "nuscenes"])
def test_pipeline_equals_sequential_reference(ray_session, tmp_path, layout):
    # nuScenes: frames stored at 64x36 and resized at decode to half, as 1600x900 -> 800x450 (SPEC §1.3)
    resized = {"image_size": [18, 32]} if layout == "nuscenes" else {}
    prepared = _prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), layout, **resized)
    assert read_info(Storage(prepared))["image_size"] == resized.get("image_size")
    cfg, report = _extract(prepared, str(tmp_path / "out"))
    assert (report.done, report.failed) == (2, 0), report.summary()
    # start-up accounting: an actor's construction is reported, and the first result's work began after it
    assert 0 < report.load_seconds <= report.first_work_seconds < report.first_output_seconds <= report.seconds
    _assert_matches_reference(cfg)


def test_pipeline_on_s3_resume_and_chunks(ray_session, tmp_path, s3_bucket):
    root, options = s3_bucket
    prepared = _prepare(f"{root}/raw", f"{root}/prepared", "scannet", options)
    cfg, report = _extract(prepared, f"{root}/out", options, frames_per_task=64)  # one group a scene
    assert (report.done, report.failed) == (2, 0), report.summary()
    _assert_matches_reference(cfg, options)

    features = Storage(cfg.output, options).child("features", "openclip-dense")
    kept = features.read_bytes(feature_file("scene0000_00"))
    features.delete(feature_file("scene0001_00"))
    _, again = _extract(prepared, f"{root}/out", options)
    assert (again.done, again.skipped, again.failed) == (1, 1, 0)
    assert features.read_bytes(feature_file("scene0000_00")) == kept
    assert features.exists(feature_file("scene0001_00"))


def test_corrupt_frame_fails_only_its_scene_and_a_lost_pose_is_counted(ray_session, tmp_path):
    _prepare(str(tmp_path / "raw"), str(tmp_path / "first"), "scannet")  # renders the raw rooms
    bad = tmp_path / "raw" / "scannet_2d" / "scene0001_00" / "color" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    (tmp_path / "raw" / "scannet_2d" / "scene0000_00" / "pose" / "3.txt").write_text("nan nan nan nan\n" * 4)
    prepared = _prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), "scannet")
    cfg, report = _extract(prepared, str(tmp_path / "out"))
    assert (report.done, report.failed) == (1, 1), report.summary()
    assert "scene0001_00" in report.errors[0] and "2.jpg" in report.errors[0]
    features = Storage(cfg.output).child("features", "openclip-dense")
    assert features.exists(feature_file("scene0000_00")) and not features.exists(feature_file("scene0001_00"))
    # the lost pose: that frame is left out (the others fuse as without it) and the summary counts it
    assert report.warnings == ["scene scene0000_00: 1 of 5 frames left out, their camera pose is not finite (lost "
                               "tracking): frame 3"]
    assert "  warning: scene scene0000_00: 1 of 5 frames left out" in report.summary()
    ours = decode_features(features.read_tensors(feature_file("scene0000_00")), "scene0000_00")
    ref = _reference(Storage(prepared), "scene0000_00", False, skip_frames=("3",))
    assert torch.equal(ours.mask_full, ref.mask_full)
    torch.testing.assert_close(ours.feat.float(), ref.feat.float(), atol=2e-3, rtol=1e-2)


def test_chunk_split_matches_openscene_semantics(ray_session, tmp_path):
    prepared = _prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), "scannet", scenes=1)
    cfg, report = _extract(prepared, str(tmp_path / "out"), split="chunks", num_chunks=3, n_split_points=500)
    assert report.done == 1
    features = Storage(cfg.output).child("features", "openclip-dense")
    chunks = decode_features(features.read_tensors(feature_file("scene0000_00")), "scene0000_00")
    full = _reference(Storage(prepared), "scene0000_00", False)
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.mask_full.sum() <= 500
        assert not (chunk.mask_full & ~full.mask_full).any()  # a chunk only holds visible points
        rows = full.mask_full.nonzero().squeeze(1)
        in_chunk = chunk.mask_full[rows]
        torch.testing.assert_close(chunk.feat.float(), full.feat[in_chunk].float(), atol=2e-3, rtol=1e-2)


def test_frame_groups_cover_every_frame_once():
    rows = [{"scene": s, "frame": str(i), "pose": np.eye(4).ravel().tolist()} for s in ("a", "b") for i in range(7)]
    groups = frame_groups(rows, ["a", "b", "c"], frames_per_task=3)
    assert [(g["scene"], g["group"], g["num_groups"]) for g in groups] == [
        ("a", 0, 3), ("a", 1, 3), ("a", 2, 3), ("b", 0, 3), ("b", 1, 3), ("b", 2, 3), ("c", 0, 1)]
    assert np.sum([len(json.loads(g["frames"])) for g in groups]) == 14


def test_scene_recipes_hash_every_checkpoint_of_the_teacher(tmp_path):
    """A new SAM checkpoint at the same path makes sam-clip's scenes stale (the recipe reads both checkpoints'
    bytes, CLIP's and SAM's); a teacher of one checkpoint keeps the recipe it always had (scene and weights)."""
    clip, sam = tmp_path / "clip.safetensors", tmp_path / "sam.safetensors"
    clip.write_bytes(b"clip")
    sam.write_bytes(b"sam")
    cfg = parse_config({"prepared": str(tmp_path), "output": str(tmp_path / "out"), "teachers": [
        {"name": "sam-clip", "weights": str(clip), "options": {"sam_weights": str(sam)}},
        {"name": "openclip-dense", "weights": str(clip)}]}, ExtractConfig)

    def recipe(spec):
        run = object.__new__(_TeacherRun)  # the recipe alone: no prepared dataset, no manifest
        run.cfg, run.spec, run.labelled_only, run.image_size, run.resize = cfg, spec, True, None, "resize"
        run.visibility = {"cut_bound": 10, "vis_thres": 0.25}
        return run.unit_recipes(["s"], {"s": "d"})["s"]

    before, dense = recipe(cfg.teachers[0]), recipe(cfg.teachers[1])
    sam.write_bytes(b"sam, trained further")
    assert recipe(cfg.teachers[0]).change_from(before.config, before.inputs) == "input changed: sam_weights"
    assert json.loads(dense.inputs) == {"scene": "d", "weights": sha256_bytes(b"clip")}
