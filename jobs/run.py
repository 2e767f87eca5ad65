"""`sas-ray run` and `sas-ray demo`: the stages of one pipeline config in order, then a markdown report of them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jobs.runtime import StageReport
from sas_ray.config import EvaluateConfig, PipelineConfig, parse_config
from sas_ray.errors import SasError
from sas_ray.storage import Storage, absolute_root

RUNNERS = {  # stage -> its `run_*(cfg, address)`; extract returns one report per teacher
    "prepare": "jobs.prepare:run_prepare",
    "extract": "jobs.extract:run_extract",
    "capability": "jobs.capability:run_capability",
    "fuse": "jobs.fuse:run_fuse",
    "superpoints": "jobs.superpoints:run_superpoints",
    "distill": "jobs.distill:run_distill",
    "predict": "jobs.predict:run_predict",
    "evaluate": "jobs.evaluate:run_evaluate",
}
REPORT = "report.md"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "demo-pipeline.yaml"
DEMO_OUTPUT = "out/demo"  # the demo config's paths all live under this folder; --output moves them
DEMO_TEACHERS = "teachers"  # {output}/teachers/: the simulated teachers' rows
DEMO_QUERIES = ("a sofa in a scene", "a bed in a scene")  # prompts of the vocabulary: the simulated teachers know them
PICTURES = (".png", ".ply")


@dataclass
class PipelineResult:
    """The stage reports of one run, where its report went, and why it stopped early (None = it ran to the end)."""

    reports: list[StageReport] = field(default_factory=list)
    report_url: str = ""
    pictures: list[str] = field(default_factory=list)  # PNGs, then PLYs (point clouds for 3D viewers)
    stopped: str | None = None
    headline: list[str] = field(default_factory=list)  # lines printed before the stage summaries

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.reports)

    def summary(self) -> str:
        lines = [*self.headline, *(r.summary() for r in self.reports)]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        lines += [f"picture: {p}" for p in self.pictures if p.endswith(".png")]
        lines += [f"3D point cloud (PLY, for a 3D viewer): {p}" for p in self.pictures if p.endswith(".ply")]
        lines.append(f"report: {self.report_url}")
        return "\n".join(lines)


def _runner(stage: str):
    module, func = RUNNERS[stage].split(":")
    return getattr(importlib.import_module(module), func)


def _link(root: Storage, target: Storage, *parts: str) -> str:
    """A link from the report at `root` to `target`/parts: relative when it lies under the report's folder."""
    url = absolute_root(target.url(*parts))
    prefix = absolute_root(root.url()) + "/"
    return url[len(prefix):] if url.startswith(prefix) else url


def evaluation_pictures(cfg: EvaluateConfig) -> tuple[Storage, list[str]]:
    """An evaluation's folder and the paths in it of its confusion matrix and per-scene pictures, in order."""
    from jobs.evaluate import EVALUATE

    stage = Storage(cfg.output, dict(cfg.storage.options)).child(EVALUATE, cfg.folder)
    found = [name for name in stage.list() if name.endswith(PICTURES)]
    for scene in stage.list("scenes"):
        found += [f"scenes/{scene}/{name}" for name in stage.child("scenes", scene).list() if name.endswith(PICTURES)]
    return stage, found


def write_report(cfg: PipelineConfig, result: PipelineResult, source: str, preface: list[str] = ()) -> None:
    """{cfg.output}/report.md: `preface`, each stage's summary, then links to the evaluation's table and pictures."""
    root = Storage(cfg.output, dict(cfg.stages()[-1][1].storage.options))  # the report sits beside that output
    lines = [f"# sas-ray run: {source}", "", *preface, "| stage | done | skipped | failed | seconds | ran because |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.done} | {r.skipped} | {r.failed} | {r.seconds:.1f} | {r.why().replace('|', '/')} |"
              for r in result.reports]
    if result.stopped:
        lines += ["", f"**Stopped:** {result.stopped}"]
    for r in result.reports:
        lines += ["", f"## {r.stage}", "", "```text", r.summary(), "```"]
    if cfg.capability is not None:
        from jobs.capability import CAPABILITY, CAPABILITY_LABELS, HEATMAP

        folder = CAPABILITY if cfg.capability.source == "diffusion" else CAPABILITY_LABELS
        stage = Storage(cfg.capability.output, dict(cfg.capability.storage.options)).child(folder)
        if stage.exists(HEATMAP):
            lines += ["", "## Capability", "", f"![capability]({_link(root, stage, HEATMAP)})"]
    if cfg.evaluate is not None and any(r.stage.startswith("evaluate") and r.done for r in result.reports):
        stage, pictures = evaluation_pictures(cfg.evaluate)
        pictures.sort(key=lambda p: not p.endswith(".png"))
        result.pictures = [stage.url(p) for p in pictures]
        lines += ["", "## Evaluation", "", f"- [per-class table]({_link(root, stage, 'per_class.md')})",
                  f"- [summary]({_link(root, stage, 'summary.json')})"]
        lines += [f"- 3D point cloud: [{p}]({_link(root, stage, p)})" for p in pictures if p.endswith(".ply")]
        lines += [f"\n![{p}]({_link(root, stage, p)})" for p in pictures if p.endswith(".png")]
    root.write_bytes(REPORT, ("\n".join(lines) + "\n").encode())
    result.report_url = root.url(REPORT)


