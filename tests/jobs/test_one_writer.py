"""One writer per stage output, through the CLI: a second `sas-ray` run on an output another run is writing stops at
once with a message naming the owner and writes nothing; with `--wait` it waits for the owner, then skips what the
owner finished."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import yaml
from distill_data import write_dataset

from jobs.cli import main as cli_main
from sas_ray.lease import LEASE
from sas_ray.storage import Storage

SECOND_RUN = """
import sys, time
from pathlib import Path
import jobs.cli, jobs.prepare  # imported before the owner starts: this run starts within milliseconds of its lease
Path(sys.argv[1]).touch()
lease = Path(sys.argv[2])
deadline = time.monotonic() + 120
while not lease.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(jobs.cli.main(sys.argv[3:]))
"""


def test_second_run_stops_naming_the_owner_and_writes_nothing(ray_session, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    config = tmp_path / "prepare.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val",
                    "synthetic": {"num_scenes": 2, "frames_per_scene": 2, "size": "tiny", "points_per_scene": 600}},
        "output": str(prepared), "progress": False}))
    ready = tmp_path / "second-run-ready"
    second = subprocess.Popen([sys.executable, "-c", SECOND_RUN, str(ready), str(prepared / "scenes" / LEASE),
                               "prepare", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 120
    while not ready.exists() and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first = {}
    owner = threading.Thread(target=lambda: first.update(code=cli_main(["prepare", "--config", str(config)])))
    owner.start()
    _, err = second.communicate(timeout=300)
    owner.join(300)

    assert second.returncode == 2, err
    assert f"error: {prepared}/scenes is being written by another run: pid {os.getpid()} on " \
           f"{socket.gethostname()}" in err
    assert first["code"] == 0 and "prepare: 2 done, 0 already done" in capsys.readouterr().out
    rows = {r["id"] for r in Storage(str(prepared)).read_table("scenes/manifest.parquet").to_pylist()}
    assert rows == {"scene0000_00", "scene0001_00"}
    assert sorted(p.name for p in (prepared / "scenes").iterdir()) == [
        "manifest.parquet", "scene0000_00.safetensors", "scene0001_00.safetensors"]  # the lease was given back


def test_wait_runs_after_the_owner(ray_session, s3_bucket, tmp_path, capsys):
    root, options = s3_bucket
    store = Storage(root, options)
    write_dataset(store, num_scenes=2, points=300)
    config = tmp_path / "superpoints.yaml"
    config.write_text(yaml.safe_dump({"prepared": root, "output": f"{root}/run", "mode": "points",
                                      "storage": {"options": options}, "progress": False}))
    lease = {"token": "other", "host": "elsewhere", "pid": 7, "started": 0.0, "heartbeat": time.time(),
             "command": "sas-ray superpoints --config theirs.yaml"}
    store.write_bytes(f"run/superpoints/{LEASE}", json.dumps(lease).encode())

    assert cli_main(["superpoints", "--config", str(config)]) == 2
    assert "is being written by another run: pid 7 on elsewhere (sas-ray superpoints --config theirs.yaml)" in \
        capsys.readouterr().err
    assert store.list("run/superpoints") == [LEASE]

    threading.Timer(2.0, lambda: store.delete(f"run/superpoints/{LEASE}")).start()  # the owner finishes
    start = time.monotonic()
    assert cli_main(["superpoints", "--config", str(config), "--wait"]) == 0
    assert time.monotonic() - start >= 2.0
    assert "superpoints: 2 done" in capsys.readouterr().out
    assert not store.exists(f"run/superpoints/{LEASE}")
