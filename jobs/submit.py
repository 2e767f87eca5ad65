"""`sas-ray submit` and `sas-ray job`: a stage runs on a remote Ray cluster through the Ray Jobs API, with this
checkout shipped as the job's working_dir so that the cluster runs the code you have here, not what it installed."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sas_ray.errors import SasError

TOP_LEVEL_EXCLUDES = {".venv", ".git", ".carry", "out", "build", "dist"}  # environments, outputs, build trees
EXCLUDED_DIRS = {".git", "__pycache__", ".pytest_cache"}  # at any depth; also *.egg-info and any virtualenv
MAX_FILE_MB = 10.0  # larger files stay behind (Ray warns from 10 MiB a file)
UPLOAD_LIMIT_MB = 500.0  # Ray keeps a working_dir in one GCS object, at most one gRPC message (512 MiB)
ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)"


@dataclass
class Checkout:
    """What of a working directory goes to the cluster: a zip of its code and the files left behind."""

    zip_path: Path
    files: int = 0
    nbytes: int = 0  # uncompressed
    left_behind: list[str] = field(default_factory=list)  # larger than max_file_mb


def _excluded_dir(path: Path, root: Path) -> bool:
    return ((path.parent == root and path.name in TOP_LEVEL_EXCLUDES) or path.name in EXCLUDED_DIRS
            or path.name.endswith(".egg-info") or (path / "pyvenv.cfg").exists())


def pack_checkout(root: str | Path, zip_path: Path, max_file_mb: float = MAX_FILE_MB) -> Checkout:
    """Zip `root` for the job's working_dir: its code and configs, built extensions (`*.so`: the cluster needs the
    same Python and platform), without virtualenvs, `.git`, `out/`, caches or files over `max_file_mb`."""
    root = Path(root).resolve()
    if not (root / "jobs" / "cli.py").is_file():
        raise SasError(f"--working-dir {root}: not a sas-ray checkout (no jobs/cli.py)")
    checkout = Checkout(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not _excluded_dir(here / d, root))
            for name in sorted(files):
                path = here / name
                if not path.is_file():  # a broken link
                    continue
                size = path.stat().st_size
                rel = path.relative_to(root).as_posix()
                if size > max_file_mb * 2**20:
                    checkout.left_behind.append(f"{rel} ({size / 2**20:.0f} MiB)")
                    continue
                archive.write(path, rel)
                checkout.files += 1
                checkout.nbytes += size
    zipped = zip_path.stat().st_size
    if zipped > UPLOAD_LIMIT_MB * 2**20:
        raise SasError(f"--working-dir {root}: {zipped / 2**20:.0f} MiB zipped, over Ray's working_dir limit of "
                       f"{UPLOAD_LIMIT_MB:.0f} MiB; move data out of the checkout or lower --max-file-mb")
    return checkout


def stage_entrypoint(command: list[str]) -> str:
    """The job's shell command for `sas-ray <stage> <args>`: `python -m jobs.cli` from the working_dir, so the
    shipped code shadows any sas-ray installed on the cluster."""
    from jobs.cli import STAGES

    if command[:1] == ["--"]:
        command = command[1:]
    if not command or command[0] not in STAGES:
        raise SasError(f"submit expects a stage command after `--`, one of {', '.join(STAGES)}; got {command!r}")
    if any(arg == "--address" or arg.startswith("--address=") for arg in command):
        raise SasError("drop --address from the stage command: a submitted job joins its own cluster")
    return shlex.join(["python", "-m", "jobs.cli", *command])


def _client(address: str | None):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError, AuthenticationError) as err:
        raise SasError(f"no Ray Jobs API at {address or '$RAY_API_SERVER_ADDRESS/$RAY_ADDRESS'}: {err}") from None


def _follow(client, job_id: str) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on (sas-ray job stop {job_id} to stop it)", file=sys.stderr)
        raise SystemExit(130) from None


def _wait_until_ended(client, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not client.get_job_status(job_id).is_terminal():
        if time.monotonic() > deadline:
            raise SasError(f"job {job_id} has not ended within {timeout:g} s")
        time.sleep(0.5)


def submit(args: argparse.Namespace) -> int:
    """Ship the checkout, start the stage as a job, then follow its logs to the end unless --no-wait."""
    entrypoint = stage_entrypoint(args.command)
    client = _client(args.address)
    with tempfile.TemporaryDirectory(prefix="sas-ray-submit-") as scratch:
        checkout = pack_checkout(args.working_dir, Path(scratch) / "working_dir.zip", args.max_file_mb)
        for path in checkout.left_behind:
            print(f"note: not uploaded (over {args.max_file_mb:g} MiB): {path}", file=sys.stderr)
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(checkout.zip_path)})
        except RuntimeError as err:  # the Jobs API refused it (upload failed, bad runtime_env)
            raise SasError(f"submit {entrypoint}: {err}") from None
    print(f"submitted {job_id}: {entrypoint} ({checkout.files} files, {checkout.nbytes / 2**20:.1f} MiB)")
    if args.no_wait:
        print(f"follow it with: sas-ray job logs {job_id} --follow --address {client.get_address()}")
        return 0
    _follow(client, job_id)
    _wait_until_ended(client, job_id, timeout=60)  # the log stream may close before the status is final
    info = client.get_job_info(job_id)
    code = info.driver_exit_code  # the stage's: 0 done, 1 some units failed, 2 bad config or input
    if code is None:  # the job never started its command (e.g. the working_dir did not unpack)
        code = 0 if info.status.value == "SUCCEEDED" else 1
    print(f"{job_id}: {info.status.value} (exit code {code})" + (f": {info.message}" if code else ""))
    return code


def job(args: argparse.Namespace) -> int:
    """`sas-ray job status|logs|stop|list`: a submitted job's state, output, or its end."""
    client = _client(args.address)
    try:
        return _job_action(client, args)
    except RuntimeError as err:  # the Jobs API's answer to an unknown job id, or a refused request
        raise SasError(f"job {args.job_id or ''}: {err}") from None


