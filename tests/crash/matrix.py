"""The torture matrix: each fault kind x each phase, with SIGKILLs landing in that phase.

A cell of the matrix is one round: a fresh emulator, a `PhaseProxy` in front of it
(tests/crash/proxy.py) and a fresh 48-cell batch. The runner is started `kills` times; in each
run the proxy fires the cell's fault at seeded occurrences of the cell's phase, then SIGKILLs
the runner at a later seeded occurrence of the same phase (in flight, mid-body, or just after
the answer while the runner commits). Then a run to the end, with the fault cleared, and the
invariants of tests/crash/checks.py after every run and at the end, plus: no traceback in any
runner output, and only the exit codes a user is promised.

Kinds:
- service: the emulator's own faults, concentrated on the phase's routes (5xx before and
  after a submit creates, dropped answers, read 5xx, slow answers, broken or wrong-shaped
  JSON, unknown statuses, redirects to another host, blob 5xx, truncated, corrupt, lying,
  wrong-size and non-images, decompression bombs, failed steps);
- network: the proxy drops the connection before or after the service acted, cuts an answer
  mid-body, stalls it, or resets the connection just after an answer;
- disk: the batch's folder is a small tmpfs (tests/diskfull.py); the proxy fills it at the
  phase's moment, so the next write (an intent, a status, an image, a commit) meets a real
  ENOSPC; the disk is freed before the next run, as a user would after the message. Where
  the machine cannot mount, the runner runs under tests/crash/injected_disk.py, whose image
  writes and commits fail on cue instead, and the cell says INJECTED;
- signal: SIGTERM or SIGINT at the phase's moment; the runner drains, and a SIGKILL may land
  in the drain.

Half the cells (a checkerboard) run under a binding Buzz cap.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.crash.checks import account_of, check_token
from tests.crash.harness import (
    EXIT_CAP,
    EXIT_DONE,
    KILLED,
    EmulatorProcess,
    Report,
    Runner,
    Scenario,
    check_end,
    check_instant,
    write_inputs,
)
from tests.crash.injected_disk import FlagDisk
from tests.crash.proxy import PHASES, Act, PhaseProxy, Trigger
from tests.diskfull import SmallDisk, small_disk

KINDS = ("service", "network", "disk", "signal")
EXIT_INTERRUPTED = 130
EXIT_DISK_FULL = 6  # runner/cli.py: the disk (or the database's disk) is full
# A killed run, a run that finished or stopped at the cap, a drained signal, a full disk.
EXITS_ALLOWED = {KILLED, EXIT_DONE, EXIT_CAP, EXIT_INTERRUPTED, EXIT_DISK_FULL}
TMPFS_BYTES = 24 * 1024 * 1024

# The emulator's faults, concentrated on one phase's routes (service kind only).
SERVICE_FAULTS: Mapping[str, Mapping[str, Any]] = {
    "submit": {
        "submit_5xx_before": {"p": 0.15, "statuses": [429, 500, 503]},
        "submit_5xx_after": 0.12,
        "submit_drop_after": 0.1,
    },
    "poll": {
        "read_5xx": {"p": 0.1, "statuses": [429, 502, 503]},
        "slow": {"p": 0.05},
        "read_malformed_json": 0.05,
        "read_wrong_shape": 0.05,
        "read_unknown_status": 0.05,
        "read_redirect_other_host": 0.03,
    },  # read_drip is left to tests/e2e: the runner's 30 s timeouts would make rounds minutes
    "download": {
        "blob_5xx": 0.06,
        "blob_truncate": {"p": 0.06, "fraction": 0.4},
        "blob_corrupt": 0.06,
        "blob_not_image": 0.04,
        "blob_bomb": 0.04,
        "blob_wrong_size": 0.04,
        "blob_lying_length": 0.04,
    },
    "commit": {"step_fail": 0.15, "submit_5xx_after": 0.05},
}


@dataclass(frozen=True)
class MatrixCell:
    kind: str
    phase: str

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.phase}"


@dataclass
class CellReport:
    """One round's counts: the harness's report plus what the proxy fired and each run's exit."""

    cell: MatrixCell
    report: Report
    faults: int = 0  # proxy faults fired + the emulator's faults fired
    exits: dict[int, int] = field(default_factory=dict)
    disk: str = ""  # disk cells: "REAL (tmpfs)", or "INJECTED" where mounting is not allowed


