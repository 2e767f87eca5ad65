"""What a person sees while `sas-ray` runs: one progress bar per stage and the summary on the terminal; Ray's and
the libraries' logs, warnings and worker output in a log file whose path is printed once (`-v` shows them instead).

Quiet mode moves file descriptors 1 and 2 onto the log file, so everything the process and its children write there
(Ray's C++ core, its Python loggers, forwarded worker output, warnings) lands in the file; progress bars, the summary
and error lines go to copies of the terminal's descriptors kept aside.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

INTERRUPTED = "interrupted; rerun the same command to resume"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command ended by Ctrl-C
INTERRUPT_GRACE_S = 10.0
REDRAW_S = 1.0
PIPE_INTERVAL_S = 10.0  # after Ctrl-C, finally-blocks get this long to flush manifests before the process ends


class Terminal:
    """The streams of the person's terminal: sys.stdout / sys.stderr, or their copies while logs are redirected."""

    def __init__(self) -> None:
        self._out: TextIO | None = None
        self._err: TextIO | None = None

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr


TERMINAL = Terminal()


class _LiveBar(tqdm):
    """A tqdm bar redrawn every REDRAW_S on a terminal even while nothing finishes, so its clock runs while models
    load; written to a file or pipe (CI logs, `sas-ray job logs`), at most every PIPE_INTERVAL_S."""

    def __init__(self, *args, **kwargs) -> None:
        live = kwargs["file"].isatty()
        super().__init__(*args, mininterval=0.1 if live else PIPE_INTERVAL_S, **kwargs)
        self._stopped = threading.Event()
        if live and not self.disable:
            threading.Thread(target=self._redraw, daemon=True).start()

    def _redraw(self) -> None:
        while not self._stopped.wait(REDRAW_S):
            self.refresh()

    def close(self) -> None:
        self._stopped.set()
        super().close()


def progress_bar(total: int | None, desc: str, unit: str, disable: bool = False) -> tqdm:
    """A stage's progress bar on the terminal: count, rate and ETA in `unit`s."""
    return _LiveBar(total=total, desc=desc, unit=unit, disable=disable, file=TERMINAL.err, dynamic_ncols=True)


def log_file(output: str, command: str) -> Path:
    """Where a command's logs go: {output}/logs/{command}-{time}.log for a local output, else a local temporary
    folder (the log is for the person at this terminal)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    local = output.removeprefix("file://") if "://" not in output or output.startswith("file://") else None
    folder = Path(local) / "logs" if local else Path(os.environ.get("TMPDIR", "/tmp")) / "sas-ray-logs"
    return folder / f"{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def logs_to_file(path: Path) -> Iterator[Path]:
    """Descriptors 1 and 2 write to `path` until the block ends; TERMINAL keeps the terminal. Prints the path once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    TERMINAL._out = _terminal_copy(sys.stdout, saved[0])
    TERMINAL._err = _terminal_copy(sys.stderr, saved[1])
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    print(f"log: {path}", file=TERMINAL.err)
    try:
        yield path
    finally:
        for stream in (sys.stdout, sys.stderr, TERMINAL._out, TERMINAL._err):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for copy, stream in ((TERMINAL._out, sys.stdout), (TERMINAL._err, sys.stderr)):
            if copy is not stream:
                copy.close()
        TERMINAL._out = TERMINAL._err = None


def _terminal_copy(stream: TextIO, saved_fd: int) -> TextIO:
    """A stream to the terminal once `stream`'s descriptor goes to the log: `stream` itself when it does not write
    to descriptor 1 or 2 (a test's capture), else a text stream on the saved copy of its descriptor."""
    try:
        own = stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        own = False
    return os.fdopen(os.dup(saved_fd), "w", buffering=1) if own else stream


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C prints one line and raises KeyboardInterrupt in the main thread, so finally-blocks flush what is
    done; if the process has not ended INTERRUPT_GRACE_S later (threads still waiting on Ray), or on a second
    Ctrl-C, it ends with exit code 130 at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum, frame):
        if on_interrupt.pressed:
            _exit_now()
        on_interrupt.pressed = True
        print(f"\n{INTERRUPTED}", file=TERMINAL.err, flush=True)
        timer = threading.Timer(INTERRUPT_GRACE_S, _exit_now)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    on_interrupt.pressed = False
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_now() -> None:
    for stream in (TERMINAL.out, TERMINAL.err):
        stream.flush()
    os._exit(EXIT_INTERRUPTED)
