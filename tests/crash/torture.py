"""`make torture`: the fault matrix, then mixed rounds; hundreds of SIGKILLs; non-zero if bad.

Part 1, the matrix (tests/crash/matrix.py): each fault kind (service, network, disk, signal)
x each phase (submit, poll, download, commit), a round each, with `TORTURE_MATRIX_RUNS` runs
per round (default 12) whose faults and SIGKILLs land in that phase. It prints the matrix of
kills / faults / violations. Round i of the matrix uses seed `TORTURE_SEED * 1000 + i`.

Part 2, mixed rounds: the harness's scenarios (open budget, binding cap, expiring steps) with
every service fault at once and SIGKILLs at seeded random moments, until `TORTURE_KILLS`
(default 120) runs were killed. Round i uses seed `TORTURE_SEED * 1000 + 500 + i`.

    TORTURE_SEED=1 make torture
    .venv/bin/python -m tests.crash.torture --replay capped 1507 10
    .venv/bin/python -m tests.crash.torture --replay-cell disk download 1009 12

The scratch folder (`TORTURE_DIR`, default a new temporary one) is removed after a clean
run and kept, with every batch, log and output, after a violation.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.crash.harness import SCENARIOS, Report, run_scenario, table
from tests.crash.matrix import CellReport, MatrixCell, cells, clean, matrix_table, run_cell


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def matrix(*, runs: int, seed: int, workdir: Path) -> list[CellReport]:
    """Every kind x phase cell, `runs` runs each; report as each cell ends."""
    results: list[CellReport] = []
    for i, cell in enumerate(cells()):
        result = run_cell(cell, seed * 1000 + i, runs, workdir / cell.name)
        results.append(result)
        _say(_cell_line(result, seed * 1000 + i))
        if not result.report.violations:
            clean(workdir / cell.name)
    return results


def _cell_line(result: CellReport, seed: int) -> str:
    r = result.report
    exits = " ".join(f"{rc}x{n}" for rc, n in sorted(result.exits.items()))
    line = (
        f"cell {result.cell.name:<17} seed {seed}: {r.kills} kills, {result.faults} faults,"
        f" exits [{exits}], {r.workflows} workflows, {r.duplicates} dups,"
        f" net {r.final_net_buzz}/{r.scenario.cap_buzz} Buzz, rc {r.final_rc},"
        f" {r.wall_s:.1f} s, {len(r.violations)} violations"
    )
    return "\n".join([line, *(f"    {v}" for v in r.violations)])


def torture(*, kills: int, seed: int, per_round: int, workdir: Path) -> list[Report]:
    """Run rounds until `kills` runs were SIGKILLed; report as each round ends."""
    reports: list[Report] = []
    kinds = list(SCENARIOS)
    killed = 0
    while killed < kills:
        i = len(reports)
        kind = kinds[i % len(kinds)]
        n = min(per_round, kills - killed)
        scenario = SCENARIOS[kind](f"{kind}-{i}", seed * 1000 + 500 + i, n)
        report = run_scenario(scenario, workdir / scenario.name)
        reports.append(report)
        killed += max(report.kills, 1)  # a run that ends before its kill is not a kill
        _say(
            f"round {i:>3} {kind:<9} seed {scenario.seed}: {report.kills} kills,"
            f" {report.early_exits} early, {report.workflows} workflows, {report.duplicates} dups,"
            f" net {report.final_net_buzz}/{scenario.cap_buzz} Buzz, rc {report.final_rc},"
            f" {report.wall_s:.1f} s, {len(report.violations)} violations"
        )
        for violation in report.violations:
            _say(f"    {violation}")
    return reports


def main(argv: Sequence[str]) -> int:
    scratch = os.environ.get("TORTURE_DIR")
    workdir = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="zbatch-torture-"))
    started = time.monotonic()
    results: list[CellReport] = []
    reports: list[Report] = []
    if argv[:1] == ["--replay"]:  # --replay KIND SEED KILLS
        kind, seed, kills = argv[1], int(argv[2]), int(argv[3])
        reports = [run_scenario(SCENARIOS[kind](kind, seed, kills), workdir / kind)]
        for violation in reports[0].violations:
            _say(f"    {violation}")
    elif argv[:1] == ["--replay-cell"]:  # --replay-cell KIND PHASE SEED RUNS
        cell, seed, runs = MatrixCell(argv[1], argv[2]), int(argv[3]), int(argv[4])
        results = [run_cell(cell, seed, runs, workdir / cell.name)]
        _say(_cell_line(results[0], seed))
    else:
        seed = _env_int("TORTURE_SEED", 1)
        _say("part 1: the fault matrix (kind x phase)")
        results = matrix(runs=_env_int("TORTURE_MATRIX_RUNS", 12), seed=seed, workdir=workdir)
        _say("")
        _say("part 2: mixed rounds (every service fault, SIGKILL at random moments)")
        reports = torture(
            kills=_env_int("TORTURE_KILLS", 120),
            seed=seed,
            per_round=_env_int("TORTURE_KILLS_PER_ROUND", 10),
            workdir=workdir,
        )
    if results:
        _say("")
        _say(matrix_table(results))
    if reports:
        _say("")
        _say(table(reports))
    bad = sum(len(r.violations) for r in reports) + sum(len(r.report.violations) for r in results)
    _say(f"wall time {time.monotonic() - started:.1f} s; {bad} violations")
    if bad:
        _say(f"kept for inspection: {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