def kill_trigger(phase: str, rng: random.Random, nth: int) -> Trigger:
    """The SIGKILL of a run, at the `nth` request of `phase` (or just after, for commit)."""
    if phase == "commit":
        return Trigger("commit", nth, Act.KILL_AFTER, delay_s=rng.uniform(0.0, 0.004))
    acts = {
        "submit": (Act.KILL_IN_FLIGHT, Act.KILL_IN_FLIGHT, Act.KILL_MID_BODY),
        "poll": (Act.KILL_IN_FLIGHT, Act.KILL_MID_BODY),
        "download": (Act.KILL_MID_BODY, Act.KILL_IN_FLIGHT),
    }[phase]
    return Trigger(phase, nth, rng.choice(acts))


def fault_triggers(
    cell: MatrixCell, rng: random.Random, before: int, fill_disk: Callable[[], None]
) -> list[Trigger]:
    """The cell's own faults in a run, at occurrences of its phase before the kill's `before`."""
    spots = sorted(rng.sample(range(1, before), k=min(3, before - 1))) if before > 1 else []
    if cell.kind == "network":
        acts = {
            "submit": (Act.DROP_BEFORE, Act.DROP_AFTER),
            "poll": (Act.DROP_AFTER, Act.CUT_BODY, Act.STALL),
            "download": (Act.CUT_BODY, Act.STALL, Act.DROP_AFTER),
            "commit": (Act.RESET_AFTER,),
        }[cell.phase]
        return [
            Trigger(cell.phase, n, rng.choice(acts), delay_s=rng.uniform(0.05, 0.5)) for n in spots
        ]
    if cell.kind == "disk":
        return [Trigger(cell.phase, n, Act.HOOK, hook=fill_disk) for n in spots[:1]]
    if cell.kind == "signal":
        signum = rng.choice((signal.SIGTERM, signal.SIGINT))
        then_kill_s = rng.choice((None, rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.3)))
        return [Trigger(cell.phase, before, Act.SIGNAL, signum=signum, then_kill_s=then_kill_s)]
    return []


