import pyarrow as pa
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.lineage import stage_recipe
from sas_ray.manifest import Manifest, UnitResult, open_stage
from sas_ray.storage import Storage, sha256_bytes


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "out"))
    if request.param == "memory":
        return Storage(f"memory://{tmp_path.name}/out")
    root, options = request.getfixturevalue("s3_bucket")
    return Storage(root + "/out", options)


def test_bytes_tensors_tables_round_trip(store):
    digest = store.write_bytes("a/b.bin", b"hello")
    assert digest == sha256_bytes(b"hello") == store.sha256("a/b.bin")
    assert store.read_bytes("a/b.bin") == b"hello"
    tensors = {"feat": torch.randn(5, 3).half(), "mask": torch.tensor([True, False])}
    store.write_tensors("t.safetensors", tensors, {"teacher": "x"})
    back = store.read_tensors("t.safetensors")
    assert torch.equal(back["feat"], tensors["feat"]) and torch.equal(back["mask"], tensors["mask"])
    assert store.read_tensor_metadata("t.safetensors") == {"teacher": "x"}
    table = pa.table({"scene": ["s0", "s1"], "n": [1, 2]})
    store.write_table("idx.parquet", table)
    assert store.read_table("idx.parquet").equals(table)
    assert store.list("a") == ["b.bin"]


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", ".hidden", "a/./b/..", ""])
def test_unsafe_paths_rejected(tmp_path, bad):
    store = Storage(str(tmp_path))
    with pytest.raises(Exception) as err:
        store.write_bytes(bad, b"x")
    assert "safe" in str(err.value) or "empty" in str(err.value)
    assert not (tmp_path.parent / "x").exists()


def test_corrupt_safetensors_named(tmp_path):
    store = Storage(str(tmp_path))
    store.write_bytes("bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="bad.safetensors"):
        store.read_tensors("bad.safetensors")


def test_local_write_is_atomic_no_temp_left(tmp_path):
    store = Storage(str(tmp_path))
    store.write_bytes("x/y.bin", b"1" * 1000)
    store.write_bytes("x/y.bin", b"2" * 10)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y.bin"]
    assert store.read_bytes("x/y.bin") == b"2" * 10


def test_failed_local_write_leaves_no_temporary_and_keeps_the_old_object(tmp_path, monkeypatch):
    store = Storage(str(tmp_path))
    store.write_bytes("x/y.bin", b"old")

    def full_disk(fd):
        raise ValueError("no space left")  # not an OSError: not retried

    monkeypatch.setattr("sas_ray.storage.os.fsync", full_disk)
    with pytest.raises(ValueError, match="no space left"):
        store.write_bytes("x/y.bin", b"new")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y.bin"]
    assert store.read_bytes("x/y.bin") == b"old"


def test_a_stage_restart_sweeps_stale_temporaries_only(tmp_path):
    import os
    import time

    stage = Storage(str(tmp_path / "features" / "teacher"))
    stage.write_bytes("scene0000_00.safetensors", b"done")
    folder = tmp_path / "features" / "teacher"
    stale, fresh, nested = folder / ".tmp-killed", folder / ".tmp-in-flight", folder / "sub" / ".tmp-old"
    nested.parent.mkdir()
    for path in (stale, fresh, nested):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in (stale, nested):
        os.utime(path, (hours_ago, hours_ago))
    outside = tmp_path / ".tmp-other-stage"
    outside.write_bytes(b"partial")
    os.utime(outside, (hours_ago, hours_ago))

    with open_stage(stage):
        pass
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-in-flight", "scene0000_00.safetensors", "sub"]
    assert not nested.exists() and outside.exists()  # the whole stage folder, nothing outside it
    assert stage.read_bytes("scene0000_00.safetensors") == b"done"


def test_manifest_resume_semantics(store):
    stage = store.child("features")
    recipe = stage_recipe(1, k_thresh=0.01).unit({"scene": "a" * 64})
    manifest = Manifest(stage)
    for unit in ["s0", "s1", "s2"]:
        manifest.record(UnitResult.ok(unit, f"{unit}.bin", stage.put(f"{unit}.bin", unit.encode()), 0.1, recipe))
    manifest.record(UnitResult.failed("s3", "s3 frame 7: broken", recipe=recipe))
    manifest.flush()

    units = ["s0", "s1", "s2", "s3", "s4"]
    plan = Manifest(stage).plan({u: recipe for u in units})
    assert (plan.todo, plan.skipped, dict(plan.reasons)) == (["s3", "s4"], 3, {"failed before": 1, "new": 1})
    stage.delete("s1.bin")  # a deleted output is recomputed
    stage.put("s2.bin", b"tampered")  # so is a rewritten one (the listing shows another size and version)
    plan = Manifest(stage).plan({u: recipe for u in ["s0", "s1", "s2"]})
    assert plan.todo == ["s1", "s2"]
    assert dict(plan.reasons) == {"output missing": 1, "output changed since it was written": 1}
    assert [r.id for r in Manifest(stage).errors()] == ["s3"]
