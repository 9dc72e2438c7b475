"""`zbatch status --watch` follows a run from a second process (issue 15, item 14).

A `zbatch run` on the embedded emulator, slowed by its time scale, writes the record; the
watcher reads it read-only, shows the run's progress, and ends on its own (exit 0) once the
batch has nothing open and the run has let go of the batch lock.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from runner.cli._watch import lock_held
from runner.disk import BatchLock, OutFolder

MANIFEST = """
name: watched
out: out
budget: 100000
defaults: {model: turbo, size: 512x512}
grid:
  prompt: ["a fox", "an owl", "a heron", "a crane", "a wren", "a kite"]
  seed: {count: 4}
limits: {in_flight: 2, submit_per_s: 50, downloads: 2}
"""
ZBATCH = [sys.executable, "-m", "runner.cli"]


def wait_for_submission(out: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    log = out / "log.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "cell_submitted" in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("the run never submitted a cell")


def test_watch_follows_a_run_from_another_process_and_ends_with_it(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    out = tmp_path / "out"
    run = subprocess.Popen(
        [*ZBATCH, "run", str(manifest), "--emulator", "--time-scale", "0.2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_submission(out, run)
        watch = subprocess.run(
            [*ZBATCH, "status", str(out), "--watch", "--interval", "0.2"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        _, run_err = run.communicate(timeout=60)
    finally:
        run.kill()
        run.communicate()
    assert run.returncode == 0, run_err
    assert watch.returncode == 0, watch.stderr
    assert watch.stderr == ""
    lines = watch.stdout.splitlines()  # off a terminal: one plain line per read
    done = [int(re.search(r" cells (\d+)/24 done", line)[1]) for line in lines]  # type: ignore[index]
    assert done[0] < 24  # it saw the run at work
    assert done == sorted(done)
    assert done[-1] == 24
    assert "attempts succeeded 24" in lines[-1]
    assert "ETA 0s · - retries" in lines[-1]  # the record does not know the retries


def test_watch_waits_while_a_run_holds_the_batch(tmp_path: Path) -> None:
    """Nothing open is not the end while a runner holds the lock (it may plan more)."""
    db = OutFolder(tmp_path).db
    db.touch()
    assert not lock_held(tmp_path)
    held = BatchLock(db)
    held.acquire()
    try:
        assert lock_held(tmp_path)
    finally:
        held.release()
    assert not lock_held(tmp_path)
