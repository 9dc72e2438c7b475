"""Emulated faults never print a traceback on the user's terminal: `zbatch run --emulator`
with a profile that drops submitted connections mid-answer keeps uvicorn's "Exception in
ASGI application" and its traceback off stderr (runner/emulator/server.py, EmulatedFaults);
the run retries those submits and finishes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from runner.emulator.app import ConnectionDropped
from runner.emulator.server import EmulatedFaults

MANIFEST = """
name: drops
out: out
budget: 1000
defaults: {model: turbo, size: 512x512}
grid:
  prompt: ["a fox", "an owl"]
  seed: {count: 2}
limits: {in_flight: 4, submit_per_s: 50, downloads: 2}
"""


def test_dropped_submits_print_no_traceback(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    faults = tmp_path / "drops.yaml"
    faults.write_text("submit_drop_after: {p: 1.0, times: 2}\n")  # the first two submits
    run = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(manifest), "--emulator"]
        + ["--time-scale", "0", "--faults", str(faults), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Done: 4 of 4 cells succeeded.")
    logged = [
        json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    ]
    dropped = [
        e for e in logged if e["event"] == "retry" and "payload is not completed" in e["error"]
    ]
    assert len(dropped) == 2, "the profile dropped two submits (and the run retried them)"
    assert "Traceback" not in run.stderr
    assert "Exception in ASGI application" not in run.stderr


def test_the_filter_turns_a_dropped_connection_into_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drop = ConnectionDropped("submit_drop_after")
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", None,
        (ConnectionDropped, drop, None),
    )  # fmt: skip
    other = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", None,
        (ValueError, ValueError("a bug"), None),
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="runner.emulator"):
        assert EmulatedFaults().filter(record) is False
        assert EmulatedFaults().filter(other) is True  # a real error still shows
    assert [r.getMessage() for r in caplog.records] == [
        "emulated fault submit_drop_after: connection dropped mid-response"
    ]
