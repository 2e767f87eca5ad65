"""The `sas-ray` command before any work starts: preflight mistakes fail fast with the key named and a non-zero exit
before Ray starts, without a traceback; `--set` list indices and its own errors; `sas-ray config` and docs/config.md
generated from the config models; --help and README cite files of this repository only."""

import json
import re
from pathlib import Path

import pytest
import yaml

from jobs.cli import STAGES, build_parser
from jobs.cli import main as cli_main
from jobs.preflight import Demand, Resources, demands, memory_estimates, resource_problems, size_problems
from jobs.reference import keys, markdown_reference, stage_models

REPO = Path(__file__).parents[2]
TINY = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 2}
TEXT = {"name": "openclip-text", "tiny": True}


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start or join Ray fails the test: preflight errors must come first."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the preflight refused the config")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a fresh CLI process, whatever ran before


@pytest.fixture
def prepared(tmp_path):
    """A hand-made prepared root: dataset.json of a ScanNet-preset dataset with two scenes."""
    root = tmp_path / "prepared"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"layout": "scannet", "preset": "scannet", "split": "val",
                                                   "scenes": ["scene0000_00", "scene0001_00"]}))
    return str(root)


def _run(tmp_path, capfd, command: str, cfg: dict, *extra: str) -> tuple[int, list[str]]:
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = cli_main([command, "--config", str(path), *extra])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, err.splitlines()


def _one(lines: list[str], fragment: str) -> str:
    found = [line for line in lines if fragment in line]
    assert len(found) == 1, (fragment, lines)
    assert found[0].startswith("error: ")
    return found[0]


def test_gpu_on_a_machine_without_one_names_the_key(tmp_path, capfd, no_ray, prepared, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # whatever this machine has, Ray would see no GPU
    cfg = {"prepared": prepared, "output": str(tmp_path / "out"), "use_gpu": True, "stage2": {"epochs": 0}}
    code, lines = _run(tmp_path, capfd, "distill", cfg)
    assert code == 2
    assert "use_gpu: true asks for a GPU but this machine has none" in _one(lines, "use_gpu")
    cfg = {"prepared": prepared, "output": str(tmp_path / "out"), "teachers": [{**TINY, "gpus": 0.5},
                                                                               {**TINY, "cpus": 64}]}
    code, lines = _run(tmp_path, capfd, "extract", cfg)
    assert code == 2 and len(lines) == 2
    assert "teachers.0.gpus: 0.5 asks for a GPU" in _one(lines, "teachers.0.gpus")
    assert "teachers.1.cpus: 64 asks for 64 CPUs per worker but the largest node of this machine" in lines[1]


def test_resources_an_autoscaler_can_add_pass():
    demand = [Demand("distill.use_gpu", 1, "distill.num_workers", 1, 2),
              Demand("extract.teachers.0.gpus", 0.5, "extract.teachers.0.cpus", 1, 4)]
    none = Resources(2, 0, 0, "this machine")
    assert [p.split(":")[0] for p in resource_problems_of(demand, none)] == ["distill.use_gpu",
                                                                            "extract.teachers.0.gpus"]
    # a head without GPUs whose autoscaler may add up to 4 one-GPU nodes: schedulable, no problem
    assert resource_problems_of(demand, Resources(8, 1, 4, "the cluster (autoscaler included)")) == []
    assert "2 x 1 GPUs at once" in resource_problems_of(demand, Resources(8, 1, 1, "the cluster"))[0]


def resource_problems_of(demand: list[Demand], have: Resources) -> list[str]:
    import jobs.preflight as preflight

    original = preflight.demands
    preflight.demands = lambda keyed: demand
    try:
        return resource_problems([], have)
    finally:
        preflight.demands = original


def test_placeholders_missing_inputs_and_empty_splits(tmp_path, capfd, no_ray, prepared):
    # the shipped ScanNet pipeline: one line per placeholder, before anything else is tried
    code = cli_main(["run", "--config", str(REPO / "configs" / "scannet.yaml")])
    out, err = capfd.readouterr()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == ["error: prepare.dataset.root (and 22 more keys): 'YOUR-BUCKET' is a placeholder; "
                                "fill in your own value"]
    raw = tmp_path / "raw" / "scannet_3d" / "val"
    raw.mkdir(parents=True)
    (raw / "scene0000_00_vh_clean_2.pth").write_bytes(b"")
    base = {"dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val"},
            "output": str(tmp_path / "prep")}
    code, lines = _run(tmp_path, capfd, "prepare", {**base, "dataset": {**base["dataset"], "root": str(tmp_path / "rw")}})
    assert code == 2 and "dataset.root: " in _one(lines, "does not exist")
    code, lines = _run(tmp_path, capfd, "prepare", {**base, "dataset": {**base["dataset"], "split": "vall"}})
    assert code == 2 and "dataset.split: " in _one(lines, "has no scannet scene in split 'vall'")
    code, lines = _run(tmp_path, capfd, "superpoints", {"prepared": str(tmp_path / "nothing"),
                                                        "output": str(tmp_path / "out")})
    assert code == 2 and "prepared: " in _one(lines, "does not exist; run `sas-ray prepare` first")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "dataset.json").write_text(json.dumps({"preset": "scannet", "scenes": []}))
    code, lines = _run(tmp_path, capfd, "superpoints", {"prepared": str(tmp_path / "empty"),
                                                        "output": str(tmp_path / "out")})
    assert code == 2 and "prepared: " in _one(lines, "has no prepared scene")
    code, lines = _run(tmp_path, capfd, "superpoints", {"prepared": prepared, "output": str(tmp_path / "out"),
                                                        "scenes": ["scene0000_00", "scene0009_00"]})
    assert code == 2 and "scenes: ['scene0009_00'] are not scenes of" in _one(lines, "scene0009_00")
    (tmp_path / "file").write_text("")
    code, lines = _run(tmp_path, capfd, "superpoints", {"prepared": prepared, "output": str(tmp_path / "file" / "o")})
    assert code == 2 and "output: " in _one(lines, "is a file")


