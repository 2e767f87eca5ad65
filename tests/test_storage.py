import pyarrow as pa
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.storage import Manifest, Storage, UnitResult, sha256_bytes


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


def test_manifest_resume_semantics(store):
    stage = store.child("features")
    manifest = Manifest(stage)
    for unit in ["s0", "s1", "s2"]:
        digest = stage.write_bytes(f"{unit}.bin", unit.encode())
        manifest.record(UnitResult.ok(unit, f"{unit}.bin", digest, 2, 0.1, "cfg"))
    manifest.record(UnitResult.failed("s3", "s3 frame 7: broken"))
    manifest.flush()

    reloaded = Manifest(stage)
    assert reloaded.pending(["s0", "s1", "s2", "s3", "s4"]) == ["s3", "s4"]
    stage.delete("s1.bin")  # a deleted output is recomputed
    stage.write_bytes("s2.bin", b"tampered")  # so is a changed one
    assert Manifest(stage).pending(["s0", "s1", "s2"]) == ["s1", "s2"]
    assert [r.id for r in reloaded.errors()] == ["s3"]
