"""Lineage through the CLI: `sas-ray run` over prepare -> extract (2 teachers) -> fuse -> superpoints -> predict, then
one change at a time; each change re-runs exactly the units downstream of it, the report says why, and nothing else
runs. Locally and on S3 (moto). Distillation's recipe is checked at the recipe level (a Ray Train run costs more than
this whole test)."""

import re

import torch
import yaml

from jobs.cli import main as cli_main
from jobs.distill import stage_recipe_of
from sas_ray.config import DistillConfig, parse_config
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.manifest import Manifest
from sas_ray.storage import Storage

SCENES = ["scene0000_00", "scene0001_00"]
TEACHER = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 2}


def _pipeline(root: str, options: dict) -> dict:
    prepared, output, storage = f"{root}/prepared", f"{root}/out", {"options": options}
    return {
        "prepare": {"dataset": {"layout": "scannet", "root": f"{root}/raw", "split": "val",
                                "synthetic": {"num_scenes": 2, "frames_per_scene": 1, "size": "tiny",
                                              "points_per_scene": 400, "seed": 3}},
                    "output": prepared, "storage": storage, "progress": False},
        "extract": {"prepared": prepared, "output": output, "storage": storage, "progress": False,
                    "teachers": [{**TEACHER, "output_name": "flip", "options": {"flip": True}},
                                 {**TEACHER, "output_name": "plain", "options": {"flip": False}}]},
        "fuse": {"output": output, "teachers": ["flip", "plain"], "method": "add", "storage": storage,
                 "progress": False},
        "superpoints": {"prepared": prepared, "output": output, "storage": storage, "progress": False},
        "predict": {"prepared": prepared, "output": output, "checkpoint": f"{root}/model.safetensors",
                    "text_space": "test", "repeats": 1, "backend": "torch", "storage": storage, "progress": False},
    }


def _write_model(store: Storage, seed: int) -> None:
    torch.manual_seed(seed)
    model = MinkUNet18A(3, 8)
    store.write_tensors("model.safetensors", model.state_dict(), {"out_channels": "8", "voxel_size": "0.1"})


STAGES = ["prepare", "extract[flip]", "extract[plain]", "fuse[add]", "superpoints", "predict"]


class Pipeline:
    """The pipeline config of one test, the overrides applied so far, and `sas-ray run` over them."""

    def __init__(self, root: str, options: dict, tmp_path, capsys):
        self.root, self.options, self.capsys = root, options, capsys
        self.store = Storage(root, options)
        _write_model(self.store, seed=0)
        self.config = tmp_path / "pipeline.yaml"
        self.config.write_text(yaml.safe_dump(_pipeline(root, options)))
        self.changes: list[str] = []
        self.distill = parse_config({"prepared": f"{root}/prepared", "output": f"{root}/out", "stage2": {"epochs": 0},
                                     "storage": {"options": options}}, DistillConfig)

    def run(self, *changes: str) -> dict[str, tuple[int, int, str]]:
        """stage -> (done, skipped, why the done ones ran), from the summary `sas-ray run` prints."""
        self.changes += changes
        args = ["run", "--config", str(self.config)]
        for change in self.changes:
            args += ["--set", change]
        assert cli_main(args) == 0
        printed = self.capsys.readouterr().out
        pattern = r"^(\S+): (\d+) done, (\d+) already done \(skipped\), 0 failed.*\n(?:  ran because: (.*))?"
        return {m[1]: (int(m[2]), int(m[3]), m[4] or "") for m in re.finditer(pattern, printed, re.M)}

    def distill_recipe(self) -> str:
        """The recipe distillation's stage 1 would train with now."""
        manifest = Manifest(Storage(f"{self.root}/out/distill", self.options))
        return stage_recipe_of(self.distill, "stage1", {"voxel_size": 0.05, "scenes": SCENES}, manifest).digest


def _skipped(rows: dict, *stages: str) -> None:
    for stage in stages:
        assert rows[stage][:2] == (0, 2), (stage, rows[stage])


def _superpoints_and_weights(pipeline: Pipeline) -> None:
    """From scratch, then a superpoint setting, then new model weights at the same path."""
    first = pipeline.run()
    assert {s: first[s][:2] for s in STAGES} == {s: (2, 0) for s in STAGES}
    before = pipeline.distill_recipe()

    # a superpoint setting: superpoints, and what trains on them (distill), not extract, fuse or predict
    rows = pipeline.run("superpoints.min_verts=20")  # (k_thresh changes nothing on these flat-faced rooms)
    assert rows["superpoints"] == (2, 0, "2 config changed: min_verts 60 -> 20")
    _skipped(rows, "prepare", "extract[flip]", "extract[plain]", "fuse[add]", "predict")
    assert pipeline.distill_recipe() != before

    # new weights at the same path (a re-distilled model): predict only; distill's recipe does not read it
    before = pipeline.distill_recipe()
    _write_model(pipeline.store, seed=1)
    rows = pipeline.run()
    assert rows["predict"] == (2, 0, "2 input changed: model")
    _skipped(rows, "prepare", "extract[flip]", "extract[plain]", "fuse[add]", "superpoints")
    assert pipeline.distill_recipe() == before


def test_lineage_on_s3(ray_session, s3_bucket, tmp_path, capsys):
    """Manifests, listings and weights digests through moto."""
    _superpoints_and_weights(Pipeline(*s3_bucket, tmp_path, capsys))


def test_each_change_reruns_exactly_its_downstream_units(ray_session, tmp_path, capsys):
    pipeline = Pipeline(str(tmp_path / "data"), {}, tmp_path, capsys)
    _superpoints_and_weights(pipeline)
    _skipped(pipeline.run(), *STAGES)  # nothing changed: nothing runs

    # the visibility threshold: both teachers' features, then the fused ones (and distill); not superpoints
    before = pipeline.distill_recipe()
    rows = pipeline.run("extract.vis_thres=0.05")
    for teacher in ("flip", "plain"):
        assert rows[f"extract[{teacher}]"] == (2, 0, "2 config changed: vis_thres 0.25 -> 0.05")
    assert rows["fuse[add]"] == (2, 0, "2 input changed: features/flip, features/plain")
    _skipped(rows, "prepare", "superpoints", "predict")
    assert pipeline.distill_recipe() != before

    # one teacher's settings: that teacher and the fusion only
    before = pipeline.distill_recipe()
    teachers = [{**TEACHER, "output_name": "flip", "options": {"flip": True}},
                {**TEACHER, "output_name": "plain", "options": {"flip": False, "input_scale": 1.5}}]
    rows = pipeline.run("extract.teachers=" + yaml.safe_dump(teachers, default_flow_style=True).strip())
    assert rows["extract[plain]"][:2] == (2, 0) and rows["extract[plain]"][2].startswith("2 config changed: teacher")
    assert rows["fuse[add]"] == (2, 0, "2 input changed: features/plain")
    _skipped(rows, "prepare", "extract[flip]", "superpoints", "predict")
    assert pipeline.distill_recipe() != before

    # one output deleted: that scene is recomputed, to the same bytes, so nothing downstream runs
    before = pipeline.distill_recipe()
    pipeline.store.delete(f"out/features/flip/{SCENES[1]}.safetensors")
    rows = pipeline.run()
    assert rows["extract[flip]"] == (1, 1, "1 output missing")
    _skipped(rows, "prepare", "extract[plain]", "fuse[add]", "superpoints", "predict")
    assert pipeline.distill_recipe() == before
