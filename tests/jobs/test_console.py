"""What a person sees: progress bars with units, rate and ETA (distill: steps and loss), Ray's and the libraries' logs
in the log file instead of the terminal, and Ctrl-C as one line with exit code 130."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.console import INTERRUPTED

REPO = Path(__file__).parents[2]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    return {**env, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def test_distill_bar_shows_steps_rate_eta_and_loss(ray_session, capfd, monkeypatch):
    from actors.progress import StepProgress
    from jobs.distill import following_steps

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    steps = StepProgress.remote()
    with following_steps(steps, "distill stage1", show=True):
        time.sleep(1.2)  # no step yet: the bar says what it waits for
        for step in (41, 42, 43):  # a resumed run: its rate counts this invocation's steps only
            ray_session.get(steps.update.remote(step, 100, 1.0 / step))
            time.sleep(0.6)
    err = capfd.readouterr().err.replace("\r", "\n")
    assert "distill stage1: 0step [" in err and "starting workers" in err
    final = [line for line in err.splitlines() if "43/100" in line][-1]
    assert "distill stage1:  43%" in final and "step/s" in final and "<" in final and "loss 0.0233" in final


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    config = tmp_path / "prepare.yaml"
    config.write_text(f"dataset: {{layout: scannet, root: {tmp_path / 'raw'}, synthetic: {{num_scenes: 40, "
                      f"frames_per_scene: 12, size: real}}}}\noutput: {tmp_path / 'prepared'}\n")
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "prepare", "--config", str(config)], cwd=REPO,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240  # Ray starts, then scenes render: wait for the first one on disk
    while time.monotonic() < deadline and process.poll() is None \
            and not list((tmp_path / "raw").glob("scannet_3d/val/*.pth")):
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert INTERRUPTED in err and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.count(INTERRUPTED) == 1
    log = next((tmp_path / "prepared" / "logs").glob("prepare-*.log"))
    assert err.startswith(f"log: {log}\n") and "Started a local Ray instance" in log.read_text()


def test_logs_go_to_a_file_unless_verbose(ray_session, tmp_path, capfd):
    import json

    from jobs.cli import main as cli_main

    prepared = tmp_path / "prepared"  # one scene listed, its file missing: the stage runs and that unit fails
    prepared.mkdir()
    (prepared / "dataset.json").write_text(json.dumps({"preset": "scannet", "scenes": ["scene0000_00"]}))
    config = tmp_path / "superpoints.yaml"
    config.write_text(f"prepared: {prepared}\noutput: {tmp_path / 'quiet'}\n")
    assert cli_main(["superpoints", "--config", str(config)]) == 1
    out, err = capfd.readouterr()
    log = next((tmp_path / "quiet" / "logs").glob("superpoints-*.log"))
    assert err.splitlines()[0] == f"log: {log}" and "superpoints: 0 done, 0 already done (skipped), 1 failed" in out
    assert "  error: " in out and "scene0000_00.safetensors" in out
    assert cli_main(["superpoints", "--config", str(config), "--set", f"output={tmp_path / 'loud'}", "-v"]) == 1
    out, err = capfd.readouterr()
    assert not (tmp_path / "loud" / "logs").exists() and "log: " not in err and "1 failed" in out
