"""Recipes and done-checks without Ray: what a changed recipe says, `verify`, weights digests remembered per machine,
the same bytes for the same tensors in every process, S3 multipart leftovers, and the CLI's --verify/--wait."""

import os
import subprocess
import sys

import pytest
import torch

import sas_ray.lineage as lineage
from jobs.cli import _set_key, _storage_flags, build_parser
from sas_ray.lineage import content_digest, stage_recipe
from sas_ray.manifest import Manifest, UnitResult
from sas_ray.storage import Storage, sha256_bytes, tensors_blob


def test_a_recipe_says_what_changed():
    old = stage_recipe(1, k_thresh=0.01, min_verts=60).unit({"scene": "a"})
    assert stage_recipe(1, k_thresh=0.02, min_verts=60).unit({"scene": "a"}).change_from(old.config, old.inputs) \
        == "config changed: k_thresh 0.01 -> 0.02"
    assert stage_recipe(2, k_thresh=0.01, min_verts=60).unit({"scene": "a"}).change_from(old.config, old.inputs) \
        == "config changed: version 1 -> 2"
    assert stage_recipe(1, k_thresh=0.01, min_verts=60).unit({"scene": "b"}).change_from(old.config, old.inputs) \
        == "input changed: scene"
    assert stage_recipe(1, k_thresh=0.01, min_verts=60).unit({"scene": "a"}).digest == old.digest


def test_a_stage_recipe_holds_only_its_declared_fields():
    from sas_ray.config import SuperpointsConfig

    def digest(**changes) -> str:
        cfg = SuperpointsConfig.model_validate({"prepared": "p", "output": "o", **changes})
        return stage_recipe(1, cfg, ("mode", "k_thresh", "min_verts", "knn")).unit().digest

    base = digest()
    assert digest(output="elsewhere", progress=False, scenes=["s"], storage={"verify": True}) == base
    assert digest(k_thresh=0.05) != base and digest(knn=8) != base


def test_verify_rehashes_and_keeps_copied_outputs(tmp_path):
    stage = Storage(str(tmp_path / "stage"))
    recipe = stage_recipe(1).unit()
    manifest = Manifest(stage)
    for unit in ("s0", "s1", "s2"):
        manifest.record(UnitResult.ok(unit, f"{unit}.bin", stage.put(f"{unit}.bin", b"x" * 10), 0.0, recipe))
    manifest.flush()
    os.utime(tmp_path / "stage" / "s1.bin", ns=(1, 1))  # touched (copied without times): same bytes
    (tmp_path / "stage" / "s2.bin").write_bytes(b"y" * 10)  # same size, other bytes
    os.utime(tmp_path / "stage" / "s2.bin", ns=(1, 1))
    units = {u: recipe for u in ("s0", "s1", "s2")}

    listed = Manifest(stage).plan(units)
    assert listed.todo == ["s1", "s2"] and listed.reasons == {"output changed since it was written": 2}
    verified = Manifest(stage)
    plan = verified.plan(units, verify=True)
    assert plan.todo == ["s2"] and plan.reasons == {"output changed (sha256 differs)": 1}
    verified.flush()
    assert Manifest(stage).plan(units).todo == ["s2"]  # s1's new version was adopted


def test_weights_digest_is_the_content_hash_remembered_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 1000)
    assert content_digest(str(weights)) == sha256_bytes(b"w" * 1000)
    reads = []
    real_cat = lineage.retrying
    monkeypatch.setattr(lineage, "retrying", lambda what, fn, *a: reads.append(what) or real_cat(what, fn, *a))
    assert content_digest(str(weights)) == sha256_bytes(b"w" * 1000)
    assert not [r for r in reads if r.startswith("reading")]  # unchanged: one stat, no read
    weights.write_bytes(b"v" * 1000)
    assert content_digest(str(weights)) == sha256_bytes(b"v" * 1000)  # rewritten in place: hashed again
    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.bin").write_bytes(b"u")
    (folder / "vae.bin").write_bytes(b"v")
    first = content_digest(str(folder))
    (folder / "vae.bin").write_bytes(b"V")
    assert content_digest(str(folder)) != first and content_digest(None) == ""


def test_same_tensors_same_bytes_in_every_process():
    tensors = {"feat": torch.arange(12, dtype=torch.float16).reshape(4, 3), "mask_full": torch.ones(5, dtype=bool)}
    metadata = {f"key{i}": str(i) for i in range(12)}  # safetensors writes this map in per-process hash order
    here = sha256_bytes(tensors_blob(tensors, metadata))
    code = ("import torch, sys; from sas_ray.storage import tensors_blob, sha256_bytes; "
            "t = {'feat': torch.arange(12, dtype=torch.float16).reshape(4, 3), 'mask_full': torch.ones(5, dtype=bool)};"
            "print(sha256_bytes(tensors_blob(t, {f'key{i}': str(i) for i in range(12)})))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there


def test_unfinished_multipart_uploads_are_no_objects_and_are_swept(s3_bucket):
    root, options = s3_bucket
    stage = Storage(root + "/features/t", options)
    stage.put("done.safetensors", b"ok")
    bucket, prefix = stage.root.split("/", 1)
    upload = stage.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/killed.safetensors")
    stage.fs.call_s3("upload_part", Bucket=bucket, Key=f"{prefix}/killed.safetensors", PartNumber=1,
                     UploadId=upload["UploadId"], Body=b"p" * 1000)
    assert list(stage.listing()) == ["done.safetensors"] and not stage.exists("killed.safetensors")
    assert stage.sweep_temporaries() == 1  # moto dates every upload 2010-11-10: older than an hour
    assert not stage.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix).get("Uploads")


def test_cli_verify_and_wait_reach_every_stage():
    args = build_parser("run").parse_args(["run", "--config", "p.yaml", "--verify", "--wait"])
    data = {"prepare": {"output": "x"}, "superpoints": {"output": "y", "storage": {"options": {"a": 1}}}}
    for assignment in _storage_flags(args):
        _set_key(data, assignment)
    assert data["superpoints"]["storage"] == {"options": {"a": 1}, "verify": True, "wait": True}
    assert data["prepare"]["storage"] == {"verify": True, "wait": True}
    single = build_parser("superpoints").parse_args(["superpoints", "--config", "s.yaml", "--verify"])
    assert _storage_flags(single) == ["storage.verify=true"]


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        content_digest(str(tmp_path / "missing.safetensors"))