def test_label_set_that_does_not_match_the_data_is_refused(tmp_path, capfd, no_ray, prepared):
    cfg = {"prepared": prepared, "output": str(tmp_path / "out"), "text_encoder": TEXT, "label_set": "matterport160"}
    code, lines = _run(tmp_path, capfd, "evaluate", cfg)
    assert code == 2
    assert _one(lines, "label_set") == (
        "error: label_set: label_set 'matterport160' does not match the data's labels ('scannet20'): it names class "
        "1 'door', the data's label 1 is 'floor'; use one of ['matterport21', 'scannet20']")


def test_unknown_names_and_options_are_one_line_each(tmp_path, capfd, no_ray, prepared):
    cfg = {"prepared": prepared, "output": str(tmp_path / "out"),
           "teachers": [{**TINY, "name": "openclip-dens"}, {**TINY, "options": {"archh": "x"}},
                        {**TINY, "tiny": False}]}
    code, lines = _run(tmp_path, capfd, "extract", cfg, "--set", "teachers.2.weights=/no/such/ckpt.pt")
    assert code == 2 and len(lines) == 3
    assert "teachers.0: unknown teacher 'openclip-dens'; known: [" in _one(lines, "'openclip-dens'")
    assert "teachers.1: teacher 'openclip-dense' has no option(s) ['archh']; its options: [" in lines[1]
    assert lines[2] == "error: teachers.2.weights: /no/such/ckpt.pt does not exist"


def test_sizes_beyond_this_machine_ask_for_yes(tmp_path, capfd, no_ray, prepared):
    cfg = {"prepared": prepared, "output": str(tmp_path / "out"), "teachers": [TINY], "image_size": [100000, 100000]}
    code, lines = _run(tmp_path, capfd, "extract", cfg)
    assert code == 2
    assert re.search(r"image_size: frames of 100000x100000 .* need at least [\d,.]+ GiB in one task, this machine "
                     r"has [\d,.]+ GiB; lower it, or pass --yes", _one(lines, "image_size"))
    synthetic = {"dataset": {"layout": "scannet", "root": str(tmp_path / "raw"),
                             "synthetic": {"points_per_scene": 10**10}}, "output": str(tmp_path / "prep")}
    code, lines = _run(tmp_path, capfd, "prepare", synthetic)
    assert code == 2 and "dataset.synthetic.points_per_scene: 10,000,000,000 points" in lines[0]
    keyed = [("", "prepare", stage_models()["prepare"].model_validate(synthetic))]
    assert memory_estimates(keyed)[0][1] == 32 * 10**10 and size_problems(keyed, assume_yes=True) == []


def test_storage_missing_bucket_and_missing_credentials_name_the_bucket(tmp_path, capfd, no_ray, s3_server,
                                                                         monkeypatch, prepared):
    cfg = {"prepared": prepared, "output": "s3://no-such-bucket/out", "storage": {"options": s3_server}}
    code, lines = _run(tmp_path, capfd, "superpoints", cfg)
    assert code == 2 and "output: bucket 'no-such-bucket' does not exist" in _one(lines, "no-such-bucket")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    anonymous = {"endpoint_url": s3_server["endpoint_url"], "client_kwargs": s3_server["client_kwargs"]}
    cfg = {"prepared": prepared, "output": "s3://some-bucket/out", "storage": {"options": anonymous}}
    code, lines = _run(tmp_path, capfd, "superpoints", cfg)
    assert code == 2 and "output: no credentials for s3://some-bucket/out (bucket 'some-bucket')" in lines[0]


