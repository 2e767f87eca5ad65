"""`sas-ray run`: one YAML runs prepare -> extract -> fuse -> evaluate in order, writes a report naming every stage,
skips everything on a second run, and stops at a failing stage with a message naming it; `sas-ray demo`'s config."""

import re

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.run import DEMO_CONFIG, demo_config
from sas_ray.config import PipelineConfig, parse_config
from sas_ray.errors import ConfigError

TINY_TEXT = {"name": "openclip-text", "tiny": True}


def _pipeline(tmp_path) -> dict:
    prepared, output = str(tmp_path / "prepared"), str(tmp_path / "out")
    teacher = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 2}
    return {
        "prepare": {"dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val",
                                "synthetic": {"num_scenes": 2, "frames_per_scene": 1, "size": "tiny",
                                              "points_per_scene": 600, "seed": 3}},
                    "output": prepared, "progress": False},
        "extract": {"prepared": prepared, "output": output, "progress": False,
                    "teachers": [{**teacher, "output_name": "flip", "options": {"flip": True}},
                                 {**teacher, "output_name": "plain", "options": {"flip": False}}]},
        "fuse": {"output": output, "teachers": ["flip", "plain"], "method": "add", "progress": False},
        "evaluate": {"prepared": prepared, "output": output, "text_encoder": TINY_TEXT, "queries": ["a sofa"],
                     "max_ply_scenes": 1, "progress": False},
    }


def _rows(report: str) -> dict[str, tuple[int, int, int]]:
    """stage -> (done, skipped, failed) from the report's table."""
    return {m[1]: (int(m[2]), int(m[3]), int(m[4]))
            for m in re.finditer(r"^\| (\S+) \| (\d+) \| (\d+) \| (\d+) \|", report, re.M)}


def test_run_writes_report_and_resumes(ray_session, tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(_pipeline(tmp_path)))
    assert cli_main(["run", "--config", str(config)]) == 0
    report_path = tmp_path / "out" / "report.md"
    assert f"report: {report_path}" in capsys.readouterr().out
    report = report_path.read_text()
    assert _rows(report) == {"prepare": (2, 0, 0), "extract[flip]": (2, 0, 0), "extract[plain]": (2, 0, 0),
                             "fuse[add]": (2, 0, 0), "evaluate[fusion]": (2, 0, 0)}
    for section in ("## prepare", "## extract[flip]", "## extract[plain]", "## fuse[add]", "## evaluate[fusion]"):
        assert section in report
    # links are relative to the report's folder and point at files that exist
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert "evaluate/fused/per_class.md" in links and "evaluate/fused/confusion.png" in links
    assert "evaluate/fused/scenes/scene0000_00/birdseye.png" in links
    assert any(re.fullmatch(r"evaluate/fused/scenes/scene0000_00/view-\d+\.png", link) for link in links)
    assert all((tmp_path / "out" / link).is_file() for link in links)

    assert cli_main(["run", "--config", str(config)]) == 0
    again = _rows(report_path.read_text())
    assert again["prepare"] == again["extract[flip]"] == again["extract[plain]"] == again["fuse[add]"] == (0, 2, 0)
    assert again["evaluate[fusion]"] == (2, 0, 0)  # evaluate keeps no manifest: it re-scores (cheap)


def test_failing_stage_stops_the_run_and_is_named(ray_session, tmp_path, capsys):
    pipeline = _pipeline(tmp_path)
    del pipeline["extract"]  # fuse finds no teacher features: every later stage must not run
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline))
    code = cli_main(["run", "--config", str(config)])
    err = capsys.readouterr().err
    report = (tmp_path / "out" / "report.md").read_text()
    assert code == 2 and "error: stage 'fuse' failed: teacher 'flip' has no features" in err
    assert "**Stopped:** stage 'fuse' failed" in report
    assert "prepare" in _rows(report) and not any(s.startswith("evaluate") for s in _rows(report))


def test_pipeline_config_refuses_unknown_and_empty(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train'"):
        parse_config({"train": {}}, PipelineConfig)
    with pytest.raises(ConfigError, match="no stage configured"):
        parse_config({}, PipelineConfig)
    assert parse_config(_pipeline(tmp_path), PipelineConfig).output == str(tmp_path / "out")  # evaluate's


def test_demo_config_moves_every_path_under_output(tmp_path):
    out = str(tmp_path / "demo")
    cfg = demo_config(out, ["evaluate.max_ply_scenes=1"])
    assert [name for name, _ in cfg.stages()] == ["prepare", "extract", "capability", "fuse", "superpoints",
                                                  "evaluate"]
    assert cfg.prepare.dataset.root == f"{out}/raw" and cfg.prepare.output == f"{out}/prepared"
    assert {s.output for name, s in cfg.stages() if name != "prepare"} == {out} and cfg.output == out
    assert cfg.evaluate.max_ply_scenes == 1 and cfg.fuse.method == "capability"
    assert "out/demo" not in str(demo_config(out).model_dump())
    assert parse_config(yaml.safe_load(DEMO_CONFIG.read_text()), PipelineConfig).output == "out/demo"


@pytest.mark.parametrize("name", ["scannet", "matterport", "nuscenes"])
def test_dataset_configs_parse_with_every_stage(name):
    cfg = parse_config(yaml.safe_load((DEMO_CONFIG.parent / f"{name}.yaml").read_text()), PipelineConfig)
    assert [stage for stage, _ in cfg.stages()] == ["prepare", "extract", "capability", "fuse", "superpoints",
                                                    "distill", "predict", "evaluate"]
    assert cfg.prepare.dataset.layout == name and not cfg.prepare.dataset.synthetic
    assert all(t.weights and not t.tiny and t.gpus == 1 for t in cfg.extract.teachers)
    assert cfg.distill.use_gpu and cfg.distill.num_workers[0] < cfg.distill.num_workers[1]
