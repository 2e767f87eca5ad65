"""benchmarks/done_check.py at a small size: both done-checks find every unit done, and it prints its JSON line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_done_check_benchmark_runs(tmp_path):
    out = tmp_path / "done-check.json"
    printed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "done_check.py"), "--units", "40",
                              "--object-kb", "4", "--out", str(out)], capture_output=True, text=True, check=True,
                             timeout=300).stdout
    result = json.loads(printed.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert result["units"] == 40 and result["object_bytes"] == 4096
    assert result["before_s"] > 0 and result["after_s"] > 0 and result["speedup"] > 0
