"""Platforms: zbatch supports POSIX (Linux, macOS) and says so in one line elsewhere.

Windows is simulated as the issue's finder did: a Python in which `import fcntl` fails
(`sys.modules["fcntl"] = None` in a sitecustomize). Every command then refuses in one line
with exit 2 and no traceback; `--help` still answers. With fcntl, the lock is unchanged
(tests/test_store.py and tests/e2e/test_status_watch.py prove its semantics).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import runner.disk._lock as lock_module
from runner.disk import BatchLock, lock_held, platform_problem
from runner.errors import BatchInUse, UsageError
from tests.dists import ROOT

COMMANDS = [
    ["status", "OUT"],
    ["run", "MANIFEST", "--emulator"],
    ["export", "OUT", "--format", "folder", "--to", "TRAIN"],
    ["gallery", "OUT"],
    ["report", "OUT"],
    ["list", "OUT"],
    ["plan", "MANIFEST"],
    ["verify", "OUT"],
]


def _without_fcntl(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['fcntl'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_refuses_in_one_line_without_fcntl(tmp_path: Path, command) -> None:
    manifest = ROOT / "jobs" / "demo.yaml"
    args = [
        {"OUT": str(tmp_path / "out"), "MANIFEST": str(manifest), "TRAIN": "train"}.get(a, a)
        for a in command
    ]
    done = _without_fcntl(tmp_path, args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("zbatch: error: zbatch runs on Linux and macOS only")
    assert "WSL" in lines[0]
    assert "Traceback" not in done.stderr
    assert "fcntl'" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_help_still_answers_without_fcntl(tmp_path: Path) -> None:
    done = _without_fcntl(tmp_path, ["--help"])
    assert done.returncode == 0, done.stderr
    assert "usage: zbatch" in done.stdout


def test_fcntl_is_really_blocked_in_that_python(tmp_path: Path) -> None:
    """The simulation holds: the child cannot import fcntl (so the refusal is not vacuous)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['fcntl'] = None\n")
    code = "import sys\ntry:\n import fcntl\nexcept ImportError:\n sys.exit(9)\n"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == 9


def test_here_the_platform_is_supported() -> None:
    assert platform_problem() is None


def test_the_lock_refuses_in_words_when_fcntl_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Used as a library on such a platform, the lock raises a UsageError, not a NameError."""
    monkeypatch.setattr(lock_module, "fcntl", None)
    problem = platform_problem()
    assert problem is not None
    assert sys.platform in problem
    with pytest.raises(UsageError, match="Linux and macOS only"):
        BatchLock(tmp_path / "batch.sqlite").acquire()
    with pytest.raises(UsageError, match="Linux and macOS only"):
        lock_held(tmp_path / "batch.sqlite")


def test_the_lock_keeps_one_runner_per_batch_and_lets_readers_see_it(tmp_path: Path) -> None:
    db = tmp_path / "batch.sqlite"
    assert not lock_held(db)  # no lock file yet
    first = BatchLock(db)
    first.acquire()
    try:
        assert lock_held(db)
        with pytest.raises(BatchInUse, match=f"pid {os.getpid()}@"):
            BatchLock(db).acquire()
    finally:
        first.release()
    assert not lock_held(db)
    again = BatchLock(db)
    again.acquire()
    again.release()