def cell_scenario(cell: MatrixCell, seed: int, kills: int) -> Scenario:
    i = KINDS.index(cell.kind) + PHASES.index(cell.phase)
    base = Scenario(name=cell.name, seed=seed, kills=kills, time_scale=0.2, faults={})
    if cell.kind == "service":
        base = replace(base, faults=dict(SERVICE_FAULTS[cell.phase]))
    if cell.kind == "disk":
        base = replace(base, out="vol/out")
    if cell.kind == "signal" or cell.phase == "submit":
        # a drained run finishes what it started, and 8 submits in flight go out before the
        # n-th is stopped: more cells, so the later runs still have work in the phase
        base = replace(base, seeds_per_prompt=8)
    if i % 2:
        base = replace(base, budget_buzz=base.cells * 5 // 8)
    return base


def run_cell(cell: MatrixCell, seed: int, kills: int, workdir: Path) -> CellReport:
    """One round of the matrix; every invariant broken becomes a line in `report.violations`."""
    started = time.monotonic()
    scenario = cell_scenario(cell, seed, kills)
    workdir.mkdir(parents=True, exist_ok=True)
    result = CellReport(cell, Report(scenario))
    with ExitStack() as stack:
        disk: SmallDisk | None = None
        prefix: list[str] = []
        if cell.kind == "disk":
            disk = stack.enter_context(small_disk(workdir / "vol", TMPFS_BYTES))
            if not disk.real:  # no tmpfs here: the runner's own writes fail on cue
                disk = FlagDisk(disk.path, TMPFS_BYTES)
                prefix = [sys.executable, "-m", "tests.crash.injected_disk", str(disk.path)]
            result.disk = disk.kind
        _run_cell(result, scenario, workdir, disk, prefix)
    result.report.wall_s = time.monotonic() - started
    return result


def _run_cell(
    result: CellReport,
    scenario: Scenario,
    workdir: Path,
    disk: SmallDisk | None,
    prefix: list[str],
) -> None:
    cell, report = result.cell, result.report
    manifest, faults = write_inputs(scenario, workdir)
    out = workdir / scenario.out
    account = account_of(scenario.token)
    rng = random.Random(scenario.seed)
    with (
        EmulatorProcess(
            workdir, seed=scenario.seed, time_scale=scenario.time_scale, faults_path=faults
        ) as emulator,
        PhaseProxy(emulator.port) as proxy,
    ):
        runner = Runner(scenario, workdir, manifest, proxy.url, prefix=prefix)
        fill = disk.fill if disk is not None else _nothing
        for _ in range(scenario.kills):
            nth = rng.randint(1, 12 if cell.phase == "commit" else 6)
            triggers = [
                *fault_triggers(cell, rng, nth, fill),
                kill_trigger(cell.phase, rng, nth),
            ]
            if cell.kind == "signal":  # SIGTERM/SIGINT instead; a SIGKILL may land in the drain
                triggers = [t for t in triggers if t.act is Act.SIGNAL]
            log = None

            def arm(pid: int, triggers: list[Trigger] = triggers) -> None:
                nonlocal log
                log = proxy.arm(pid, triggers)

            rc = runner.run(None, timeout_s=scenario.final_timeout_s, on_start=arm)
            proxy.disarm()
            result.exits[rc] = result.exits.get(rc, 0) + 1
            if log is not None:
                result.faults += sum(1 for _, _, act in log.fired if not act.name.startswith("K"))
            if rc == KILLED:
                report.kills += 1
            elif rc in (EXIT_DONE, EXIT_CAP):
                report.early_exits += 1
            elif rc not in EXITS_ALLOWED:
                report.violations.append(f"run {sum(result.exits.values())}: exit {rc}")
            if disk is not None:
                disk.free()
            check_instant(report, emulator.state(), out, account, f"after run {len(result.exits)}")
        rc = runner.run(None, timeout_s=scenario.final_timeout_s)
        report.final_rc = rc
        expected = EXIT_CAP if scenario.binding else EXIT_DONE
        if rc != expected:
            report.violations.append(f"the final run exited {rc}, expected {expected}")
        state = emulator.state()
        check_instant(report, state, out, account, "at the end")
        check_end(report, state, out, account)
        result.faults += sum(int(n) for n in state["faults_fired"].values())
    logs = [runner.stdout, runner.stderr]
    report.violations += check_token(scenario.token, out, [*logs, workdir / "emulator.log"])
    report.violations += check_no_traceback(logs)


def _nothing() -> None:
    pass


def check_no_traceback(logs: Sequence[Path]) -> list[str]:
    """No runner output holds a Python traceback."""
    return [
        f"a traceback in {p.name}" for p in logs if p.exists() and b"Traceback" in p.read_bytes()
    ]


def cells(kinds: Sequence[str] = KINDS, phases: Sequence[str] = PHASES) -> list[MatrixCell]:
    return [MatrixCell(k, p) for k in kinds for p in phases]


def matrix_table(results: Sequence[CellReport]) -> str:
    """kills / faults / violations for each kind x phase, then the totals."""
    by = {(r.cell.kind, r.cell.phase): r for r in results}
    kinds = [k for k in KINDS if any(r.cell.kind == k for r in results)]
    width = 20
    lines = [f"{'kills/faults/bad':<12}" + "".join(f"{p:>{width}}" for p in PHASES)]
    for kind in kinds:
        row = f"{kind:<12}"
        for phase in PHASES:
            r = by.get((kind, phase))
            text = "-" if r is None else f"{r.report.kills}/{r.faults}/{len(r.report.violations)}"
            row += f"{text:>{width}}"
        lines.append(row)
    total_kills = sum(r.report.kills for r in results)
    total_bad = sum(len(r.report.violations) for r in results)
    dups = sum(r.report.duplicates for r in results)
    exits: dict[int, int] = {}
    for r in results:
        for rc, n in r.exits.items():
            exits[rc] = exits.get(rc, 0) + n
    lines.append(
        f"{total_kills} SIGKILLs, {sum(r.faults for r in results)} faults, {dups} duplicate"
        f" workflows, {total_bad} violations; run exits {dict(sorted(exits.items()))}"
    )
    return "\n".join(lines)


def clean(workdir: Path) -> None:
    """Remove a round's folder (a tmpfs under it is unmounted first)."""
    vol = workdir / "vol"
    if os.path.ismount(vol):
        subprocess.run(["umount", "-l", str(vol)], capture_output=True, check=False)
    shutil.rmtree(workdir, ignore_errors=True)
