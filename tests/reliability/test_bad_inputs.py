"""A corpus of bad inputs: each fault must become a clear error naming its unit, file and problem, for that unit
only; the rest of the job must finish; nothing written earlier may change. Also: Ray stays on 127.0.0.1 with its
auth settings untouched by our code.

Job-level faults share one run: a synthetic ScanNet set is prepared and extracted once for scene0000_00 (the
"earlier" output), then every fault gets its own copy of scene0001_00 (scene01NN_00) with one thing broken, and one
`prepare` plus one `extract` run over all scenes must fail exactly the broken copies, each with its own error.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs.extract import run_extract
from jobs.fuse import run_fuse
from jobs.prepare import run_prepare
from sas_ray.config import ExtractConfig, FuseConfig, PrepareConfig, load_config, parse_config
from sas_ray.errors import ConfigError, InputError
from sas_ray.features import feature_file
from sas_ray.models.weights import read_checkpoint
from sas_ray.prepared import FRAMES, read_frame_index
from sas_ray.storage import Storage

TEACHER = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 3}
EARLIER, GOOD = "scene0000_00", "scene0001_00"
PTH = "scannet_3d/val/{}_vh_clean_2.pth"


class _Payload:
    """Unpickling this creates `marker`: the proof that a loader executed a pickle it was handed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious_torch_file(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"weight": _Payload(str(marker))}, buf)
    return buf.getvalue()


def _pth(points: np.ndarray, labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    torch.save((points.astype(np.float64), np.zeros_like(points, np.float64), labels.astype(np.float64)), buf)
    return buf.getvalue()


# --- faults in the raw files, seen by `prepare` -------------------------------------------------------------------

def _empty_scene(raw: Path, sid: str, marker: Path) -> None:
    (raw / PTH.format(sid)).write_bytes(_pth(np.zeros((0, 3)), np.zeros(0)))


def _labels_out_of_range(raw: Path, sid: str, marker: Path) -> None:
    points = np.random.default_rng(0).random((50, 3))
    (raw / PTH.format(sid)).write_bytes(_pth(points, np.full(50, 300)))


def _pickle_scene(raw: Path, sid: str, marker: Path) -> None:
    (raw / PTH.format(sid)).write_bytes(_malicious_torch_file(marker))


PREPARE_FAULTS = {  # case -> (scene id, how to break it, what the error must say)
    "empty_scene": ("scene0101_00", _empty_scene, "no points"),
    "labels_out_of_range": ("scene0102_00", _labels_out_of_range, "labels must lie in 0..255"),
    "pickle_in_place_of_pth": ("scene0103_00", _pickle_scene, "refused or unreadable torch file"),
}
RAW_TRAVERSAL = ".."  # a raw file `.._vh_clean_2.pth` lists as scene id '..'
CONFIG_TRAVERSAL = "../../escaped"


# --- faults in a frame's files or frame-index row, seen by `extract` ----------------------------------------------

def _file(raw: Path, sid: str, kind: str, frame: str) -> Path:
    return raw / "scannet_2d" / sid / kind / f"{frame}.{'jpg' if kind == 'color' else 'png'}"


def _corrupt_jpeg(raw, sid, frame, row):
    path = _file(raw, sid, "color", frame)
    path.write_bytes(path.read_bytes()[:40])


def _truncated_depth(raw, sid, frame, row):
    path = _file(raw, sid, "depth", frame)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _depth_wrong_size(raw, sid, frame, row):
    buf = io.BytesIO()
    Image.fromarray(np.ones((7, 5), np.uint16)).save(buf, format="PNG")
    _file(raw, sid, "depth", frame).write_bytes(buf.getvalue())


def _missing_depth(raw, sid, frame, row):
    _file(raw, sid, "depth", frame).unlink()


def _set_pose(value):
    def fault(raw, sid, frame, row):
        pose = np.array(row["pose"]).reshape(4, 4)
        pose[:3, :3] = value
        row["pose"] = pose.reshape(16).tolist()
    return fault


def _zero_focal(raw, sid, frame, row):
    row["intrinsic"] = [0.0, 0, 30, 0, 0.0, 20, 0, 0, 1]


def _behind_cameras(raw, sid, frame, row):  # every camera at z=1000 looking along +z: the room is behind them all
    row["pose"] = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1000, 0, 0, 0, 1]


