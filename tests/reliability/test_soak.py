"""Memory stays bounded as scenes grow: benchmarks/soak.py extracts 2 and then 6 scenes (tiny frames and teacher,
CPU, a fresh local Ray each, in a subprocess), sampling the summed PSS of the driver and every Ray process every
0.5 s. Three times the scenes may not raise the peak by more than MARGIN: what grows with the dataset must be the
work done, not the processes started or the objects kept. (At this size a scene's data is kilobytes, so this
catches process growth and gross leaks; the slope per scene in docs/perf/soak-cpu.json is the finer measure.)"""

import json
import subprocess
import sys
from pathlib import Path

MARGIN = 1.3  # measured here: about 1.02; start-up (decode workers loading beside the actor) adds up to ~0.25


def test_peak_memory_at_three_times_the_scenes(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--scenes", "2", "--factors", "1", "3",
                          "--frames", "4", "--frames-per-task", "2", "--size", "tiny", "--points", "1500",
                          "--cpus", "2", "--out", str(out)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    small, large = json.loads(out.read_text())["runs"]
    assert (small["scenes"], large["scenes"]) == (2, 6)
    assert small["samples"] > 5 and large["samples"] > 5  # the sampler ran through both runs
    assert large["peak_pss_gb"] <= MARGIN * small["peak_pss_gb"], (small, large)
