"""The crash harness: `zbatch run` killed with SIGKILL at seeded moments, then run to the end.

One scenario = one emulator subprocess (`zbatch emulator` with a fault profile and a small
time scale, on a free loopback port) and one batch (a manifest in a scratch folder). The
runner is started as a subprocess with a sentinel token, killed after a seeded random delay,
started again, N times, then run to completion. After every kill and at the end the
invariants of `tests/crash/checks.py` are checked against the emulator's introspection and
a copy of the batch database; each broken one becomes a line in `Report.violations`.

Used by `tests/crash/test_kill.py` (a few kills, in `make test`) and `tests/crash/torture.py`
(hundreds, `make torture`). No sleeps: the only waits are `Popen.wait(timeout=...)`, which
are the seeded kill delays themselves, or bounded waits for a process to start or stop.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
import yaml

from tests.crash.checks import (
    Observation,
    account_of,
    check_any_instant,
    check_final,
    check_token,
    read_record,
)

ROOT = Path(__file__).resolve().parents[2]
EXIT_DONE, EXIT_CAP = 0, 4
KILLED = -signal.SIGKILL

# Every fault kind the runner must survive, at rates that make a 48-cell batch meet each.
# 429s come from submit_5xx_before/read_5xx statuses (the real limiter is config-only).
FAULTS: Mapping[str, Any] = {
    "submit_5xx_before": {"p": 0.1, "statuses": [429, 500, 503]},
    "submit_5xx_after": 0.1,  # created and charged, then 502
    "submit_drop_after": 0.08,  # created and charged, then the connection drops mid-body
    "read_5xx": {"p": 0.05, "statuses": [429, 502, 503]},
    "slow": {"p": 0.03, "delay_s": 0.3},
    "step_fail": 0.08,  # refunded; retried as a new attempt
    "blob_5xx": 0.05,
    "blob_truncate": {"p": 0.05, "fraction": 0.4},
    "blob_corrupt": 0.05,
}
# Expiry happens at the step timeout (20 min x time_scale): only with a tiny time scale.
EXPIRE_FAULT: Mapping[str, Any] = {"step_expire": {"p": 0.05, "times": 3}}

PROMPTS = ("a fox in the snow", "a red lighthouse at dusk", "a bowl of ramen")
MANIFEST = """\
name: {name}
out: {out}
budget: {budget}
seed_base: {seed}
defaults: {{size: 64x64}}
grid:
  model: [turbo, base]
  prompt: {prompts}
  quantity: [1, 2]
  seed: {{count: {seeds}}}