EXTRACT_FAULTS = {  # case -> (scene id, fault(raw, scene, frame, index row) for one frame or all, all?, message)
    "corrupt_jpeg": ("scene0201_00", _corrupt_jpeg, False, r"{frame}.jpg is not a readable image"),
    "truncated_png_depth": ("scene0202_00", _truncated_depth, False, r"{frame}.png is not a readable image"),
    "depth_wrong_size": ("scene0203_00", _depth_wrong_size, False, r"{frame}.png is 5x7 but .*{frame}.jpg is"),
    "missing_depth_file": ("scene0204_00", _missing_depth, False, r"depth/{frame}.png not found"),
    "singular_pose": ("scene0207_00", _set_pose(0.0), False, r"frame {frame}: pose rotation is singular"),
    "zero_focal": ("scene0208_00", _zero_focal, False, r"frame {frame}: intrinsic .*positive focal.*fx=0.0"),
    "no_visible_points": ("scene0209_00", _behind_cameras, True, r"no point is visible in any of its \d+ frames"),
}
LOST_POSES = {  # a pose that is not finite (lost tracking): the frame is left out, the scene fused and the count said
    "nan_pose": ("scene0205_00", _set_pose(np.nan), False, ""),
    "inf_pose": ("scene0206_00", _set_pose(np.inf), False, ""),
}


def _copy_scene(raw: Path, src: str, dst: str) -> None:
    shutil.copytree(raw / "scannet_2d" / src, raw / "scannet_2d" / dst)
    shutil.copyfile(raw / PTH.format(src), raw / PTH.format(dst))
    (raw / "scans" / dst).mkdir()
    shutil.copyfile(raw / "scans" / src / f"{src}_vh_clean_2.ply", raw / "scans" / dst / f"{dst}_vh_clean_2.ply")


def _prepare_config(root: Path, scenes: list[str] | None = None):
    dataset = {"layout": "scannet", "root": str(root / "raw"), "split": "val",
               "synthetic": {"num_scenes": 2, "frames_per_scene": 3, "size": "tiny", "points_per_scene": 800,
                             "seed": 5}}
    if scenes is not None:
        dataset["scenes"] = scenes
    return parse_config({"dataset": dataset, "output": str(root / "prepared"), "progress": False}, PrepareConfig)


def _extract_config(root: Path, scenes: list[str] | None = None):
    return parse_config({"prepared": str(root / "prepared"), "output": str(root / "out"), "teachers": [TEACHER],
                         "scenes": scenes, "progress": False}, ExtractConfig)


def _stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


class JobRuns:
    """The outcome of the shared prepare + extract runs over the good, earlier and broken scenes."""

    def __init__(self, root: Path):
        self.root, raw = root, root / "raw"
        self.marker = root / "pickle-executed"
        first = run_prepare(_prepare_config(root))
        assert (first.done, first.failed) == (2, 0), first.summary()
        earlier = run_extract(_extract_config(root, [EARLIER]))[0]
        assert earlier.done == 1, earlier.summary()
        self.earlier_files = [root / "prepared" / "scenes" / f"{EARLIER}.safetensors",
                              root / "out" / "features" / "openclip-dense" / feature_file(EARLIER)]
        self.earlier = [_stamp(p) for p in self.earlier_files]

        for sid, fault, _ in PREPARE_FAULTS.values():
            _copy_scene(raw, GOOD, sid)
            fault(raw, sid, self.marker)
        for sid, *_ in (*EXTRACT_FAULTS.values(), *LOST_POSES.values()):
            _copy_scene(raw, GOOD, sid)
        shutil.copyfile(raw / PTH.format(GOOD), raw / PTH.format(RAW_TRAVERSAL))
        listed = sorted(p.name[:-len("_vh_clean_2.pth")] for p in (raw / "scannet_3d" / "val").iterdir())
        self.prepare = run_prepare(_prepare_config(root, listed + [CONFIG_TRAVERSAL]))

        rows = read_frame_index(Storage(str(root / "prepared"))).to_pylist()
        self.frame = {}
        for sid, fault, every_frame, _ in (*EXTRACT_FAULTS.values(), *LOST_POSES.values()):
            mine = [r for r in rows if r["scene"] == sid]
            self.frame[sid] = mine[1]["frame"]  # a middle frame: the scene's other frames are fine
            for row in mine if every_frame else [mine[1]]:
                fault(raw, sid, row["frame"], row)
        frames = root / "prepared" / FRAMES
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(frames)), frames)
        scenes = sorted({r["scene"] for r in rows})
        self.extract = run_extract(_extract_config(root, scenes + [CONFIG_TRAVERSAL]))[0]


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory) -> JobRuns:
    return JobRuns(tmp_path_factory.mktemp("bad-inputs"))


