"""A multi-node Ray cluster on 127.0.0.1 for fault tests (ray.cluster_utils.Cluster: a head without CPUs, worker
nodes), run in its own process so that the tests' session Ray is never touched. The test talks to it over
stdin/stdout: `remove <pattern>` kills the worker node hosting a process whose command line contains `pattern`,
`add` starts one more worker node, `refill` starts nodes up to the initial count; closing stdin shuts everything
down.

    python tests/reliability/local_cluster.py <workers> <cpus per worker>
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

WORKER_ARGS = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 1024**2}


class LocalCluster:
    """Client side: starts the controller process and sends it commands (every wait has a timeout)."""

    def __init__(self, workers: int = 2, cpus: int = 2, timeout: float = 120):
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen([sys.executable, __file__, str(workers), str(cpus)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        try:
            self.address = self._reply(timeout)["address"]
        except BaseException:
            self.close()
            raise

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise TimeoutError(f"cluster controller gave no answer within {timeout} s")
        return json.loads(line)

    def _command(self, command: str, timeout: float = 60) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply(timeout)

    def remove_node_running(self, pattern: str) -> bool:
        """Kill the worker node that hosts a process matching `pattern` (no graceful shutdown); False if none."""
        return self._command(f"remove {pattern}")["removed"]

    def add_node(self) -> None:
        """Start one more worker node."""
        self._command("add", timeout=120)

    def ensure_workers(self) -> int:
        """Start worker nodes until the cluster has as many as it began with; returns how many were added."""
        return self._command("refill", timeout=120)["added"]

    def close(self, timeout: float = 60) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _hosts(node, pattern: str) -> bool:
    """Whether a descendant of the node's raylet runs a command line containing `pattern`."""
    import psutil

    raylet = node.all_processes.get("raylet")
    if not raylet:
        return False
    for child in psutil.Process(raylet[0].process.pid).children(recursive=True):
        try:
            if pattern in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def main(workers: int, cpus: int) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=cpus, **WORKER_ARGS) for _ in range(workers)]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address}), flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "remove":
            node = next((n for n in nodes if _hosts(n, argument)), None)
            if node is not None:
                cluster.remove_node(node, allow_graceful=False)
                nodes.remove(node)
            print(json.dumps({"removed": node is not None}), flush=True)
        elif command == "add":
            nodes.append(cluster.add_node(num_cpus=cpus, **WORKER_ARGS))
            cluster.wait_for_nodes()
            print(json.dumps({"added": 1}), flush=True)
        elif command == "refill":
            added = workers - len(nodes)
            nodes += [cluster.add_node(num_cpus=cpus, **WORKER_ARGS) for _ in range(added)]
            cluster.wait_for_nodes()
            print(json.dumps({"added": added}), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