def run_pipeline(cfg: PipelineConfig, address: str | None = None, source: str = "<config>",
                 result: PipelineResult | None = None, preface: list[str] = ()) -> PipelineResult:
    """Run every configured stage in order. A stage with failed units, or one that raises, stops the run (what the
    finished units wrote stays); the report (`preface` first) is written either way."""
    result = result or PipelineResult()
    try:
        for stage, stage_cfg in cfg.stages():
            try:
                reports = _runner(stage)(stage_cfg, address)
            except SasError as err:
                result.stopped = f"stage {stage!r} failed: {err}"
                raise SasError(result.stopped) from err
            except Exception as err:
                result.stopped = f"stage {stage!r} failed: {type(err).__name__}: {err}"
                err.add_note(f"in `sas-ray run`, stage {stage!r}")
                raise
            reports = reports if isinstance(reports, list) else [reports]
            result.reports += reports
            failed = sum(r.failed for r in reports)
            if failed:
                result.stopped = f"stage {stage!r}: {failed} unit(s) failed; later stages not run"
                break
    finally:
        write_report(cfg, result, source, preface)
    return result


def main(config: str, overrides: list[str], address: str | None) -> PipelineResult:
    """Run several stages from one YAML file whose top-level keys are stage names (prepare, extract, capability, fuse,
    superpoints, distill, predict, evaluate), each holding that stage's config as `sas-ray <stage>` reads it; absent
    stages are not run. Stages run in that order, each skipping the units already done. A stage with failed units
    or an error stops the run. Writes {output}/report.md, output = the last configured stage's `output`
    (evaluate's when it runs), with every stage's summary and links to the evaluation's table and pictures."""
    from jobs.cli import load_stage_config

    return run_pipeline(load_stage_config(config, overrides, PipelineConfig), address, source=config)


def _relocate(node, output: str):
    """The demo config with every path under out/demo moved under `output`."""
    if isinstance(node, dict):
        return {k: _relocate(v, output) for k, v in node.items()}
    if isinstance(node, list):
        return [_relocate(v, output) for v in node]
    if isinstance(node, str) and (node == DEMO_OUTPUT or node.startswith(DEMO_OUTPUT + "/")):
        return output.rstrip("/") + node[len(DEMO_OUTPUT):]
    return node


def demo_config(output: str = DEMO_OUTPUT, overrides: list[str] = ()) -> PipelineConfig:
    """configs/demo-pipeline.yaml with its outputs under `output` and `--set` overrides applied."""
    from jobs.cli import validated

    if not DEMO_CONFIG.exists():
        raise SasError(f"{DEMO_CONFIG}: demo config not found (sas-ray demo runs from a source checkout)")
    return validated(_relocate(yaml.safe_load(DEMO_CONFIG.read_text()), output), list(overrides), PipelineConfig,
                     str(DEMO_CONFIG))


def demo_teachers_config(output: str = DEMO_OUTPUT):
    """configs/study.yaml at a demo size (3 rooms of 6 frames measure capability, 3 are evaluated), without
    distillation and the annotation-free path, under {output}/teachers/: the simulated teachers' rows of the demo."""
    from jobs.study import StudyConfig

    data = yaml.safe_load((CONFIGS / "study.yaml").read_text())
    data.update(output=f"{output.rstrip('/')}/{DEMO_TEACHERS}", report=None, calibration_scenes=3, diffusion=None,
                progress=True)
    data["dataset"].update(num_scenes=6, frames_per_scene=6)
    return parse_config(data, StudyConfig, source=str(CONFIGS / "study.yaml"))


