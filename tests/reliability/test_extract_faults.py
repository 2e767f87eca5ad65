"""`sas-ray extract` under faults, on a 3-node Ray cluster (a head without CPUs, two 2-CPU workers, 127.0.0.1): a
teacher actor dies mid-run, the worker node hosting it is removed mid-run, the driver is SIGKILLed and rerun. Each
run must end with exactly the files of a clean run, the same tensor bytes and metadata, and a manifest with every
scene ok once.

Drivers run as subprocesses (`sas-ray ... --address`), so the tests' own Ray session is never touched. Scenes are
two rendered rooms replicated into SCENES scene ids (benchmarks.extract.replicate); 5 frames a scene in groups of
3 + 2, so a scene's two partials merge in either order to the same bits (fp32 addition commutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.extract import replicate
from local_cluster import LocalCluster
from sas_ray.faults import ENV
from sas_ray.features import feature_file
from sas_ray.storage import Storage

SCENES = [f"scene{i:04d}_00" for i in range(8)]
TEACHER = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 3, "options": {"flip": True}}
CLI = os.path.join(os.path.dirname(sys.executable), "sas-ray")
# A driver whose job carries $SAS_RAY_FAULT to every worker (as `ray job submit --runtime-env-json` would).
FAULTY_DRIVER = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, runtime_env={'env_vars': "
                 f"{{'{ENV}': sys.argv[2]}}}}); from jobs.cli import main; sys.exit(main(sys.argv[3:]))")
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(workers=2, cpus=2)
    yield local
    local.close()


@pytest.fixture(scope="module")
def prepared(cluster, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("extract-faults")
    config = _config(work / "prepare.yaml", {
        "dataset": {"layout": "scannet", "root": str(work / "raw"), "split": "val",
                    "synthetic": {"num_scenes": 2, "frames_per_scene": 5, "size": "tiny", "points_per_scene": 1500,
                                  "seed": 1}},
        "output": str(work / "rendered"), "progress": False})
    _finish(_start(cluster, "prepare", config))
    replicate(Storage(str(work / "rendered")), Storage(str(work / "prepared")), len(SCENES), frames=5)
    return str(work / "prepared")


@pytest.fixture(scope="module")
def clean(cluster, prepared, tmp_path_factory) -> dict[str, bytes]:
    """The feature folder of a run without faults: file name -> bytes."""
    out = tmp_path_factory.mktemp("clean")
    _finish(_start(cluster, "extract", _extract_config(prepared, out)))
    return {name: (_features(out) / name).read_bytes() for name in _expected()}


@pytest.fixture
def workers(cluster) -> LocalCluster:
    """The cluster with both worker nodes up (a test before may have removed one)."""
    cluster.ensure_workers()
    return cluster


def test_teacher_actor_killed_mid_run(workers, prepared, clean, tmp_path):
    marker = tmp_path / "actor-died"
    config = _extract_config(prepared, tmp_path / "out")
    # The actor exits once it has fused 8 frames (its 3rd or 4th group of 3 or 2 frames) and Ray restarts it.
    driver = _start(workers, "extract", config, fault=f"extract-actor:8:{marker}")
    output = _finish(driver)
    assert marker.exists(), "the fault never fired"
    assert f"{len(SCENES)} done, 0 already done (skipped), 0 failed" in output
    _assert_like_clean(tmp_path / "out", clean)


def test_worker_node_removed_mid_run(workers, prepared, clean, tmp_path):
    """Also issue #10's node-removal test: the pipeline outlives a node (its actor, decode tasks, objects)."""
    out = tmp_path / "out"
    driver = _start(workers, "extract", _extract_config(prepared, out))
    written = _wait_for(lambda: _written(out), driver, "a first scene's features")
    assert workers.remove_node_running("TeacherFusionActor"), "no worker node hosts the teacher actor"
    assert len(written) < len(SCENES), "the run finished before the node was removed"
    output = _finish(driver)
    assert f"{len(SCENES)} done" in output and "0 failed" in output
    _assert_like_clean(out, clean)


