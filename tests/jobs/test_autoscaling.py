"""Elastic extraction: on an autoscaling Ray cluster (Ray's `fake_multinode` provider: worker nodes are real raylets
on this machine) whose head has no CPU, `sas-ray extract` makes the autoscaler add two worker nodes for the
teacher's actor pool and remove them once idle; the features equal the sequential reference."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import yaml
from ray_head import VENV_BIN, RayHead, free_port, wait_for
from test_extract import TEACHER, _assert_matches_reference, _prepare

from sas_ray.config import ExtractConfig, parse_config

IDLE_TIMEOUT_MINUTES = 0.1

# One GCS query every 0.5 s, printed as a JSON line {"t": seconds, "nodes": [[address, alive, is_head], ...]}.
NODE_POLLER = """
import json, sys, time
from ray._raylet import GcsClient
client, start = GcsClient(address=sys.argv[1]), time.monotonic()
while True:
    nodes = client.get_all_node_info(timeout=10).values()
    nodes = [[n.node_manager_address, n.state == 0, n.is_head_node] for n in nodes]
    print(json.dumps({"t": round(time.monotonic() - start, 1), "nodes": nodes}), flush=True)
    time.sleep(0.5)
"""


def _fake_cluster(gcs_port: int) -> dict:
    """Ray's fake_multinode example, cut down: a CPU-less head and up to two 2-CPU workers, idle after 6 s."""
    return {
        "cluster_name": "sas-ray-elastic", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu-2": {"resources": {"CPU": 2, "object_store_memory": 150_000_000}, "node_config": {},
                      "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _samples(path: Path) -> list[list[list]]:
    lines = path.read_text().splitlines()
    return [json.loads(line)["nodes"] for line in lines if line.startswith("{") and line.endswith("}")]


def _alive_workers(sample: list[list]) -> int:
    return sum(alive and not is_head for _, alive, is_head in sample)


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str]):
    """A subprocess writing to `log`, killed by its own PID if it is still running on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def test_extraction_scales_out_to_two_nodes_and_back(ray_session, tmp_path):
    prepared = _prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), "scannet")
    # One 1.5-CPU actor fits a 2-CPU node (its decode task takes the other 0.5): a pool of two needs two nodes.
    config = {"prepared": prepared, "output": str(tmp_path / "out"), "frames_per_task": 3, "decode_tasks": 2,
              "teachers": [{**TEACHER, "cpus": 1.5, "pool": [2, 2]}], "object_store_gb": 0.2, "progress": False}
    (tmp_path / "extract.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(_fake_cluster(port)))
    nodes_log, driver_log = tmp_path / "nodes.jsonl", tmp_path / "driver.log"
    with RayHead(tmp_path / "head.log", "--num-cpus=0", "--include-dashboard=false",
                 "--object-store-memory=150000000", f"--autoscaling-config={tmp_path / 'cluster.yaml'}",
                 env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}, port=port) as head, \
            _process([str(VENV_BIN / "python"), "-c", NODE_POLLER, head.address], nodes_log, head.env):
        with _process([str(VENV_BIN / "sas-ray"), "extract", "--config", str(tmp_path / "extract.yaml"),
                       "--address", head.address], driver_log, head.env) as driver:
            wait_for(lambda: driver.poll() is not None, 300, "extraction did not finish", head.record_processes)
        assert driver.returncode == 0 and "extract: 2 done" in driver_log.read_text(), driver_log.read_text()[-3000:]
        assert max(map(_alive_workers, _samples(nodes_log)), default=0) == 2, nodes_log.read_text()[-2000:]
        wait_for(lambda: _alive_workers(_samples(nodes_log)[-1]) == 0, 120, "idle worker nodes were not removed",
                 head.record_processes)
    assert head.survivors() == []  # the head, its nodes (the autoscaler's too) and their workers have ended
    assert {address for sample in _samples(nodes_log) for address, _, _ in sample} == {"127.0.0.1"}
    _assert_matches_reference(parse_config(config, ExtractConfig))
