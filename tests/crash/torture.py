"""`make torture`: hundreds of SIGKILLs over many batches, a counts table, non-zero on a violation.

Rounds cycle through the harness's scenarios (open budget, binding cap, expiring steps),
each a fresh emulator and batch killed `TORTURE_KILLS_PER_ROUND` times and then run to the
end, until `TORTURE_KILLS` runs have been SIGKILLed. Round i uses seed
`TORTURE_SEED * 1000 + i`, so a failing round can be replayed alone:

    TORTURE_KILLS=300 TORTURE_SEED=1 make torture
    .venv/bin/python -m tests.crash.torture --replay capped 1007 10

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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def torture(*, kills: int, seed: int, per_round: int, workdir: Path) -> list[Report]:
    """Run rounds until `kills` runs were SIGKILLed; report as each round ends."""
    reports: list[Report] = []
    kinds = list(SCENARIOS)
    killed = 0
    while killed < kills:
        i = len(reports)
        kind = kinds[i % len(kinds)]
        n = min(per_round, kills - killed)
        scenario = SCENARIOS[kind](f"{kind}-{i}", seed * 1000 + i, n)
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
    if argv[:1] == ["--replay"]:  # --replay KIND SEED KILLS
        kind, seed, kills = argv[1], int(argv[2]), int(argv[3])
        reports = [run_scenario(SCENARIOS[kind](kind, seed, kills), workdir / kind)]
        for violation in reports[0].violations:
            _say(f"    {violation}")
    else:
        reports = torture(
            kills=_env_int("TORTURE_KILLS", 300),
            seed=_env_int("TORTURE_SEED", 1),
            per_round=_env_int("TORTURE_KILLS_PER_ROUND", 10),
            workdir=workdir,
        )
    _say("")
    _say(table(reports))
    bad = sum(len(r.violations) for r in reports)
    _say(f"wall time {time.monotonic() - started:.1f} s; {bad} violations")
    if bad:
        _say(f"kept for inspection: {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
