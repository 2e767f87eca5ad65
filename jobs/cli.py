"""`sas-ray`: one subcommand per stage, each reading a YAML config; `--set key.path=value` overrides a key."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import yaml

from sas_ray.errors import SasError

STAGES: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "prepare": ("jobs.prepare:main", "raw dataset (ScanNet/Matterport/nuScenes layout, or synthetic) -> scenes + frame index"),
    "extract": ("jobs.extract:main", "2D teachers on every frame, fused onto 3D points -> per-scene features"),
    "superpoints": ("jobs.superpoints:main", "segmentator superpoints per scene (mesh graph, or kNN graph for lidar)"),
    "capability": ("jobs.capability:main", "per-teacher, per-class capability from SD images + SAM pseudo masks (MCC)"),
    "fuse": ("jobs.fuse:main", "capability-guided fusion of the teachers' point features (or add/linear/single)"),
    "distill": ("jobs.distill:main", "MinkUNet18A distilled from the fused features on Ray Train (stage 1 + stage 2)"),
    "predict": ("jobs.predict:main", "a distilled checkpoint over the scenes -> per-point 3D features"),
    "evaluate": ("jobs.evaluate:main", "per-class mIoU/mAcc tables, confusion PNG, label and text-query PLY/PNG"),
    "run": ("jobs.run:main", "several stages from one YAML (keys = stage names), in order -> {output}/report.md"),
    "demo": ("jobs.run:demo", "the chain on synthetic rooms with tiny models on the CPU (no distill/predict)"),
    "study": ("jobs.study:main", "the SAS ablation on synthetic rooms with simulated teachers -> docs/study.md"),
}
NO_CONFIG = {"demo"}  # commands whose config is built in; they take --output instead
COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function adding its arguments and `run` handler, one-line help)
    "submit": ("jobs.submit:add_submit_command", "a stage on a Ray cluster via the Ray Jobs API, running this checkout's code"),
    "job": ("jobs.submit:add_job_command", "a submitted job's status, logs (--follow) or stop; `list`: the cluster's jobs"),
}

EPILOG = """Every stage is resumable: rerunning the same command skips units whose manifest row is ok and whose
output hash still matches. Outputs go to the config's `output` URL (a local path, s3://bucket/prefix, memory://).
Ray: joins $RAY_ADDRESS if set, else starts a local Ray bound to 127.0.0.1."""


def _set_key(data: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise SasError(f"--set expects key.path=value, got {assignment!r}")
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = yaml.safe_load(raw)


def load_stage_config(path: str, overrides: list[str], model):
    """Read the YAML at `path`, apply `--set` overrides, validate against `model` (errors name file and key)."""
    import fsspec

    from sas_ray.config import parse_config
    from sas_ray.errors import ConfigError

    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for assignment in overrides:
        _set_key(data, assignment)
    return parse_config(data, model, source=path)


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(__import__(module, fromlist=[func]), func)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The CLI; only the `selected` command's module is imported (for its full help and arguments)."""
    parser = argparse.ArgumentParser(
        prog="sas-ray", description="Open-vocabulary 3D scene segmentation (SAS) over whole datasets on Ray.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (target, help_text) in STAGES.items():
        doc = ((_resolve(target).__doc__ if name == selected else None) or help_text).strip()
        p = sub.add_parser(name, help=help_text, description=doc, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in NO_CONFIG:
            p.add_argument("--output", default="out/demo", metavar="DIR", help="output root (default: out/demo)")
        else:
            p.add_argument("--config", required=True, help="YAML config file (local path or URL)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set dataset.scenes=[scene0000_00]")
        p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    for name, (target, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _resolve(target)(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    try:
        if args.stage in COMMANDS:
            return args.run(args)
        target, _ = STAGES[args.stage]
        source = args.output if args.stage in NO_CONFIG else args.config
        report = _resolve(target)(source, args.set, args.address)
    except SasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
