"""Every benchmark of `make bench` still runs, at a tiny size, and returns figures with units.

No timing is asserted: a benchmark proves here only that it works and what it reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.benches import BENCHES, TINY
from bench.run import render


@pytest.mark.parametrize("name", list(BENCHES))
def test_benchmark_runs_at_a_tiny_size_and_reports_its_figures(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = BENCHES[name](TINY, tmp_path)
    assert figures
    for figure in figures:
        assert figure.benchmark
        assert figure.figure
        assert math.isfinite(figure.value), figure
        assert figure.command, figure
        if figure.target:
            assert figure.met is not None, figure
    with capsys.disabled():  # the issue asks that the tiny run show its figures
        print(f"\n{render(figures)}")  # noqa: T201