def test_driver_killed_and_rerun(workers, prepared, clean, tmp_path):
    out = tmp_path / "out"
    config = _extract_config(prepared, out)
    driver = _start(workers, "extract", config)
    recorded = _wait_for(lambda: _manifest_ids(out), driver, "a first manifest row")
    driver.kill()  # SIGKILL: no cleanup, writer threads and manifest flushes cut wherever they are
    driver.wait(30)
    recorded = _manifest_ids(out)
    assert 0 < len(recorded) < len(SCENES), f"kill landed outside the run: {len(recorded)} scenes recorded"
    mtimes = {s: (_features(out) / feature_file(s)).stat().st_mtime_ns for s in recorded}

    output = _finish(_start(workers, "extract", config))
    # Scenes in the manifest at the kill are not recomputed; the rest (at most the 5 s between manifest flushes
    # of finished scenes, plus those in flight) are.
    assert f"{len(SCENES) - len(recorded)} done, {len(recorded)} already done (skipped), 0 failed" in output
    assert {s: (_features(out) / feature_file(s)).stat().st_mtime_ns for s in recorded} == mtimes
    _assert_like_clean(out, clean, killed=True)


# -- helpers ------------------------------------------------------------------------------------------------------
def _config(path: Path, settings: dict) -> str:
    path.write_text(json.dumps(settings))  # JSON is YAML
    return str(path)


def _extract_config(prepared: str, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    return _config(out.parent / f"{out.name}.yaml", {"prepared": prepared, "output": str(out), "teachers": [TEACHER],
                                                      "frames_per_task": 3, "progress": False})


def _start(cluster: LocalCluster, stage: str, config: str, fault: str | None = None) -> subprocess.Popen:
    args = [stage, "--config", config, "--address", cluster.address]
    command = [sys.executable, "-c", FAULTY_DRIVER, cluster.address, fault, *args] if fault else [CLI, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})


def _finish(driver: subprocess.Popen) -> str:
    try:
        output, _ = driver.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        driver.kill()
        output, _ = driver.communicate(timeout=30)
        pytest.fail(f"driver still running after {RUN_TIMEOUT} s:\n{output[-3000:]}")
    assert driver.returncode == 0, output[-3000:]
    return output


def _wait_for(probe, driver: subprocess.Popen, what: str, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if driver.poll() is not None:
            pytest.fail(f"driver exited ({driver.returncode}) before {what}:\n{driver.stdout.read()[-3000:]}")
        time.sleep(0.05)
    driver.kill()
    pytest.fail(f"no {what} within {timeout} s")


def _features(out: Path) -> Path:
    return out / "features" / TEACHER["name"]


def _expected() -> list[str]:
    return sorted([*(feature_file(s) for s in SCENES), "manifest.parquet"])


def _written(out: Path) -> list[str]:
    folder = _features(out)
    return [n for n in os.listdir(folder) if n.endswith(".safetensors")] if folder.exists() else []


def _manifest_ids(out: Path) -> list[str]:
    path = _features(out) / "manifest.parquet"
    if not path.exists():
        return []
    return [r["id"] for r in pq.read_table(path).to_pylist() if r["status"] == "ok"]


def _content(blob: bytes) -> tuple[dict, bytes]:
    """A safetensors file as (header, tensor bytes). The header is compared parsed: safetensors writes the metadata
    map in hash order, which differs between processes."""
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + size]), blob[8 + size:]


def _assert_like_clean(out: Path, clean: dict[str, bytes], killed: bool = False) -> None:
    """Exactly the clean run's files with the same content, no temporary objects, one ok manifest row per scene whose
    hash is the file's."""
    names = os.listdir(_features(out))
    temporary = [n for n in names if n.startswith(".tmp-")]
    # Only a SIGKILL in the middle of a write can leave a temporary file; readers never list it (Storage.list).
    assert not temporary or killed and len(temporary) <= 3, temporary
    assert sorted(set(names) - set(temporary)) == _expected()
    assert Storage(str(_features(out))).list() == _expected()
    for scene in SCENES:
        assert _content((_features(out) / feature_file(scene)).read_bytes()) == _content(clean[feature_file(scene)])
    rows = pq.read_table(_features(out) / "manifest.parquet").to_pylist()
    assert sorted(r["id"] for r in rows) == SCENES and {r["status"] for r in rows} == {"ok"}
    store = Storage(str(_features(out)))
    assert all(store.sha256(r["path"]) == r["sha256"] for r in rows)
