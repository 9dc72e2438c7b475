"""Headless Chromium driven as a plain subprocess: `--dump-dom` and `--screenshot`.

Every run gets a fresh, empty profile folder, the flags this machine needs (no sandbox as
root, no GPU, no background networking), a timeout, and its whole process group killed at
the end, whatever happened. Tests that need it skip with the install command when it is
absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL = "apt-get update && apt-get install -y chromium  (what .ci/run does)"
TIMEOUT_S = 60
WINDOW = (1200, 1000)  # CSS px, one per screen pixel (--force-device-scale-factor=1)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--allow-file-access-from-files",
    "--virtual-time-budget=5000",  # let every image load and the script run before the dump
)


def chromium_path() -> str:
    """The chromium binary, or skip the test naming how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(f"chromium is not installed: {INSTALL}")
    return found


def run_chromium(*args: str, timeout_s: float = TIMEOUT_S) -> str:
    """Run headless Chromium with `args`; return its stdout. Always kills what it started."""
    binary = chromium_path()
    with tempfile.TemporaryDirectory(prefix="zbatch-chromium-") as profile:
        proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: the renderer and zygote die too
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise AssertionError(f"chromium did not finish within {timeout_s} s: {args}") from None
        finally:
            _kill_group(proc)
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise AssertionError(f"chromium exited {proc.returncode}: {args}\n{tail}")
    return out.decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def dump_dom(page: Path, *, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, serialized; laid out in a WINDOW-sized window."""
    size = "--window-size={},{}".format(*WINDOW)
    return run_chromium("--dump-dom", size, page.resolve().as_uri() + fragment)


def screenshot(page: Path, png: Path) -> Path:
    """A WINDOW-sized screenshot of the page's viewport."""
    size = "--window-size={},{}".format(*WINDOW)
    run_chromium(f"--screenshot={png}", size, page.resolve().as_uri())
    return png
