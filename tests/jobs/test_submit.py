"""`sas-ray submit` / `sas-ray job` against a Ray head of the test's own: the submitted stage runs the shipped
checkout (not the installed code) and writes its outputs; status, logs and stop go through the Jobs API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.submit import pack_checkout, stage_entrypoint
from ray_head import VENV_BIN, RayHead, wait_for
from sas_ray.errors import SasError

REPO = Path(__file__).resolve().parents[2]
MARKER = "sas-ray from the shipped working_dir"


def test_pack_checkout_ships_code_not_environments(tmp_path):
    root = tmp_path / "checkout"
    files = {"jobs/cli.py": 10, "sas_ray/core.py": 10, "sas_ray/_ext.cpython-311-x86_64-linux-gnu.so": 10,
             "configs/a.yaml": 10, "docs/out/kept.md": 10,  # only the top-level out/ is outputs
             ".venv/lib/x.py": 10, "venv2/pyvenv.cfg": 10, "venv2/lib/y.py": 10, ".git/HEAD": 10, "out/f.bin": 10,
             ".carry/base.tar.xz": 10, "sas_ray/__pycache__/core.pyc": 10, "sas_ray.egg-info/PKG-INFO": 10,
             "data/big.bin": 30_000}
    for rel, size in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)
    checkout = pack_checkout(root, tmp_path / "wd.zip", max_file_mb=0.02)
    with zipfile.ZipFile(checkout.zip_path) as archive:
        assert sorted(archive.namelist()) == ["configs/a.yaml", "docs/out/kept.md", "jobs/cli.py",
                                              "sas_ray/_ext.cpython-311-x86_64-linux-gnu.so", "sas_ray/core.py"]
    assert (checkout.files, checkout.nbytes) == (5, 50)
    assert checkout.left_behind == ["data/big.bin (0 MiB)"]
    with pytest.raises(SasError, match="not a sas-ray checkout"):
        pack_checkout(root / "configs", tmp_path / "no.zip")


def test_stage_entrypoint_runs_the_shipped_cli():
    assert stage_entrypoint(["--", "extract", "--config", "my configs/x.yaml"]) == \
        "python -m jobs.cli extract --config 'my configs/x.yaml'"
    with pytest.raises(SasError, match="one of prepare"):
        stage_entrypoint(["--", "train"])
    with pytest.raises(SasError, match="drop --address"):
        stage_entrypoint(["prepare", "--config", "a.yaml", "--address=127.0.0.1:6379"])


def _api(head: RayHead, path: str) -> dict:
    """GET the head's Jobs API directly (with the head's token): cheaper than a CLI call for polling."""
    request = urllib.request.Request(f"{head.dashboard}{path}",
                                     headers={"authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head with 2 CPUs and its Jobs API (dashboard) on 127.0.0.1."""
    with RayHead(tmp_path_factory.mktemp("head") / "head.log", "--num-cpus=2",
                 "--object-store-memory=200000000") as head:
        wait_for(lambda: _api(head, "/api/version"), 60, "the Jobs API did not answer")
        yield head
    assert head.survivors() == []  # the head, its jobs' drivers and workers have ended


def _cli(head: RayHead, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command, *rest = args  # --address right after the command: what follows `--` is the stage's
    return subprocess.run([str(VENV_BIN / "sas-ray"), command, "--address", head.dashboard, *rest],
                          env=head.env, capture_output=True, text=True, timeout=timeout)


def _shipped_checkout(tmp_path: Path) -> Path:
    """A copy of this checkout's code whose CLI prints MARKER, to tell the shipped code from the installed one."""
    root = tmp_path / "checkout"
    for package in ("jobs", "sas_ray", "actors"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    cli = root / "jobs" / "cli.py"
    source = cli.read_text()
    assert "from __future__ import annotations\n" in source
    cli.write_text(source.replace("from __future__ import annotations\n",
                                  f"from __future__ import annotations\nprint({MARKER!r}, flush=True)\n", 1))
    return root


def test_submitted_stage_runs_the_shipped_checkout(head, tmp_path):
    root = _shipped_checkout(tmp_path)
    prepared = tmp_path / "prepared"
    (root / "prepare.yaml").write_text(yaml.safe_dump({
        "dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val",
                    "synthetic": {"num_scenes": 2, "frames_per_scene": 3, "size": "tiny", "points_per_scene": 500,
                                  "seed": 1}},
        "output": str(prepared), "progress": False}))
    run = _cli(head, "submit", "--working-dir", str(root), "--", "prepare", "--config", "prepare.yaml", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"submitted (\S+):", run.stdout).group(1)
    assert MARKER in run.stdout and "prepare: 2 done" in run.stdout
    assert f"{job_id}: SUCCEEDED (exit code 0)" in run.stdout
    index = pq.read_table(prepared / "frames.parquet").to_pylist()
    assert sorted((r["scene"], r["frame"]) for r in index) == [
        (f"scene000{s}_00", str(f)) for s in (0, 1) for f in range(3)]
    assert {p.name for p in (prepared / "scenes").iterdir()} >= {"scene0000_00.safetensors", "scene0001_00.safetensors"}

    status = _cli(head, "job", "status", job_id)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stdout + status.stderr
    assert "python -m jobs.cli prepare --config prepare.yaml" in status.stdout
    logs = _cli(head, "job", "logs", job_id)
    assert MARKER in logs.stdout and "prepare: 2 done" in logs.stdout, logs.stdout + logs.stderr


def test_stop_ends_a_running_job(head, tmp_path):
    output = tmp_path / "demo"
    run = _cli(head, "submit", "--working-dir", str(REPO), "--no-wait", "--", "demo", "--output", str(output))
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"submitted (\S+):", run.stdout).group(1)
    wait_for(lambda: _api(head, f"/api/jobs/{job_id}")["status"] == "RUNNING", 120, "the job did not start")
    stop = _cli(head, "job", "stop", job_id, "--timeout", "60", timeout=120)
    assert stop.returncode == 0 and stop.stdout.startswith(f"{job_id}: STOPPED"), stop.stdout + stop.stderr
    assert not (output / "report.md").exists()  # the demo takes minutes: it was stopped, not finished
    unknown = _cli(head, "job", "status", "raysubmit_nosuchjob")
    assert unknown.returncode == 2 and "raysubmit_nosuchjob" in unknown.stderr, unknown.stderr
    no_token = subprocess.run([str(VENV_BIN / "sas-ray"), "job", "list", "--address", head.dashboard],
                              env={k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")},
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "token" in no_token.stderr.lower(), no_token.stderr


def test_a_failing_stage_fails_the_submit_with_its_exit_code(head, tmp_path):
    run = _cli(head, "submit", "--working-dir", str(REPO), "--", "prepare", "--config", "no/such.yaml", timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr  # the stage's code for a bad config
    assert "no/such.yaml: config file not found" in run.stdout and "FAILED (exit code 2)" in run.stdout, run.stdout
