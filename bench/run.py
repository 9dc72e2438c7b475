"""`make bench`: every benchmark of issue 8 in one run, a table, and bench/results.json.

Each benchmark (bench/benches.py) runs the emulator (`python -m bench.serve`, rate limits
lifted) and zbatch or a baseline (bench/baselines.py) in processes of their own, so the CPU
seconds reported for a runner are its own. Where a size is below the issue's (to keep the
whole run under 5 minutes on 2 cores) the row says so. Every value was measured in this
run; the comparisons are ratios of runs made side by side on the same emulator build.

    python -m bench.run              # everything (make bench)
    python -m bench.run rate resume  # some benchmarks only
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from bench.benches import BENCHES, FULL, Sizes
from bench.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results.json"


def run(names: list[str], sizes: Sizes, folder: Path) -> list[Figure]:
    """Run the named benchmarks in order; a failing one becomes a row saying so."""
    figures: list[Figure] = []
    for name in names:
        started = time.monotonic()
        work = folder / name
        work.mkdir()
        try:
            figures += BENCHES[name](sizes, work)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            figures.append(Figure(name, f"FAILED: {exc}"[:200], float("nan"), "", "", False))
        print(f"  {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return figures


def render(figures: list[Figure]) -> str:
    """The table: benchmark, figure, value, unit, target, met."""
    header = ("benchmark", "figure", "value", "unit", "target", "met")
    rows = [header] + [
        (
            f.benchmark,
            f.figure,
            f"{f.value:,.2f}" if abs(f.value) < 100 else f"{f.value:,.0f}",
            f.unit,
            f.target,
            "" if f.met is None else ("yes" if f.met else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.rjust(widths[j]) if j == 2 else c.ljust(widths[j]) for j, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)} (allowed: {', '.join(BENCHES)})"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zbatch-bench-") as folder:
        figures = run(names, FULL, Path(folder))
    print(render(figures))
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s; {RESULTS}")
    RESULTS.write_text(json.dumps([f.as_json() for f in figures], indent=2) + "\n")


if __name__ == "__main__":
    main()