def _job_action(client, args: argparse.Namespace) -> int:
    if args.action == "list":
        for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{info.submission_id or info.job_id}  {info.status.value:<9}  {info.entrypoint}")
        return 0
    if args.job_id is None:
        raise SasError(f"sas-ray job {args.action} needs a JOB_ID (sas-ray job list shows them)")
    if args.action == "logs":
        if args.follow:
            _follow(client, args.job_id)
        else:
            print(client.get_job_logs(args.job_id), end="")
        return 0
    if args.action == "stop":
        client.stop_job(args.job_id)
        _wait_until_ended(client, args.job_id, args.timeout)
    info = client.get_job_info(args.job_id)
    print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    print(f"  entrypoint: {info.entrypoint}")
    return 0


def add_submit_command(parser: argparse.ArgumentParser) -> None:
    parser.description = """\
Run `sas-ray <stage> ...` on a Ray cluster as a Ray job. The working directory is zipped (without .venv, .git,
out/, caches and large files) and becomes the job's working_dir, so the cluster runs this checkout's code; config
paths relative to it work there. Outputs belong on shared storage (s3://...).

  sas-ray submit --address http://HEAD:8265 -- extract --config configs/extract.yaml
  sas-ray job logs JOB_ID --follow --address http://HEAD:8265"""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    parser.add_argument("--working-dir", default=".", metavar="DIR", help="the checkout to ship (default: .)")
    parser.add_argument("--max-file-mb", type=float, default=MAX_FILE_MB, metavar="MB",
                        help=f"files larger than this stay behind (default: {MAX_FILE_MB:g})")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- STAGE ARGS",
                        help="the stage command, as you would run it locally")
    parser.set_defaults(run=submit)


def add_job_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status", "logs", "stop", "list"])
    parser.add_argument("job_id", nargs="?", metavar="JOB_ID", help="as printed by sas-ray submit")
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    parser.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="stop: seconds to wait for the job to end (default: 60)")
    parser.set_defaults(run=job)