def _only_error_of(report, unit: str) -> str:
    mine = [e for e in report.errors if unit in e]
    assert len(mine) == 1, report.summary()
    return mine[0]


def _assert_rest_completed_and_earlier_kept(runs: JobRuns) -> None:
    assert [_stamp(p) for p in runs.earlier_files] == runs.earlier
    features = runs.root / "out" / "features" / "openclip-dense"
    assert (features / feature_file(GOOD)).exists()
    assert not runs.marker.exists()


@pytest.mark.parametrize("case", sorted(PREPARE_FAULTS))
def test_bad_raw_scene_fails_alone_in_prepare(runs, case):
    sid, _, expected = PREPARE_FAULTS[case]
    error = _only_error_of(runs.prepare, sid)
    assert PTH.format(sid) in error and expected in error
    assert not (runs.root / "prepared" / "scenes" / f"{sid}.safetensors").exists()
    # the rest: the good and the extract-faulted scenes prepared, every failure accounted for
    assert (runs.prepare.done, runs.prepare.skipped) == (len(EXTRACT_FAULTS) + len(LOST_POSES), 2)
    assert runs.prepare.failed == len(PREPARE_FAULTS) + 2  # + the two path-traversal ids
    _assert_rest_completed_and_earlier_kept(runs)


@pytest.mark.parametrize("where", ["raw folder name", "config scenes list"])
def test_path_traversal_scene_id_is_refused(runs, where):
    unit = RAW_TRAVERSAL if where == "raw folder name" else CONFIG_TRAVERSAL
    errors = [e for e in runs.prepare.errors if f"{unit!r} is not a safe name" in e]
    assert len(errors) == 1, runs.prepare.summary()
    if where == "config scenes list":  # extract's own `scenes:` list too
        assert any(f"{unit!r} is not a safe name" in e for e in runs.extract.errors), runs.extract.summary()
    assert not (runs.root / "escaped").exists() and not (runs.root.parent / "escaped").exists()
    assert sorted(p.name for p in runs.root.iterdir()) == ["out", "prepared", "raw"]
    _assert_rest_completed_and_earlier_kept(runs)


@pytest.mark.parametrize("case", sorted(EXTRACT_FAULTS))
def test_bad_frame_fails_only_its_scene_in_extract(runs, case):
    sid, _, _, expected = EXTRACT_FAULTS[case]
    error = _only_error_of(runs.extract, sid)
    assert re.search(expected.format(frame=runs.frame[sid]), error), error
    if case != "no_visible_points":
        assert f"scannet_2d/{sid}/color/{runs.frame[sid]}.jpg" in error or f"{sid}/depth" in error, error
    assert not (runs.root / "out" / "features" / "openclip-dense" / feature_file(sid)).exists()
    assert (runs.extract.done, runs.extract.skipped) == (1 + len(LOST_POSES), 1), runs.extract.summary()
    assert runs.extract.failed == len(EXTRACT_FAULTS) + 1  # + the config path-traversal id
    _assert_rest_completed_and_earlier_kept(runs)


