"""`sas-ray`: one subcommand per stage, each reading a YAML config; `--set key.path=value` overrides a key."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import yaml

from sas_ray.errors import ConfigError, SasError

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
    "config": ("jobs.reference:add_config_command", "every key of a stage's config: type, default, meaning"),
}

EPILOG = """Every stage is resumable: rerunning the same command skips units whose manifest row is ok, whose recipe
(the config fields that shape the output, the algorithm's version, the hashes of its inputs and weights) is
unchanged, and whose output is still as written; the summary says why the others ran. One run writes a stage output
at a time (a lease in its folder; --wait waits for another run). Outputs go to the config's `output` URL (a local
path, s3://bucket/prefix, memory://). Before Ray starts, the config is checked (resources, storage, inputs, sizes);
Ray's and the libraries' logs go to {output}/logs/ (-v shows them). Ray: joins $RAY_ADDRESS if set, else starts a
local Ray bound to 127.0.0.1. Config keys: `sas-ray config STAGE` and docs/config.md; the method and its constants:
docs/method.md."""
PIPELINES = {"run", "demo"}  # configs whose top-level keys are stages: --verify/--wait apply to each


def _set_key(data: dict, assignment: str) -> None:
    """Apply one `--set key.path=value` to the YAML mapping: dotted keys, list indices (`teachers.0.batch_size=2`)
    and YAML values; mistakes are the --set's own errors. A leading `*.` applies it under every top-level section
    (each stage of a pipeline config)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. --set teachers.0.batch_size=2")
    if key.startswith("*."):
        for section in data.values():
            if isinstance(section, dict):
                _set_key(section, f"{key[2:]}={raw}")
        return
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({err.problem or err})") from None
    *parents, leaf = key.split(".")
    node, path = data, []
    for part in [*parents, leaf]:
        last = len(path) == len(parents)
        where = ".".join(path) or "the top level"
        if isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                indices = f"use an index 0..{len(node) - 1}" if node else "it has no entries"
                raise ConfigError(f"--set {assignment}: {where} is a list of {len(node)}; {indices}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {where} is {node!r}, not a section with keys")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
        path.append(str(part))


def _unaliased(node):
    """A copy of YAML data in which no two places share one object (as `&anchor` / `*alias` make them)."""
    if isinstance(node, dict):
        return {k: _unaliased(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unaliased(v) for v in node]
    return node


def _blamed(message_key: str, assignments: list[str], original: dict) -> str | None:
    """The last --set assignment that wrote the key an error names, a section holding it, or a section under it
    that the file does not have; None when the error is the file's."""
    for assignment in reversed(assignments):
        key = assignment.partition("=")[0]
        if message_key == key or message_key.startswith(key + ".") or \
                (key.startswith(message_key + ".") and not _has_key(original, message_key)):
            return assignment
    return None


def _has_key(data, key: str) -> bool:
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return False
    return True


def validated(data: dict, overrides: list[str], model, source: str):
    """YAML `data` from `source` with the `--set` overrides applied, validated against `model`: one line per error,
    naming the source and key, or the --set that wrote the key."""
    from pydantic import ValidationError

    from sas_ray.config import error_lines

    original = _unaliased(data)  # a --set changes the key it names, not every place a YAML anchor repeats it
    data = _unaliased(original)
    for assignment in overrides:
        _set_key(data, assignment)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = []
        for key, message in error_lines(err):
            blamed = _blamed(key, overrides, original)
            lines.append(f"--set {blamed}: {message}" if blamed else f"{source}: {message}")
        raise ConfigError("\n".join(lines)) from None


def load_stage_config(path: str, overrides: list[str], model):
    """Read the YAML at `path` and validate it with its `--set` overrides (`validated`). Under the `sas-ray` command,
    the preflight checks run next and the quiet output begins (`begin`)."""
    import fsspec

    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return begin(validated(data, overrides, model, path))


@dataclass
class Invocation:
    """One `sas-ray` stage command: its flags, and what it opens once its config is valid."""

    command: str
    address: str | None
    verbose: bool
    assume_yes: bool
    stack: ExitStack
    begun: bool = False

    def begin(self, cfg) -> None:
        from jobs.console import log_file, logs_to_file
        from jobs.preflight import preflight

        if self.begun:  # the command's own config only, not configs its stages build
            return
        self.begun = True
        preflight(self.command, cfg, self.address, self.assume_yes)
        if not self.verbose:
            self.stack.enter_context(logs_to_file(log_file(cfg.output, self.command)))


_INVOCATION: Invocation | None = None  # set while main() runs a stage


def begin(cfg):
    """A valid config about to run: under the `sas-ray` command, the preflight checks (they raise before Ray
    starts) and the log redirection; elsewhere (tests, library use) nothing. Returns `cfg`."""
    if _INVOCATION is not None:
        _INVOCATION.begin(cfg)
    return cfg


def _storage_flags(args: argparse.Namespace) -> list[str]:
    """--verify / --wait as config overrides (storage.verify, storage.wait; every stage's in a pipeline)."""
    prefix = "*." if args.stage in PIPELINES else ""
    return [f"{prefix}storage.{flag}=true" for flag in ("verify", "wait") if getattr(args, flag)]


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
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show Ray's and the libraries' logs here instead of in {output}/logs/")
        p.add_argument("--yes", action="store_true", help="run even when the size estimate exceeds this machine")
        p.add_argument("--verify", action="store_true",
                       help="re-hash every finished output before skipping it (reads them all; default: trust the "
                            "manifest's hash when a listing shows the object unchanged)")
        p.add_argument("--wait", action="store_true",
                       help="if another run is writing a stage output, wait for it instead of stopping")
    for name, (target, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _resolve(target)(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    from jobs.console import EXIT_INTERRUPTED, TERMINAL, interruptible

    global _INVOCATION
    with ExitStack() as stack:
        stack.enter_context(interruptible())
        ray_was_running = _ray_running()
        try:
            if args.stage in COMMANDS:
                return args.run(args)
            target, _ = STAGES[args.stage]
            source = args.output if args.stage in NO_CONFIG else args.config
            _INVOCATION = Invocation(args.stage, args.address, args.verbose, args.yes, stack)
            report = _resolve(target)(source, args.set + _storage_flags(args), args.address)
            print(report.summary(), file=TERMINAL.out)
            return 1 if report.failed else 0
        except SasError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=TERMINAL.err)
            return 2
        except KeyboardInterrupt:  # the signal handler has printed the line
            return EXIT_INTERRUPTED
        finally:
            _INVOCATION = None
            if not ray_was_running and _ray_running():  # its shutdown messages still go to the log
                import ray

                ray.shutdown()


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


if __name__ == "__main__":  # `python -m jobs.cli` (sas-ray submit): run the one `jobs.cli` the stages import
    from jobs.cli import main as cli_main

    sys.exit(cli_main())
