"""Elastic stages on an autoscaling Ray cluster (Ray's `fake_multinode` provider: worker nodes are real raylets on
this machine) whose head has no CPU: `sas-ray extract` makes the autoscaler add two CPU nodes for the teacher's actor
pool (never the GPU node type), `sas-ray predict` with `use_gpu` makes it add the node type that advertises a GPU
and runs there; idle nodes are removed. Features equal their references."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from ray_head import VENV_BIN, RayHead, free_port, wait_for
from safetensors.torch import save_file
from test_extract import TEACHER, _assert_matches_reference, _prepare

from jobs.predict import run_predict
from jobs.superpoints import run_superpoints
from sas_ray.config import ExtractConfig, PredictConfig, SuperpointsConfig, parse_config
from sas_ray.distill.checkpoint import model_tensors
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.features import decode_features, feature_file
from sas_ray.prepared import read_info
from sas_ray.storage import Storage

IDLE_TIMEOUT_MINUTES = 0.1

# One GCS query every 0.5 s, printed as a JSON line {"t": seconds, "nodes": [[address, alive, is_head, GPUs], ...]}.
NODE_POLLER = """
import json, sys, time
from ray._raylet import GcsClient
client, start = GcsClient(address=sys.argv[1]), time.monotonic()
while True:
    nodes = client.get_all_node_info(timeout=10).values()
    nodes = [[n.node_manager_address, n.state == 0, n.is_head_node, n.resources_total.get("GPU", 0)] for n in nodes]
    print(json.dumps({"t": round(time.monotonic() - start, 1), "nodes": nodes}), flush=True)
    time.sleep(0.5)
"""


def _fake_cluster(gcs_port: int) -> dict:
    """Ray's fake_multinode example, cut down: a CPU-less head, up to two 2-CPU workers and one worker with a (fake)
    GPU, idle after 6 s."""
    return {
        "cluster_name": "sas-ray-elastic", "max_workers": 3, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu-2": {"resources": {"CPU": 2, "object_store_memory": 150_000_000}, "node_config": {},
                      "min_workers": 0, "max_workers": 2},
            "gpu-1": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150_000_000}, "node_config": {},
                      "min_workers": 0, "max_workers": 1},
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


def _alive_workers(sample: list[list], gpu: bool | None = None) -> int:
    """Alive worker nodes in one sample; `gpu` True/False counts only nodes with/without a GPU."""
    return sum(alive and not is_head and gpu in (None, gpus > 0) for _, alive, is_head, gpus in sample)


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


def _write_model(path: Path) -> None:
    """A random MinkUNet18A checkpoint as `sas-ray distill` writes it (weights + metadata)."""
    torch.manual_seed(0)
    save_file(model_tensors(MinkUNet18A(3, 8)), str(path), metadata={"text_space": "tiny", "out_channels": "8"})


def _run_stage(stage: str, config: dict, tmp_path: Path, head: RayHead) -> str:
    """`sas-ray <stage> --config ... --address <head>` as its own driver process; returns its output."""
    (tmp_path / f"{stage}.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / f"{stage}.log"
    with _process([str(VENV_BIN / "sas-ray"), stage, "--config", str(tmp_path / f"{stage}.yaml"),
                   "--address", head.address], log, head.env) as driver:
        wait_for(lambda: driver.poll() is not None, 300, f"{stage} did not finish", head.record_processes)
    assert driver.returncode == 0, log.read_text()[-3000:]
    return log.read_text()


def test_stages_scale_out_to_the_nodes_they_ask_for_and_back(ray_session, tmp_path):
    prepared = _prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), "scannet")
    # One 1.5-CPU actor fits a 2-CPU node (its decode task takes the other 0.5): a pool of two needs two nodes.
    extract = {"prepared": prepared, "output": str(tmp_path / "out"), "frames_per_task": 3, "decode_tasks": 2,
               "teachers": [{**TEACHER, "cpus": 1.5, "pool": [2, 2]}], "object_store_gb": 0.2, "progress": False}
    _write_model(tmp_path / "model.safetensors")
    superpoints = run_superpoints(parse_config({"prepared": prepared, "output": str(tmp_path / "out"),
                                                "progress": False}, SuperpointsConfig))  # predict reads them
    assert superpoints.done == 2, superpoints.summary()
    predict = {"prepared": prepared, "output": str(tmp_path / "out"), "checkpoint": str(tmp_path / "model.safetensors"),
               "repeats": 1, "backend": "torch", "use_gpu": True, "progress": False}
    port = free_port()
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(_fake_cluster(port)))
    nodes_log = tmp_path / "nodes.jsonl"
    with RayHead(tmp_path / "head.log", "--num-cpus=0", "--include-dashboard=false",
                 "--object-store-memory=150000000", f"--autoscaling-config={tmp_path / 'cluster.yaml'}",
                 env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}, port=port) as head, \
            _process([str(VENV_BIN / "python"), "-c", NODE_POLLER, head.address], nodes_log, head.env):
        assert "extract: 2 done" in _run_stage("extract", extract, tmp_path, head)
        during_extract = _samples(nodes_log)
        assert max(_alive_workers(s, gpu=False) for s in during_extract) == 2, nodes_log.read_text()[-2000:]
        assert max(_alive_workers(s, gpu=True) for s in during_extract) == 0  # CPU work never takes the GPU node
        # predict's tasks ask for {CPU: 1, GPU: 1}: only the GPU node type can hold them (an idle CPU node cannot)
        assert "predict: 2 done" in _run_stage("predict", predict, tmp_path, head)
        during_predict = _samples(nodes_log)[len(during_extract):]
        assert max(_alive_workers(s, gpu=True) for s in during_predict) == 1, nodes_log.read_text()[-2000:]
        wait_for(lambda: _alive_workers(_samples(nodes_log)[-1]) == 0, 120, "idle worker nodes were not removed",
                 head.record_processes)
    assert head.survivors() == []  # the head, its nodes (the autoscaler's too) and their workers have ended
    assert {sample[0] for samples in _samples(nodes_log) for sample in samples} == {"127.0.0.1"}
    _assert_matches_reference(parse_config(extract, ExtractConfig))
    # The GPU node ran on CPU torch (a fake GPU): its features equal a local run's, bit for bit.
    local = run_predict(parse_config({**predict, "use_gpu": False, "name": "local"}, PredictConfig))
    assert local.done == 2, local.summary()
    features = Storage(str(tmp_path / "out")).child("features")
    for scene_id in read_info(Storage(prepared))["scenes"]:
        ours, ref = (decode_features(features.child(name).read_tensors(feature_file(scene_id)), scene_id)
                     for name in ("distill", "local"))
        assert torch.equal(ours.feat, ref.feat), scene_id
