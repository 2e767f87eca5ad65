"""One writer per stage output (sas_ray.lease) on a local disk, memory:// and S3 (moto): a held lease stops a second
run with the owner's name or makes it wait; a stale one (heartbeat expired, or its owner's process gone) is taken
over by exactly one of several runs trying at once; an owner that was taken over stops before its next manifest
write; two processes holding the lease in turn never interleave their writes."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sas_ray.lease import LEASE, LeaseHeld, LeaseLost, StageLease
from sas_ray.lineage import stage_recipe
from sas_ray.manifest import Manifest, UnitResult
from sas_ray.storage import Storage


@pytest.fixture(params=["local", "memory", "s3"])
def stage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "out" / "superpoints"))
    if request.param == "memory":
        return Storage(f"memory://{tmp_path.name}/out/superpoints")
    root, options = request.getfixturevalue("s3_bucket")
    return Storage(root + "/out/superpoints", options)


def _plant(stage: Storage, host: str, pid: int, started: float, heartbeat: float) -> None:
    """A lease as another run would have left it."""
    stage.write_json(LEASE, {"token": "other", "host": host, "pid": pid, "started": started,
                             "command": "sas-ray superpoints --config other.yaml", "heartbeat": heartbeat})


def test_held_lease_names_its_owner_and_is_given_back(stage):
    with StageLease(stage) as lease:
        with pytest.raises(LeaseHeld) as held:
            StageLease(stage).acquire()
        message = str(held.value)
        assert f"{stage.url()} is being written by another run: pid {os.getpid()} on {socket.gethostname()}" in message
        assert "--wait" in message
        assert json.loads(stage.read_bytes(LEASE))["token"] == lease.token
    assert not stage.exists(LEASE)
    with StageLease(stage):  # free again
        pass


def test_stale_lease_is_taken_over(stage):
    _plant(stage, "elsewhere", 1, 0.0, time.time() - 3600)  # another host, no heartbeat for an hour
    with StageLease(stage) as lease:
        assert lease.taken_over.host == "elsewhere"
    _plant(stage, "elsewhere", 1, 0.0, time.time())  # another host, heartbeat now: held
    with pytest.raises(LeaseHeld, match="pid 1 on elsewhere .sas-ray superpoints --config other.yaml."):
        StageLease(stage).acquire()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(stage):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    _plant(stage, socket.gethostname(), gone.pid, time.time() - 5, time.time())  # fresh heartbeat, dead owner
    with StageLease(stage) as lease:
        assert lease.taken_over.pid == gone.pid


def test_wait_for_the_owner(stage):
    owner = StageLease(stage)
    owner.acquire()
    threading.Timer(1.0, owner.release).start()
    start = time.monotonic()
    with StageLease(stage, wait=True, wait_timeout_s=30):
        assert time.monotonic() - start >= 0.9


def test_taken_over_owner_stops_before_writing_its_manifest(stage):
    first = StageLease(stage, expiry_s=0.0)
    first.acquire()
    manifest = Manifest(stage, lease=first)
    manifest.record(UnitResult.ok("s0", "", None, 0.0, stage_recipe(1).unit()))
    second = StageLease(stage, expiry_s=0.0)  # sees the first as stale at once
    second.acquire()
    first.renew()
    with pytest.raises(LeaseLost, match="taken over by pid"):
        manifest.flush()
    assert not stage.exists("manifest.parquet")
    second.release()


def test_one_of_many_takes_over_a_stale_lease(stage):
    for _ in range(5):  # a race: several rounds
        _plant(stage, "elsewhere", 1, 0.0, time.time() - 3600)
        barrier = threading.Barrier(6)
        winners, losers = [], []

        def take() -> None:
            lease = StageLease(stage)
            barrier.wait(10)
            try:
                lease.acquire()
                winners.append(lease)
            except LeaseHeld:
                losers.append(lease)

        threads = [threading.Thread(target=take) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert (len(winners), len(losers)) == (1, 5)
        assert json.loads(stage.read_bytes(LEASE))["token"] == winners[0].token
        winners[0].release()


def _writer(root: str, options: dict, name: str, log: str) -> None:
    """A run in another process: waits for the lease, then writes 5 units, each logged when it starts and ends."""
    stage = Storage(root, options)
    with StageLease(stage, wait=True, heartbeat_s=0.2, wait_timeout_s=60):
        for k in range(5):
            with open(log, "a") as f:
                f.write(f"{name} start\n")
            stage.write_bytes(f"unit{k}.bin", name.encode() * 1000)
            time.sleep(0.05)
            with open(log, "a") as f:
                f.write(f"{name} end\n")


def test_two_processes_never_interleave_writes(stage, tmp_path):
    if stage.url().startswith("memory://"):
        pytest.skip("memory:// is one process's")
    log = str(tmp_path / "log")
    context = multiprocessing.get_context("fork")  # the children only use storage: fast to start
    runs = [context.Process(target=_writer, args=(stage.url(), stage.options, name, log)) for name in ("a", "b")]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert [run.exitcode for run in runs] == [0, 0]
    owners = [line.split()[0] for line in open(log)]  # who started or ended a write, in order
    assert owners in (["a"] * 10 + ["b"] * 10, ["b"] * 10 + ["a"] * 10)
    last = owners[-1]
    assert all(stage.read_bytes(f"unit{k}.bin") == last.encode() * 1000 for k in range(5))
    assert not stage.exists(LEASE)