def test_set_takes_list_indices_and_reports_its_own_errors(tmp_path, capfd, no_ray, prepared):
    from jobs.cli import load_stage_config
    from sas_ray.config import PipelineConfig

    teachers = [TINY, {**TINY, "name": "sam-clip"}]
    path = tmp_path / "run.yaml"
    # YAML anchors: extract and capability share one teachers list in the file
    path.write_text("extract: {prepared: %s, output: %s, teachers: &t %s}\n"
                    "capability: {output: %s, teachers: *t, text_encoder: %s}\n"
                    % (prepared, tmp_path / "o", json.dumps(teachers), tmp_path / "o", json.dumps(TEXT)))
    cfg = load_stage_config(str(path), ["extract.teachers.1.batch_size=5"], PipelineConfig)
    assert [t.batch_size for t in cfg.extract.teachers] == [2, 5]
    assert [t.batch_size for t in cfg.capability.teachers] == [2, 2]  # a --set changes only the key it names
    for assignment, message in [
        ("extract.teachers.2.gpus=1", "error: --set extract.teachers.2.gpus=1: extract.teachers is a list of 2; "
                                      "use an index 0..1"),
        ("extract.teachers.0.batch_size=abc", "error: --set extract.teachers.0.batch_size=abc: key "
                                              "'extract.teachers.0.batch_size': Input should be a valid integer, "
                                              "unable to parse string as an integer (got 'abc')"),
        ("extract.teachers.0.batch_size.x=1", "error: --set extract.teachers.0.batch_size.x=1: "
                                              "extract.teachers.0.batch_size is 2, not a section with keys"),
        ("extract.scenes=[a, b", "error: --set extract.scenes=[a, b: the value is not valid YAML"),
        ("extract.teacher.0=1", "error: --set extract.teacher.0=1: unknown key 'extract.teacher'"),
        ("extract", "error: --set extract: expected KEY=VALUE, e.g. --set teachers.0.batch_size=2"),
    ]:
        assert cli_main(["run", "--config", str(path), "--set", assignment]) == 2
        out, err = capfd.readouterr()
        assert err.startswith(message) and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_config_reference_covers_every_key_and_docs_are_current(capfd):
    for stage, model in stage_models().items():
        for key in keys(model):
            assert key.meaning, f"{stage}: {key.path} has no comment in its config class"
    assert cli_main(["config", "extract"]) == 0
    out = capfd.readouterr().out
    assert "teachers.N.batch_size  (int >= 1; default 8)\n    frames per model forward" in out
    assert "image_size  ([int, int] or one of: stored or null; default null)" in out
    assert cli_main(["config"]) == 0 and "distill" in capfd.readouterr().out
    assert cli_main(["config", "nonsense"]) == 2
    assert capfd.readouterr().err.startswith("error: unknown stage 'nonsense'; known: prepare, extract")
    generated = markdown_reference()
    assert (REPO / "docs" / "config.md").read_text() == generated, \
        "docs/config.md is stale: run `sas-ray config --markdown > docs/config.md`"


def test_help_and_readme_cite_only_files_of_this_repository():
    outside = re.compile(r"\.\./shared|SPEC\b|DESIGN\.md")
    for text in [(REPO / "README.md").read_text(), build_parser().format_help(), markdown_reference()]:
        assert not outside.search(text), outside.search(text)
    for stage in STAGES:
        parser = build_parser(stage)
        sub = next(a for a in parser._subparsers._group_actions).choices[stage]
        assert not outside.search(sub.format_help()), (stage, outside.search(sub.format_help()))
    for cited in set(re.findall(r"\b(docs/[\w./-]+\.md)", (REPO / "README.md").read_text())):
        assert (REPO / cited).is_file(), cited


def test_demands_name_every_asking_key():
    cfg = stage_models()["run"].model_validate(yaml.safe_load((REPO / "configs" / "scannet.yaml").read_text()))
    keyed = [(f"{name}.", name, stage_cfg) for name, stage_cfg in cfg.stages()]
    assert {d.gpu_key for d in demands(keyed) if d.gpus} == {
        "extract.teachers.0.gpus", "extract.teachers.1.gpus", "capability.teachers.0.gpus",
        "capability.teachers.1.gpus", "capability.diffusion.gpus", "capability.sam.gpus", "distill.use_gpu",
        "predict.use_gpu"}
