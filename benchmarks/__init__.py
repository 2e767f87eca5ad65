"""Benchmark scripts; each prints JSON lines (see docs/perf/README.md)."""

import json
import os


def emit(result: dict, out: str | None, append: bool = True) -> None:
    """Print `result` as one JSON line and, given `out`, append it to that file (or replace the file)."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "a" if append else "w") as f:
            f.write(line + "\n")
