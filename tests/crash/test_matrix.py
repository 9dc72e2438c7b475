"""The short version of the torture matrix (tests/crash/matrix.py): one cell of each kind, each
in a different phase, a few runs each, against real `zbatch run` and `zbatch emulator`
processes with the phase-aware proxy between them. `make torture` runs all 16 cells.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.harness import EXIT_CAP, EXIT_DONE, KILLED
from tests.crash.matrix import (
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    CellReport,
    MatrixCell,
    cell_scenario,
    run_cell,
)
from tests.crash.proxy import phase_of


@pytest.mark.parametrize(
    ("method", "target", "phase"),
    [
        ("POST", "/v2/consumer/workflows?wait=0&whatif=false", "submit"),
        ("POST", "/v2/consumer/workflows?wait=0&whatif=true", None),
        ("GET", "/v2/consumer/workflows?tags=zb-1&take=100", "poll"),
        ("GET", "/v2/consumer/workflows/123-456", "poll"),
        ("GET", "/v2/consumer/blobs/ABC.jpeg?exp=1&sig=x", "download"),
        ("GET", "/v2/consumer/blobs/content/tok", "download"),
        ("POST", "/v2/consumer/blobs/ABC/refresh", "download"),
        ("DELETE", "/v2/consumer/workflows/123-456", None),
    ],
)
def test_the_proxy_tells_each_route_its_phase(method: str, target: str, phase: str | None) -> None:
    assert phase_of(method, target) == phase


@pytest.mark.parametrize(
    ("kind", "phase", "seed"),
    [
        ("service", "submit", 41),
        ("network", "download", 42),
        ("disk", "commit", 43),
        ("signal", "poll", 44),
    ],
)
def test_a_matrix_cell_holds_every_invariant(
    kind: str, phase: str, seed: int, tmp_path: Path
) -> None:
    """Faults and SIGKILLs (or SIGTERM/SIGINT) in one phase, then a run to the end: all held."""
    assert_cell_holds(MatrixCell(kind, phase), seed, tmp_path)


def test_the_disk_cell_injects_where_it_cannot_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a tmpfs the runner's writes fail on cue (tests/crash/injected_disk.py): the same
    cell, the same invariants, so CI checks the disk row on any machine."""
    monkeypatch.setenv("ZBATCH_TEST_NO_MOUNT", "1")
    result = assert_cell_holds(MatrixCell("disk", "download"), 45, tmp_path)
    assert result.disk == "INJECTED"


def assert_cell_holds(cell: MatrixCell, seed: int, workdir: Path) -> CellReport:
    result = run_cell(cell, seed, 3, workdir)
    report = result.report
    assert report.violations == []
    assert result.faults > 0, "the cell's fault never fired"
    stopped = {
        "signal": (EXIT_INTERRUPTED, KILLED),
        "disk": (EXIT_DISK_FULL, KILLED),
    }.get(cell.kind, (KILLED,))
    assert sum(result.exits.get(rc, 0) for rc in stopped) >= 2, f"exits {result.exits}"
    assert report.duplicates == 0
    binding = cell_scenario(cell, seed, 3).binding
    assert report.final_rc == (EXIT_CAP if binding else EXIT_DONE)
    assert report.final_net_buzz <= report.scenario.cap_buzz
    return result