def teacher_rows_markdown(rows: list[dict], pictures: list[str], scenes: dict) -> list[str]:
    """The demo report's first section: the simulated teachers' rows, what they are, and pictures of the fusion."""
    lines = ["## The method on two simulated teachers of known skill", "",
             "Teachers A and B are **simulated** (`simulated-label`, sas_ray/models/simulated_label.py): they read "
             "each frame's ground truth and err on purpose, A good at large structures (walls, floors, beds), B at "
             "small objects (chairs, tables, toilets), both bleeding across edges and unsure in some views. They "
             "stand in for SAS's LSeg and SEEM so that the method's effect is visible in minutes on a CPU: each "
             "teacher's capability is measured on the label images of "
             f"{len(scenes['calibration'])} rooms, and the features of {len(scenes['evaluation'])} other rooms are "
             "fused and scored (docs/method.md §5; the full ablation with distillation: docs/study.md).", "",
             "| row | mIoU (%) | mAcc (%) |", "|---|---:|---:|"]
    lines += [f"| {r['name']} | {r['miou']:.1f} | {r['macc']:.1f} |" for r in rows]
    miou = {r["key"]: r["miou"] for r in rows}
    margin = miou["capability"] - max(miou["teacher-a"], miou["teacher-b"])
    verdict = f"beats both teachers (+{margin:.1f} mIoU over the better one)" if margin > 0 else \
        "**does not beat** both teachers"
    helps = "helps" if miou["capability-sp"] > miou["capability"] else "**does not help**"
    lines += ["", f"Capability fusion {verdict}; averaging it over superpoints {helps}.", ""]
    lines += [f"![capability fusion: {p.rsplit('/', 1)[-1]}]({p})\n" for p in pictures]
    lines += ["## The whole chain with tiny random models", "",
              "Every stage below runs the real model architectures (OpenCLIP dense, SAM + CLIP, Stable Diffusion, SAM) "
              "at tiny sizes with **random weights**: they exercise every code path, and their mIoU (a few %) is what "
              "random features score. Real runs give each model its `weights:` (configs/scannet.yaml).", ""]
    return lines


def demo(output: str, overrides: list[str], address: str | None) -> PipelineResult:
    """SAS in a few minutes on the CPU. First the method's effect: two simulated teachers of known skill on
    synthetic rooms, their capability from labelled rooms, direct add vs capability fusion vs capability fusion
    averaged over superpoints (the 2D rows of `sas-ray study`, under {output}/teachers/). Then the whole chain with
    the real architectures, tiny and random, on 2 more rooms: render + prepare -> extract (2 teachers) ->
    capability (SD images + SAM pseudo masks) -> capability-guided fuse -> superpoints -> evaluate; distill and
    predict are left out (too slow for CPUs; see `sas-ray distill`). Settings: configs/study.yaml and
    configs/demo-pipeline.yaml (their out/demo paths move under --output; --set applies to the latter). Writes
    {output}/report.md, led by the simulated teachers' rows, and prints the pictures' paths."""
    from jobs.cli import begin
    from jobs.study import run_fusion_rows

    cfg = begin(demo_config(output, overrides))
    teachers = run_fusion_rows(demo_teachers_config(output), address, queries=DEMO_QUERIES)
    rows = teachers.numbers["rows"]
    root = Storage(cfg.output, dict(cfg.evaluate.storage.options))
    stage = Storage(teachers.numbers["pictures"])
    pictures = [f"scenes/{scene}/{name}" for scene in stage.list("scenes")
                for name in stage.child("scenes", scene).list() if name.endswith(".png")]
    preface = teacher_rows_markdown(rows, [_link(root, stage, p) for p in pictures], teachers.numbers["scenes"])
    headline = ["simulated teachers (known skill), mIoU / mAcc %:"]
    headline += [f"  {r['name']}: {r['miou']:.1f} / {r['macc']:.1f}" for r in rows]
    headline += [f"picture: {stage.url(p)}" for p in pictures]
    result = PipelineResult(reports=list(teachers.reports), headline=headline)
    return run_pipeline(cfg, address, source="sas-ray demo", result=result, preface=preface)
