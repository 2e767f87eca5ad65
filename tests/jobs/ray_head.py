"""A Ray head of the test's own (`ray start --head --block` as a subprocess) on 127.0.0.1 with free ports and its own
auth token, so the session Ray stays untouched; stopped by the PIDs it started, never with `ray stop`."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, between=lambda: None) -> None:
    """Poll `condition()` (an OSError counts as not yet) every 0.5 s, calling `between()` in between; fail with
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        between()
        time.sleep(0.5)


class RayHead:
    """`ray start --head` with `args` (GCS on `port`, default a free one); `env` is what every process of this
    cluster (and its clients) should get."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None):
        self.port, self.dashboard_port = port or free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        self.env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                         "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                         "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM: stop now, no 30 s drain
                         "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})})
        self.log = log
        command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                   f"--port={self.port}", f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                   "--min-worker-port=0", "--max-worker-port=0", *args]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self._seen: dict[int, psutil.Process] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start --head failed:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        self.record_processes()

    def record_processes(self) -> None:
        """Remember every process below the head (nodes the autoscaler adds included), to stop them later even if
        their parent is gone by then."""
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def stop(self, timeout: float = 30) -> None:
        self.record_processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        left = [p for p in self._seen.values() if p.is_running()]  # is_running() also checks PID reuse
        for p in left:
            p.terminate()
        _, alive = psutil.wait_procs(left, timeout=10)
        for p in alive:
            p.kill()

    def survivors(self) -> list[str]:
        """Processes this cluster ever had that still run (zombies excluded), e.g. after stop()."""
        left = []
        for p in self._seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {p.name()}")
            except psutil.NoSuchProcess:
                pass
        return left

    def __enter__(self) -> RayHead:
        try:
            self.wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
