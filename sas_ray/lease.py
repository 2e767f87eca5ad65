"""One writer per stage output: a lease object in the stage folder, kept fresh by a heartbeat, taken over when stale.

`{stage}/lease.json` names its owner (a random token, host, pid, the process's start time, the command) and the time
of its last heartbeat. A run takes the lease before it writes anything in the stage folder and gives it back at the
end. A second run finds it held and stops with a message naming the owner, or waits for it (`wait`, the CLI's
`--wait`). A lease is stale when its heartbeat is older than `expiry_s`, or at once when its owner ran on this host
and that process is gone; a stale lease is taken over by compare-and-swap (S3: a conditional PUT If-Match; local:
compare and rename under a `flock` of the folder), so of two runs taking it over together one wins. An owner whose
heartbeat finds the lease replaced (it stalled past the expiry and was taken over) stops before its next manifest
write (`check`).

Clocks of the hosts sharing an output should agree within a few seconds (NTP): staleness compares the owner's
heartbeat time with the reader's clock. A local output shared by several hosts needs a filesystem with `flock`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import psutil

from sas_ray.errors import SasError
from sas_ray.storage import Storage

LEASE = "lease.json"
HEARTBEAT_S = 10.0
EXPIRY_S = 60.0  # six missed heartbeats


class LeaseHeld(SasError):
    """Another run writes this stage output."""


class LeaseLost(SasError):
    """This run's lease was taken over (it stalled past the expiry): it must stop writing."""


@dataclass(frozen=True)
class Holder:
    """The contents of a lease object."""

    token: str
    host: str
    pid: int
    started: float  # the owner process's start time (tells a reused pid apart)
    command: str
    heartbeat: float  # unix time of the last renewal

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on {self.host} ({self.command}), heartbeat {max(0.0, now - self.heartbeat):.0f} s "
                f"ago")


def _this_process() -> tuple[str, int, float, str]:
    pid = os.getpid()
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    return socket.gethostname(), pid, psutil.Process(pid).create_time(), command


def _owner_gone(holder: Holder) -> bool:
    """The owner ran on this host and its process is gone (or its pid now names another process)."""
    if holder.host != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(holder.pid).create_time() - holder.started) > 1.0
    except psutil.NoSuchProcess:
        return True


class StageLease:
    """The lease of one stage folder, held from `__enter__` to `__exit__` with a heartbeat thread."""

    def __init__(self, stage: Storage, wait: bool = False, expiry_s: float = EXPIRY_S,
                 heartbeat_s: float = HEARTBEAT_S, wait_timeout_s: float | None = None):
        self.stage, self.wait = stage, wait
        self.expiry_s, self.heartbeat_s, self.wait_timeout_s = expiry_s, heartbeat_s, wait_timeout_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None
        self.taken_over: Holder | None = None  # the stale lease this run replaced, if any
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- holding -----------------------------------------------------------------------------------------------
    def __enter__(self) -> StageLease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.stage.url()}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 30)
        self.release()

    def _record(self) -> bytes:
        host, pid, started, command = _this_process()
        holder = Holder(self.token, host, pid, started, command, time.time())
        return json.dumps(asdict(holder), sort_keys=True).encode()

    def acquire(self) -> None:
        """Take the lease: create it, or take over a stale one; else stop (LeaseHeld) or wait."""
        start = time.monotonic()
        while True:
            version = self.stage.create_exclusive(LEASE, self._record())
            if version is not None:
                self.version = version
                return
            holder, version = self.holder()
            if version is None:  # released between the two calls
                continue
            if holder is not None and holder.token == self.token:  # our create went through; its reply was lost
                self.version = version
                return
            if holder is None or self.is_stale(holder):
                replaced = self.stage.replace_if(LEASE, self._record(), version)
                if replaced is not None:
                    self.version, self.taken_over = replaced, holder
                    return
                continue  # someone else renewed or took it first: look again
            waited = time.monotonic() - start
            if not self.wait or (self.wait_timeout_s is not None and waited > self.wait_timeout_s):
                raise LeaseHeld(self.held_message(holder))
            time.sleep(min(self.heartbeat_s, 2.0))

    def holder(self) -> tuple[Holder | None, str | None]:
        """The current lease's holder (None if unreadable) and version (None if there is no lease)."""
        stat = self.stage.stat(LEASE)
        if stat is None:
            return None, None
        try:
            data = json.loads(self.stage.read_bytes(LEASE))
            return Holder(**data), stat.version
        except FileNotFoundError:
            return None, None
        except (ValueError, TypeError):  # not a lease we can read: it can only become stale
            return None, stat.version

    def is_stale(self, holder: Holder) -> bool:
        return time.time() - holder.heartbeat > self.expiry_s or _owner_gone(holder)

    def held_message(self, holder: Holder) -> str:
        return (f"{self.stage.url()} is being written by another run: {holder.describe(time.time())}. Wait for it "
                f"to finish, or rerun with --wait; a lease whose heartbeat is older than {self.expiry_s:.0f} s is "
                f"taken over ({self.stage.url(LEASE)}).")

    # -- heartbeat -------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except SasError:  # storage unreachable for now: the next beat tries again
                continue
            if self.lost:
                return

    def renew(self) -> None:
        """Refresh the heartbeat; finding the lease replaced by another run marks it lost."""
        replaced = self.stage.replace_if(LEASE, self._record(), self.version)
        if replaced is not None:
            self.version = replaced
            return
        holder, version = self.holder()
        if holder is not None and holder.token == self.token:  # our renewal went through; its reply was lost
            self.version = version
            return
        self.lost = (f"{self.stage.url()}: this run's lease was taken over by "
                     f"{holder.describe(time.time()) if holder else 'another run'} (no heartbeat for "
                     f"{self.expiry_s:.0f} s?); stopping before writing more")

    def check(self) -> None:
        """Raise LeaseLost if another run took the lease over."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Give the lease back (only if it is still the version this run wrote)."""
        if self.lost or self.version is None:
            return
        self.stage.delete_if(LEASE, self.version)
        self.version = None
