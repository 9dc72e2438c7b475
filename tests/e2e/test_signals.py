"""Ctrl-C and SIGTERM: the first stops new submissions and lets in-flight work finish, the
second stops at once; both leave a batch the next run finishes. (kill -9: tests/crash/.)"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

MANIFEST = """
name: signals
out: out
budget: 100000
defaults: {model: base, size: 1024x1024}
grid:
  prompt: ["a fox", "an owl", "a heron", "a crane", "a wren", "a kite"]
  seed: {count: 4}
limits: {in_flight: 2, submit_per_s: 50, downloads: 2}
"""


def start(manifest: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "runner.cli", "run", str(manifest), "--emulator",
           "--time-scale", "0.05", "--quiet"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_submission(out: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    log = out / "log.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "cell_submitted" in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("the run never submitted a cell")


def states(out: Path) -> dict[str, int]:
    db = sqlite3.connect(out / "batch.sqlite")
    rows = db.execute("SELECT state, COUNT(*) FROM attempts GROUP BY state").fetchall()
    db.close()
    return dict(rows)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_finishes_in_flight_work_then_exits_130(tmp_path: Path, signum: int) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    proc = start(manifest)
    try:
        wait_for_submission(tmp_path / "out", proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Stopped" in stdout
    left = states(tmp_path / "out")
    assert left.get("submitting", 0) == 0
    assert left.get("running", 0) == 0  # in-flight work was allowed to finish
    assert left.get("planned", 0) > 0  # and nothing new was started

    again = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(manifest), "--emulator",
         "--time-scale", "0", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert states(tmp_path / "out") == {"succeeded": 24}


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.replace("in_flight: 2", "in_flight: 8"))
    proc = start(manifest)
    try:
        wait_for_submission(tmp_path / "out", proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
