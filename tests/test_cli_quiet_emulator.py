"""Issue 17 item 5, a quiet emulator: `zbatch run --emulator` with `zbatch init`'s flaky fault
profile prints no traceback and no "Exception in ASGI application" on the user's stderr; each
fault the emulator injects is one `emulator` event in OUT/log.jsonl naming its kind
(`fault`). `zbatch emulator` prints the same faults among its own log lines, as one line
each, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from runner.cli._options import MAX_FLAG_INT

# The emulated dropped connection (submit_drop_after) is the fault that used to print
# uvicorn's "Exception in ASGI application" and a traceback.
NOISE = ("Traceback", "Exception in ASGI", "ConnectionDropped", "emulated fault")


def _zbatch(folder: Path, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CIVITAI_API_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "zbatch", *argv],
        cwd=folder,
        env={**env, **kw.pop("env", {})},
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def _a_bigger_demo(folder: Path) -> str:
    """`zbatch init`'s demo with 8 seeds (48 cells), so that most fault kinds fire."""
    assert _zbatch(folder, "init").returncode == 0
    text = (folder / "demo.yaml").read_text()
    text = re.sub(r"seed: \{count: 2\}", "seed: {count: 8}", text)
    text = re.sub(r"^budget: .*$", f"budget: {MAX_FLAG_INT}", text, flags=re.M)
    (folder / "big.yaml").write_text(text.replace("out: out/demo", "out: out/big"))
    return "big.yaml"


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_flaky_profile_prints_no_traceback_and_logs_each_fault_with_its_kind(
    tmp_path: Path,
) -> None:
    manifest = _a_bigger_demo(tmp_path)
    kinds = set(yaml.safe_load((tmp_path / "faults" / "flaky.yaml").read_text()))
    done = _zbatch(
        tmp_path, "run", manifest, "--emulator", "--time-scale", "0",
        "--faults", "faults/flaky.yaml", "--seed", "7",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Done: 48 of 48 cells succeeded."), done.stdout
    for noise in NOISE:
        assert noise not in done.stderr, (noise, done.stderr)
    faults = [
        e for e in _events(tmp_path / "out" / "big" / "log.jsonl") if e["event"] == "emulator"
    ]
    assert len(faults) >= 5, "48 cells under the flaky profile meet several faults"
    for event in faults:
        assert event["fault"] in kinds, event
        assert event["message"] == f"emulated fault {event['fault']} on {event['subject']}"
        assert event["level"] == "info"
    assert len({e["fault"] for e in faults}) >= 3  # several kinds, each named


def test_dropped_submits_are_logged_as_their_fault_and_stay_off_stderr(tmp_path: Path) -> None:
    """The fault that raised in the ASGI app: each drop is one event, none on stderr."""
    manifest = _a_bigger_demo(tmp_path)
    (tmp_path / "drops.yaml").write_text("submit_drop_after: {p: 1.0, times: 3}\n")
    done = _zbatch(
        tmp_path, "run", manifest, "--emulator", "--time-scale", "0", "--faults", "drops.yaml"
    )
    assert done.returncode == 0, done.stderr
    for noise in NOISE:
        assert noise not in done.stderr, (noise, done.stderr)
    events = _events(tmp_path / "out" / "big" / "log.jsonl")
    drops = [e for e in events if e["event"] == "emulator"]
    assert [e["fault"] for e in drops] == ["submit_drop_after"] * 3
    retried = [e for e in events if e["event"] == "retry" and e.get("what") == "submit"]
    assert len(retried) >= 3  # the run met each drop and submitted again


def test_zbatch_emulator_prints_a_fault_as_one_line_of_its_log(tmp_path: Path) -> None:
    """`zbatch emulator` with the drop profile, a run against it: its stderr has one line per
    fault, with the kind, and no traceback."""
    manifest = _a_bigger_demo(tmp_path)
    (tmp_path / "drops.yaml").write_text("submit_drop_after: {p: 1.0, times: 2}\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "zbatch", "emulator", "--port", "0", "--time-scale", "0"]
        + ["--faults", "drops.yaml"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = server.stderr.readline()
            seen.append(line)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        assert found, seen
        done = _zbatch(
            tmp_path, "run", manifest, "--api-url", found.group(1), "--quiet",
            env={"CIVITAI_API_TOKEN": "a-token"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, rest = server.communicate(timeout=60)
    log = "".join(seen) + rest
    assert "Traceback" not in log
    assert "Exception in ASGI" not in log
    faults = [line for line in log.splitlines() if "emulated fault" in line]
    assert len(faults) == 2, log
    assert all(re.fullmatch(r"INFO: +emulated fault submit_drop_after on \S+", f) for f in faults)
    assert "a-token" not in log
