"""What a person sees: `zbatch run` in an 80x24 terminal (tmux) on a rough night (issue 15,
item 8). Warnings are printed as whole lines above the live panel, never under it: the
scrollback holds no piece of a panel, no line is wider than the terminal, and the panel's
ETA is whole. Runs the embedded emulator under jobs/faults/flaky.yaml with a fixed seed and
a time scale that keeps the run on screen for some seconds; the test waits for what it
looks for (a deadline, no fixed sleep), so the machine's speed changes nothing it checks.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len

FLAKY = Path(__file__).resolve().parents[2] / "jobs" / "faults" / "flaky.yaml"
COLUMNS, ROWS = 80, 24
MANIFEST = """
name: night
out: out
budget: 100000
defaults: {model: turbo, size: 512x512}
grid:
  prompt: ["a fox", "an owl", "a heron", "a crane", "a wren", "a kite"]
  seed: {count: 8}
limits: {in_flight: 4, submit_per_s: 50, downloads: 4}
"""
DONE = "ZBATCH-EXIT"
DURATION = r"(-|\d+s|\d+m\d\ds|\d+h\d\dm|stopping)"
ETA_ROW = re.compile(rf"^│ ETA\s+{DURATION}\s+│$")
WARNING_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[warning\s*\] \w+")


class Tmux:
    """One tmux server of its own (its socket named after the test's folder)."""

    def __init__(self, folder: Path) -> None:
        self.socket = f"zbatch-test-{abs(hash(folder))}"

    def __call__(self, *args: str) -> str:
        cmd = ["tmux", "-L", self.socket, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout

    def capture(self, *, scrollback: bool) -> list[str]:
        """The pane's lines, wrapped lines joined (-J), with the scrollback when asked."""
        extra = ["-S", "-"] if scrollback else []
        text = self("capture-pane", "-p", "-J", *extra, "-t", "zb")
        return [line.rstrip() for line in text.splitlines()]

    def settled(self) -> list[str]:
        """The visible screen once two captures in a row agree (not halfway through a frame)."""
        before = self.capture(scrollback=False)
        for _ in range(100):
            now = self.capture(scrollback=False)
            if now == before:
                return now
            before = now
        return before

    def wait_for(self, found: str, *, timeout_s: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.capture(scrollback=True)
            if any(found in line for line in lines):
                return lines
            time.sleep(0.05)
        raise AssertionError(
            f"{found!r} never showed:\n" + "\n".join(self.capture(scrollback=True))
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path)
    try:
        yield server
    finally:
        subprocess.run(["tmux", "-L", server.socket, "kill-server"], capture_output=True)


def panels(lines: list[str]) -> list[list[str]]:
    """The panels in `lines`: each from its top border to its bottom border."""
    found: list[list[str]] = []
    for n, line in enumerate(lines):
        if line.startswith("╭"):
            end = next(i for i in range(n, len(lines)) if lines[i].startswith("╰"))
            found.append(lines[n : end + 1])
    return found


def check_screen(lines: list[str]) -> list[str]:
    """No line wider than the terminal, each panel whole with a whole ETA; its ETA row."""
    wide = [line for line in lines if cell_len(line) > COLUMNS]
    assert not wide, "\n".join(wide)
    inside = {n for n, line in enumerate(lines) if line.startswith("│")}
    bordered = sum(len(p) - 2 for p in panels(lines))
    assert len(inside) == bordered, "a panel row outside a whole panel:\n" + "\n".join(lines)
    etas = [line for p in panels(lines) for line in p if line.startswith("│ ETA")]
    assert all(ETA_ROW.match(line) for line in etas), etas
    return etas


def test_run_on_a_rough_night_keeps_an_80_column_display_readable(
    tmp_path: Path, tmux: Tmux
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    run = shlex.join(
        [sys.executable, "-m", "runner.cli", "run", "m.yaml", "--emulator",
         "--faults", str(FLAKY), "--seed", "7", "--time-scale", "0.05"]
    )  # fmt: skip
    shell = f"cd {shlex.quote(str(tmp_path))} && {run} > summary.txt; echo {DONE} $?; exec cat"
    tmux("new-session", "-d", "-x", str(COLUMNS), "-y", str(ROWS), "-s", "zb", shell)

    during = tmux.wait_for("zbatch run ·")
    if not any(DONE in line for line in during):  # caught while running: the screen is sound
        screen = tmux.settled()
        assert len(panels(screen)) <= 1
        check_screen(screen)

    after = tmux.wait_for(DONE)
    assert f"{DONE} 0" in after
    (final,) = panels(after)  # one panel in the whole scrollback: no half-panel left behind
    assert final[0].startswith("╭─")
    assert "zbatch run ·" in final[0]
    assert any("48/48 done" in line for line in final)
    assert check_screen(after) == [next(line for line in final if line.startswith("│ ETA"))]
    # The warnings (a flaky night has retries) are whole lines, above the panel.
    warnings = [n for n, line in enumerate(after) if "[warning" in line]
    assert warnings, "the flaky profile made no warning"
    assert all(WARNING_LINE.match(after[n]) for n in warnings), [after[n] for n in warnings]
    assert max(warnings) < after.index(final[0])
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("Done: 48 of 48 cells succeeded.")