retries: {{attempts: 3}}
limits: {{in_flight: 8, submit_per_s: 200, downloads: 4}}
"""


@dataclass(frozen=True)
class Scenario:
    """One batch against one emulator, killed `kills` times, then run to the end."""

    name: str
    seed: int
    kills: int
    seeds_per_prompt: int = 4  # cells = 2 models x 3 prompts x 2 quantities x this
    budget_buzz: int | None = None  # None: twice what the cells cost (not binding)
    time_scale: float = 0.1
    faults: Mapping[str, Any] = field(default_factory=lambda: dict(FAULTS))
    kill_delay_s: tuple[float, float] = (0.05, 1.5)
    final_timeout_s: float = 120.0
    out: str = "out"  # the batch's folder, relative to the round's folder

    @property
    def cells(self) -> int:
        return 2 * len(PROMPTS) * 2 * self.seeds_per_prompt

    @property
    def cap_buzz(self) -> int:
        return self.budget_buzz if self.budget_buzz is not None else 2 * self.cells  # 1 Buzz each

    @property
    def binding(self) -> bool:
        return self.cap_buzz < self.cells  # 64x64 costs the 1 Buzz minimum per cell

    @property
    def token(self) -> str:
        return f"sk-SENTINEL-crash-{self.seed}-5f1e0c9a"


def open_scenario(name: str, seed: int, kills: int) -> Scenario:
    """The budget is not binding; workflows queue 0.2-1 s, so kills land mid-flight."""
    return Scenario(name=name, seed=seed, kills=kills, time_scale=0.5)


def capped_scenario(name: str, seed: int, kills: int) -> Scenario:
    """The cap binds at 5/8 of the cells, with workflows still in flight when it does."""
    cells = Scenario(name=name, seed=seed, kills=kills).cells
    return Scenario(name=name, seed=seed, kills=kills, budget_buzz=cells * 5 // 8, time_scale=0.2)


def expiring_scenario(name: str, seed: int, kills: int) -> Scenario:
    """Steps expire too: the step timeout (20 min x time scale) is 3.6 s at this scale."""
    return Scenario(
        name=name, seed=seed, kills=kills, time_scale=0.003, faults={**FAULTS, **EXPIRE_FAULT}
    )


SCENARIOS = {"open": open_scenario, "capped": capped_scenario, "expiring": expiring_scenario}


@dataclass
class Report:
    """What a scenario did and every invariant it found broken (empty when all held)."""

    scenario: Scenario
    kills: int = 0
    early_exits: int = 0  # runs that ended on their own before their kill
    final_rc: int | None = None
    cells: int = 0
    attempts: int = 0
    workflows: int = 0
    duplicates: int = 0
    max_net_buzz: int = 0  # the emulator's net charge, highest seen after any kill
    max_committed_buzz: int = 0  # the ledger's charged + reserved, highest seen
    final_net_buzz: int = 0
    succeeded: int = 0
    images: int = 0
    lost: int = 0
    unsubmitted: int = 0
    faults_fired: int = 0
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    def observe(self, obs: Observation) -> None:
        self.duplicates = max(self.duplicates, obs.duplicates)
        self.max_net_buzz = max(self.max_net_buzz, obs.net_buzz)
        self.max_committed_buzz = max(self.max_committed_buzz, obs.committed_buzz)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int:
    """Terminate a child and reap it; kill it if it does not go within `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=timeout_s)


class EmulatorProcess:
    """`zbatch emulator` as a subprocess on a free loopback port; stopped on exit, always."""

    def __init__(self, workdir: Path, *, seed: int, time_scale: float, faults_path: Path) -> None:
        self.workdir = workdir
        self.seed = seed
        self.time_scale = time_scale
        self.faults_path = faults_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self._log = (self.workdir / "emulator.log").open("ab")
        try:
            for _ in range(3):  # a free port can be taken between the probe and the bind
                if self._start(free_port()):
                    return self
            raise RuntimeError(f"the emulator did not start; see {self.workdir / 'emulator.log'}")
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self, port: int) -> bool:
        cmd = [
            *zbatch(),
            "emulator",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--time-scale", str(self.time_scale),
            "--faults", str(self.faults_path),
            "--seed", str(self.seed),
            # URLs that expire mid-run (refreshed by the downloader) and real 429s with
            # Retry-After once the runner outpaces the service's submit limit
            "--url-ttl", "3",
            "--submit-rate", "120",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=self._log)
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/_emulator/state", timeout=2.0).raise_for_status()
                return True
            except httpx.TransportError:
                try:  # not listening yet: wait a moment, or learn that it died
                    self.proc.wait(timeout=0.05)
                    return False
                except subprocess.TimeoutExpired:
                    continue
        stop(self.proc)
        raise RuntimeError(f"the emulator at {self.url} was not ready within 20 s")

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_emulator/state", timeout=10.0)
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        return state

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.proc is not None:
                stop(self.proc)
        finally:
            if self._log is not None:
                self._log.close()


def zbatch() -> list[str]:
    return [sys.executable, "-m", "runner.cli"]


def write_inputs(scenario: Scenario, workdir: Path) -> tuple[Path, Path]:
    """The manifest and the fault profile of `scenario`, under `workdir`."""
    manifest = workdir / "batch.yaml"
    manifest.write_text(
        MANIFEST.format(
            name=f"crash-{scenario.name}",
            out=scenario.out,
            budget=scenario.cap_buzz,
            seed=scenario.seed,
            prompts=json.dumps(list(PROMPTS)),
            seeds=scenario.seeds_per_prompt,
        )
    )
    faults = workdir / "faults.yaml"
    faults.write_text(yaml.safe_dump(dict(scenario.faults)))
    return manifest, faults


class Runner:
    """Starts `zbatch run` against the emulator, with the sentinel token, logging to files."""

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        manifest: Path,
        api_url: str,
        *,
        prefix: Sequence[str] = (),
        store: str | None = None,
    ) -> None:
        """`prefix` replaces `python -m runner.cli._main` (the matrix's injected-disk wrapper);
        `store` keeps the record in PostgreSQL (`ZBATCH_STORE`) instead of OUT/batch.sqlite."""
        self.cmd = [*(prefix or zbatch()), "run", str(manifest), "--api-url", api_url, "--quiet"]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CIVITAI_", "ZBATCH_STORE"))
        }
        self.env = {**env, "CIVITAI_API_TOKEN": scenario.token}
        if store is not None:
            self.env["ZBATCH_STORE"] = store
        self.stdout = workdir / "run.stdout"
        self.stderr = workdir / "run.stderr"

    def run(
        self,
        kill_after_s: float | None,
        *,
        timeout_s: float,
        on_start: Callable[[int], None] | None = None,
    ) -> int:
        """One run, SIGKILLed after `kill_after_s` (None: left to finish); its exit code.

        A run left to finish that outlives `timeout_s` is killed too: the caller sees
        `KILLED` and reports a hang. `on_start` gets the runner's pid as soon as it exists
        (the torture matrix's proxy kills it from there).
        """
        wait_s = timeout_s if kill_after_s is None else kill_after_s
        with self.stdout.open("ab") as out, self.stderr.open("ab") as err:
            proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=err)
            if on_start is not None:
                on_start(proc.pid)
            try:
                return proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                return proc.wait(timeout=10.0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10.0)


def run_scenario(scenario: Scenario, workdir: Path, *, store: str | None = None) -> Report:
    """Kill `zbatch run` `scenario.kills` times, run it to the end, and check everything;
    with `store`, the batch's record is in that PostgreSQL database."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(scenario)
    manifest, faults = write_inputs(scenario, workdir)
    out = workdir / scenario.out
    account = account_of(scenario.token)
    rng = random.Random(scenario.seed)
    with EmulatorProcess(
        workdir, seed=scenario.seed, time_scale=scenario.time_scale, faults_path=faults
    ) as emulator:
        runner = Runner(scenario, workdir, manifest, emulator.url, store=store)
        for _ in range(scenario.kills):
            rc = runner.run(rng.uniform(*scenario.kill_delay_s), timeout_s=scenario.final_timeout_s)
            if rc == KILLED:
                report.kills += 1
            elif rc in (EXIT_DONE, EXIT_CAP):
                report.early_exits += 1
            else:
                report.violations.append(f"run {report.kills + report.early_exits}: exit {rc}")
            when = f"after kill {report.kills}"
            check_instant(report, emulator.state(), out, account, when, store)
        rc = runner.run(None, timeout_s=scenario.final_timeout_s)
        report.final_rc = rc
        expected = EXIT_CAP if scenario.binding else EXIT_DONE
        if rc == KILLED:
            report.violations.append(f"the final run hung for {scenario.final_timeout_s} s")
        elif rc != expected:
            report.violations.append(f"the final run exited {rc}, expected {expected}")
        state = emulator.state()
        check_instant(report, state, out, account, "at the end", store)
        check_end(report, state, out, account, store)
        before = state["workflow_count"]
        rc = runner.run(None, timeout_s=scenario.final_timeout_s)
        after = emulator.state()["workflow_count"]
        if rc != expected or after != before:
            report.violations.append(
                f"re-running the finished batch exited {rc} and made {after - before} workflows"
            )
    logs = [runner.stdout, runner.stderr, workdir / "emulator.log"]
    report.violations += check_token(scenario.token, out, logs)
    report.wall_s = time.monotonic() - started
    return report


def check_instant(
    report: Report,
    state: Mapping[str, Any],
    out: Path,
    account: str,
    when: str,
    store: str | None = None,
) -> None:
    record = read_record(out, scratch=out.parent / "snapshot", store=store)
    obs, problems = check_any_instant(state, record, out, account, report.scenario.cap_buzz)
    report.observe(obs)
    report.violations += [f"{when}: {p}" for p in problems]


def check_end(
    report: Report, state: Mapping[str, Any], out: Path, account: str, store: str | None = None
) -> None:
    if account not in state["accounts"]:
        report.violations.append("at the end: the sentinel token never reached the service")
    record = read_record(out, scratch=out.parent / "snapshot", store=store)
    if record is None:
        report.violations.append("at the end: no batch database")
        return
    problems = check_final(state, record, out, account, binding=report.scenario.binding)
    report.violations += [f"at the end: {p}" for p in problems]
    report.cells = record.cells
    report.attempts = len(record.attempts)
    report.workflows = int(state["workflow_count"])
    report.succeeded = sum(1 for a in record.attempts.values() if a.state == "succeeded")
    report.images = len(record.downloaded)
    report.lost = record.image_states.get("lost", 0)
    report.unsubmitted = record.cells_planned
    report.final_net_buzz = int(state["accounts"].get(account, {}).get("net_buzz", 0))
    report.faults_fired = sum(int(n) for n in state["faults_fired"].values())


def table(reports: Sequence[Report]) -> str:
    """The counts of each scenario, their totals, and the worst distance to the cap."""
    head = (
        f"{'scenario':<16}{'kills':>6}{'early':>6}{'cells':>6}{'wflows':>7}{'dups':>5}"
        f"{'net':>6}{'peak':>6}{'cap':>6}{'imgs':>6}{'lost':>5}{'unsub':>6}"
        f"{'faults':>7}{'rc':>4}{'wall_s':>8}{'bad':>5}"
    )

    def line(name: str, rs: Sequence[Report], rc: str) -> str:
        return (
            f"{name:<16}{sum(r.kills for r in rs):>6}{sum(r.early_exits for r in rs):>6}"
            f"{sum(r.cells for r in rs):>6}{sum(r.workflows for r in rs):>7}"
            f"{sum(r.duplicates for r in rs):>5}{sum(r.final_net_buzz for r in rs):>6}"
            f"{sum(r.max_committed_buzz for r in rs):>6}{sum(r.scenario.cap_buzz for r in rs):>6}"
            f"{sum(r.images for r in rs):>6}{sum(r.lost for r in rs):>5}"
            f"{sum(r.unsubmitted for r in rs):>6}{sum(r.faults_fired for r in rs):>7}"
            f"{rc:>4}{sum(r.wall_s for r in rs):>8.1f}{sum(len(r.violations) for r in rs):>5}"
        )

    lines = [head] + [line(r.scenario.name, [r], str(r.final_rc)) for r in reports]
    if len(reports) > 1:
        lines.append(line("TOTAL", reports, "-"))
    if reports:
        headroom = min(
            r.scenario.cap_buzz - max(r.max_net_buzz, r.max_committed_buzz) for r in reports
        )
        lines.append(
            "net = Buzz the emulator charged net at the end; peak = highest ledger commitment"
            f" seen after any kill; smallest headroom under a cap: {headroom} Buzz"
        )
    return "\n".join(lines)
