"""`sas-ray demo` as a newcomer runs it (a subprocess with its own Ray): quiet output (the log path, one progress
bar per stage, the summary; Ray's and the libraries' logs in the log file), a report led by the simulated teachers'
rows in which capability fusion beats both teachers, and the pictures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update(PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--output", str(output)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=850)
    assert run.returncode == 0, run.stdout + run.stderr
    return output, run.stdout, run.stderr


def _final_bars(stderr: str) -> dict[str, str]:
    """Each progress bar's last state, by its description."""
    bars = {}
    for line in stderr.replace("\r", "\n").splitlines():
        if match := re.match(r"^([\w ()]+?): +\d+%\|", line):
            bars[match[1]] = line
    return bars


def test_terminal_shows_the_log_path_progress_bars_and_the_summary_only(demo):
    output, stdout, stderr = demo
    log = next((output / "logs").glob("demo-*.log"))
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == f"log: {log}"
    assert all(re.match(r"^[\w ()]+?: +\d+%\|", line) for line in lines[1:]), \
        [line for line in lines[1:] if not re.match(r"^[\w ()]+?: +\d+%\|", line)]  # nothing but bars
    bars = _final_bars(stderr)
    for desc, unit in [("render synthetic", "scene"), ("prepare", "scene"), ("extract (2 teachers)", "frame"),
                       ("capability (labels)", "image"), ("capability", "image"), ("fuse capability", "scene"),
                       ("superpoints", "scene"), ("evaluate", "scene")]:
        bar = bars[desc]
        assert "100%|" in bar and re.search(rf"\d+\.\d+(s/{unit}|{unit}/s)\]$", bar), bar  # count, rate, time
    text = log.read_text()
    assert "Started a local Ray instance" in text and "Traceback" not in text  # Ray's own output went to the file
    assert stdout.startswith("simulated teachers (known skill), mIoU / mAcc %:\n")
    assert re.search(r"^report: .*/report\.md$", stdout, re.M) and "Traceback" not in stdout


def test_report_leads_with_the_simulated_teachers_and_capability_fusion_beats_both(demo):
    output, _, _ = demo
    report = (output / "report.md").read_text()
    first = report.index("## The method on two simulated teachers of known skill")
    assert first < report.index("## The whole chain with tiny random models") < report.index("| stage |")
    assert "**simulated**" in report
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^\| (2D [^|]+?) \| ([\d.]+) \| [\d.]+ \|$", report, re.M)}
    assert list(rows) == ["2D teacher A (LSeg role)", "2D teacher B (SEEM role)", "2D direct add",
                          "2D capability fusion", "2D capability fusion, averaged over superpoints"]
    fused = rows["2D capability fusion"]
    assert fused > rows["2D teacher A (LSeg role)"] + 1.0 and fused > rows["2D teacher B (SEEM role)"] + 1.0
    assert fused > rows["2D direct add"] and rows["2D capability fusion, averaged over superpoints"] > fused
    assert "Capability fusion beats both teachers" in report


def test_pictures_exist_and_the_report_links_them(demo):
    output, stdout, _ = demo
    report = (output / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert all((output / link).is_file() for link in links), [link for link in links if not (output / link).is_file()]
    for folder in ("teachers/evaluate/capability/scenes", "evaluate/fused/scenes"):
        scene = sorted((output / folder).iterdir())[0]
        assert (scene / "birdseye.png").is_file() and 1 <= len(list(scene.glob("view-*.png"))) <= 2
        assert f"{folder}/{scene.name}/birdseye.png" in links
    assert "capability/capability.png" in links
    assert "3D point cloud (PLY, for a 3D viewer): " in stdout and not re.search(r"picture: \S+\.ply", stdout)