@pytest.mark.parametrize("case", sorted(LOST_POSES))
def test_lost_pose_frame_is_left_out_and_counted(runs, case):
    sid = LOST_POSES[case][0]
    assert not any(sid in e for e in runs.extract.errors), runs.extract.summary()
    assert (runs.root / "out" / "features" / "openclip-dense" / feature_file(sid)).exists()
    mine = [w for w in runs.extract.warnings if sid in w]
    assert len(mine) == 1 and "1 of 3 frames left out" in mine[0], runs.extract.summary()


def test_features_with_mismatched_mask_full_fail_alone_in_fuse(ray_session, tmp_path):
    out = Storage(str(tmp_path / "out"))
    rng = np.random.default_rng(0)

    def write(teacher: str, sid: str, mask: torch.Tensor) -> None:
        feat = torch.from_numpy(rng.standard_normal((int(mask.sum()), 4))).half()
        out.child("features", teacher).write_tensors(feature_file(sid), {"feat": feat, "mask_full": mask},
                                                     {"text_space": "tiny"})

    mask = torch.tensor([True, False, True, True, False, True])
    for sid in ("scene_a", "scene_b", "scene_c"):
        write("t1", sid, mask)
        write("t2", sid, mask if sid != "scene_b" else ~mask)
    cfg = {"output": str(tmp_path / "out"), "teachers": ["t1", "t2"], "method": "add", "progress": False}
    assert run_fuse(parse_config({**cfg, "scenes": ["scene_a"]}, FuseConfig)).done == 1
    earlier = tmp_path / "out" / "features" / "fused" / feature_file("scene_a")
    stamp = _stamp(earlier)

    report = run_fuse(parse_config(cfg, FuseConfig))
    assert (report.done, report.skipped, report.failed) == (1, 1, 1), report.summary()
    assert "scene scene_b: teacher 't2' mask_full differs from teacher 't1' at 6" in report.errors[0]
    assert (tmp_path / "out" / "features" / "fused" / feature_file("scene_c")).exists()
    assert not (tmp_path / "out" / "features" / "fused" / feature_file("scene_b")).exists()
    assert _stamp(earlier) == stamp


@pytest.mark.parametrize("text, expected", [
    ("dataset: {layout: scannet, root: raw, colour: red}\noutput: out\n", "unknown key 'dataset.colour'"),
    ("dataset: {layout: scannet, root: raw}\noutput: out\nprogress: [1, 2]\n", "key 'progress': "),
], ids=["unknown_key", "wrong_type"])
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), PrepareConfig)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage.yaml"]  # nothing was started or written


@pytest.mark.parametrize("fmt", ["torch zip", "raw pickle"])
def test_pickle_in_place_of_checkpoint_is_not_executed(tmp_path, fmt):
    def payload(marker: Path) -> bytes:
        return _malicious_torch_file(marker) if fmt == "torch zip" else pickle.dumps(_Payload(str(marker)), protocol=2)

    proof = tmp_path / "proof"  # the payload does run when loaded unsafely ...
    if fmt == "torch zip":
        torch.load(io.BytesIO(payload(proof)), weights_only=False)["weight"].close()
    else:
        pickle.loads(payload(proof)).close()
    assert proof.exists()
    marker = tmp_path / "executed"
    path = tmp_path / "model.pth"
    path.write_bytes(payload(marker))
    with pytest.raises(InputError, match=rf"checkpoint {path}: not a loadable weights-only torch checkpoint"):
        read_checkpoint(str(path))
    assert not marker.exists()  # ... but not when read as a checkpoint


def test_session_ray_is_bound_to_loopback(ray_session):
    ray = ray_session
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


@pytest.mark.parametrize("auth_mode", [None, "token"])
def test_ensure_ray_starts_on_loopback_and_leaves_auth_alone(monkeypatch, auth_mode):
    import ray

    from jobs import runtime

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if auth_mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    runtime.ensure_ray()
    assert calls == [{"address": "local", "num_cpus": None, "include_dashboard": False,
                      "_node_ip_address": "127.0.0.1"}]
    assert os.environ.get("RAY_AUTH_MODE") == auth_mode
