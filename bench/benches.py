"""Every benchmark of `make bench`: each a function of the sizes, returning its figures.

The emulator and every runner run in processes of their own (bench.harness), so the CPU
seconds reported for zbatch are its process's alone. Sizes below the issue's are said in
the figure's name; every value is one this run measured.
"""

from __future__ import annotations

import heapq
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.figure import Figure
from bench.versus import bench_versus_script
from runner.emulator.workflows import plan_jobs, queue_phases


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs. `FULL` fits `make bench` in 5 minutes on 2 cores."""

    expand_cells: int = 1_000_000
    plan_cells: int = 1_000_000
    e2e_cells: int = 2_000
    sequential_cells: int = 300
    gather_cells: int = 1_000
    floor_requests: int = 3_000
    concurrency: int = 64
    slot_cells: int = 1_000
    slot_time_scale: float = 1.5
    rate_cells: int = 200
    rate_per_s: float = 20.0
    resume_cells: int = 100_000
    memory_cells: int = 100_000
    memory_in_flight: int = 1_000
    memory_time_scale: float = 25.0
    memory_watch_s: float = 40.0
    export_rows: int = 200_000
    versus_cells: int = 3_000  # issue 14: zbatch against the aiohttp script (c), 64x64
    versus_big_cells: int = 1_000  # the same at 1024x1024 (issue: 3,000)


FULL = Sizes()
TINY = Sizes(
    expand_cells=2_000,
    plan_cells=2_000,
    e2e_cells=24,
    sequential_cells=4,
    gather_cells=12,
    floor_requests=50,
    concurrency=8,
    slot_cells=24,
    slot_time_scale=0.05,
    rate_cells=12,
    rate_per_s=20.0,
    resume_cells=300,
    memory_cells=300,
    memory_in_flight=30,
    memory_time_scale=5.0,
    memory_watch_s=4.0,
    export_rows=300,
    versus_cells=24,
    versus_big_cells=8,
)

Bench = Callable[[Sizes, Path], list[Figure]]


def child_json(args: list[str], folder: Path) -> tuple[dict[str, Any], h.Finished]:
    done = h.spawn(args, log=folder / "child.stderr").wait()
    data: dict[str, Any] = json.loads(done.stdout)
    return data, done


def at_least(value: float, target: float) -> bool:
    return value >= target


def scaled(name: str, used: int, asked: int) -> str:
    """A benchmark's name, saying so when it ran smaller than the issue asks."""
    return name if used >= asked else f"{name} [measured at {used:,}, issue asks {asked:,}]"


# -- expand + key + price --------------------------------------------------------------


def bench_expand(sizes: Sizes, folder: Path) -> list[Figure]:
    args = ["bench.children", "expand", "--cells", str(sizes.expand_cells)]
    f, _ = child_json(args, folder)
    name = scaled("expand+key+price (zbatch plan)", f["cells"], 1_000_000)
    rate = f["cells"] / f["elapsed_s"]
    peak_mib = f["peak_kib"] / 1024
    command = "python -m " + " ".join(args)
    return [
        Figure(name, "cells/s", rate, "cells/s", ">= 100,000", rate >= 100_000, command),
        Figure(name, "cells per CPU second", f["cells"] / f["cpu_s"], "cells/s", "", None, command),
        Figure(name, "peak RSS of the process", peak_mib, "MiB", "< 200", peak_mib < 200, command),
    ]


# -- plan into a new batch.sqlite --------------------------------------------------------


def bench_plan(sizes: Sizes, folder: Path) -> list[Figure]:
    work = folder / "plan"
    work.mkdir()
    args = ["bench.children", "plan", "--cells", str(sizes.plan_cells), "--folder", str(work)]
    f, _ = child_json(args, folder)
    name = scaled("plan into a new batch.sqlite (expand included)", f["cells"], 1_000_000)
    rate = f["cells"] / f["elapsed_s"]
    command = "python -m " + " ".join(args)
    shutil.rmtree(work)
    return [
        Figure(name, "rows/s", rate, "rows/s", ">= 100,000", rate >= 100_000, command),
        Figure(name, "rows per CPU second", f["cells"] / f["cpu_s"], "rows/s", "", None, command),
        Figure(
            name, "file size (batch.sqlite, -wal, -shm)", f["bytes"] / 1e6, "MB", "", None, command
        ),
        Figure(name, "file size per 1,000 rows", f["bytes"] / f["cells"], "KB", "", None, command),
        Figure(name, "peak RSS of the process", f["peak_kib"] / 1024, "MiB", "", None, command),
    ]


# -- end to end at time_scale 0, and the two baselines ---------------------------------


def request_kinds(state: dict[str, Any]) -> dict[str, int]:
    """The service's requests by kind: submit (with the whatif), poll, download, and the
    redirect each download URL answers first (the blob route sends it on to the content)."""
    kinds = {"submit": 0, "poll": 0, "download": 0, "redirect": 0}
    for route, count in state["requests"]["by_route"].items():
        if "/_emulator" in route:
            continue
        if route.startswith("POST /v2/consumer/workflows"):
            kinds["submit"] += count
        elif route.startswith("GET /v2/consumer/blobs/{blobId}"):  # "… (signed)" too
            kinds["redirect"] += count
        elif "/blobs" in route:
            kinds["download"] += count
        else:
            kinds["poll"] += count
    return kinds


@dataclass(frozen=True)
class Measured:
    """One batch run over a socket: cells, wall and CPU seconds, the service's requests."""

    cells: int
    wall_s: float
    cpu_s: float
    requests: dict[str, int]
    emulator_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.cells / self.wall_s

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.cells * 1000

    @property
    def requests_per_cell(self) -> float:
        """Every HTTP request the service saw, per cell."""
        return sum(self.requests.values()) / self.cells

    @property
    def calls_per_cell(self) -> float:
        """Submits, polls and downloads per cell, a download's redirect counted with it."""
        return (self.requests_per_cell * self.cells - self.requests["redirect"]) / self.cells

    def breakdown(self) -> str:
        return ", ".join(f"{k} {v / self.cells:.2f}" for k, v in self.requests.items())


def run_zbatch(
    folder: Path, *, name: str, cells: int, time_scale: float, concurrency: int
) -> tuple[Measured, Path]:
    manifest = h.write_manifest(folder, name=name, cells=cells, in_flight=concurrency)
    with h.emulator(time_scale=time_scale) as emu:
        done = h.zbatch_run(manifest, emu.url).wait()
        requests = request_kinds(emu.state())
        emulator_cpu_s = h.proc_cpu_s(emu.process.pid)
    return Measured(cells, done.wall_s, done.cpu_s, requests, emulator_cpu_s), h.out_of(manifest)


def run_baseline(
    folder: Path, how: str, *, cells: int, time_scale: float, concurrency: int
) -> Measured:
    poll_s = max(1.0 * time_scale, 0.001)
    out = folder / f"baseline-{how}"
    with h.emulator(time_scale=time_scale) as emu:
        args = ["bench.baselines", how, "--url", emu.url, "--cells", str(cells)]
        args += ["--out", str(out), "--concurrency", str(concurrency), "--poll-s", str(poll_s)]
        done = h.spawn(args, log=folder / f"{how}.stderr").wait()
        requests = request_kinds(emu.state())
        emulator_cpu_s = h.proc_cpu_s(emu.process.pid)
    shutil.rmtree(out, ignore_errors=True)
    return Measured(cells, done.wall_s, done.cpu_s, requests, emulator_cpu_s)


def bench_end_to_end(sizes: Sizes, folder: Path) -> list[Figure]:
    c = sizes.concurrency
    z, _ = run_zbatch(folder, name="e2e", cells=sizes.e2e_cells, time_scale=0, concurrency=c)
    seq = run_baseline(folder, "sequential", cells=sizes.sequential_cells, time_scale=0,
                       concurrency=1)  # fmt: skip
    gat = run_baseline(folder, "gather", cells=sizes.gather_cells, time_scale=0, concurrency=c)
    floor_ms = httpx_floor_ms(folder, requests=sizes.floor_requests, concurrency=c)
    name = scaled("end to end, time_scale 0, 64x64, over a socket", z.cells, 20_000)
    cmd = f"zbatch run (in_flight {c}) against python -m bench.serve --time-scale 0"
    base = "python -m bench.baselines"
    return [
        Figure(name, "zbatch cells/s", z.per_s, "cells/s", ">= 300", z.per_s >= 300, cmd),
        Figure(name, "zbatch CPU per 1,000 cells", z.cpu_per_1000, "CPU s", "<= 2",
               z.cpu_per_1000 <= 2, cmd),
        Figure(name, "zbatch requests per cell", z.requests_per_cell, "requests", "", None, cmd),
        Figure(name, "the emulator's CPU per 1,000 cells", z.emulator_cpu_s / z.cells * 1000,
               "CPU s", "", None, "/proc/<emulator pid>/stat"),
        Figure("httpx alone: a bare AsyncClient GET", "CPU per request", floor_ms, "ms", "",
               None, "python -m bench.children httpx-floor"),
        Figure("httpx alone", "CPU per 1,000 cells at zbatch's requests per cell",
               floor_ms * z.requests_per_cell, "CPU s", "", None,
               "the line above x zbatch's requests per cell: a floor under the 2 CPU s target"),
        Figure(f"baseline (a) sequential, submit with wait [{seq.cells:,} cells]", "cells/s",
               seq.per_s, "cells/s", "", None, f"{base} sequential"),
        Figure(f"baseline (b) gather, semaphore {c} [{gat.cells:,} cells]", "cells/s",
               gat.per_s, "cells/s", "", None, f"{base} gather"),
        Figure("baseline (b) gather", "CPU per 1,000 cells", gat.cpu_per_1000, "CPU s", "",
               None, f"{base} gather"),
        Figure("zbatch vs (a) sequential", "throughput ratio", z.per_s / seq.per_s, "x", "",
               None, cmd),
        Figure("zbatch vs (b) gather", "throughput ratio", z.per_s / gat.per_s, "x", "", None,
               cmd),
    ]  # fmt: skip


def httpx_floor_ms(folder: Path, *, requests: int, concurrency: int) -> float:
    """CPU ms per request of a bare httpx client against the same emulator, in a child."""
    with h.emulator(time_scale=0) as emu:
        args = ["bench.children", "httpx-floor", "--url", emu.url]
        args += ["--requests", str(requests), "--concurrency", str(concurrency)]
        data, _ = child_json(args, folder)
    return float(data["cpu_s"]) / int(data["requests"]) * 1000


# -- slot use and requests per cell, simulated durations --------------------------------


def durations_s(out: Path, time_scale: float, seed: int = 1) -> list[float]:
    """The emulator's own simulated duration (queue phases + jobs) of every submitted attempt,
    in grid order, computed with the emulator's functions from each externalId."""
    db = sqlite3.connect(out / "batch.sqlite")
    try:
        rows = db.execute(
            "SELECT a.external_id, c.request FROM attempts a JOIN cells c ON c.key = a.cell_key"
            " WHERE a.state <> 'planned' ORDER BY c.seq, a.attempt"
        ).fetchall()
    finally:
        db.close()
    found: list[float] = []
    for external_id, request in rows:
        inp: dict[str, Any] = json.loads(request)
        start_s = queue_phases(seed, external_id, 0.0, time_scale)[-1]
        found.append(plan_jobs(seed, external_id, inp, start_s, time_scale)[-1].end_s)
    return found


def perfect_makespan_s(durations: list[float], slots: int) -> float:
    """How long a runner with no overhead at all takes: each cell, in grid order, starts the
    moment a slot is free, and its slot is free again the moment it ends."""
    free = [0.0] * slots
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        end = max(end, start + duration)
        heapq.heappush(free, start + duration)
    return end


def makespan_s(out: Path) -> float:
    """zbatch's: from the first submit answered to the last workflow recorded finished."""
    submitted = [h.stamp_s(e) for e in h.events(out, "cell_submitted")]
    finished = [h.stamp_s(e) for e in h.events(out, "cell_finished")]
    return max(finished) - min(submitted)


def bench_slot_use(sizes: Sizes, folder: Path) -> list[Figure]:
    c, ts, n = sizes.concurrency, sizes.slot_time_scale, sizes.slot_cells
    z, out = run_zbatch(folder, name="slots", cells=n, time_scale=ts, concurrency=c)
    durations = durations_s(out, ts)
    mean_s = sum(durations) / len(durations)
    actual_s = makespan_s(out)
    use = perfect_makespan_s(durations, c) / actual_s
    raw = (n / actual_s) / (c / mean_s)
    naive = run_baseline(folder, "gather", cells=n, time_scale=ts, concurrency=c)
    name = scaled(f"slot use, C={c}, time_scale {ts:g}, 64x64", n, 5_000)
    cmd = f"zbatch run (in_flight {c}) against python -m bench.serve --time-scale {ts:g}"
    naive_cmd = f"python -m bench.baselines gather --concurrency {c} --poll-s {ts:g}"
    per = "requests per cell"
    return [
        Figure(name, "mean simulated duration (the emulator's plan)", mean_s, "s", "", None, cmd),
        Figure(name, "achieved / a perfect runner's (same durations, C slots, no overhead)",
               use, "", ">= 0.90", use >= 0.90, cmd),
        Figure(name, "achieved / (C / mean duration), ramp and drain included", raw, "", "",
               None, cmd),
        Figure(f"{name}: zbatch", "API calls per cell (a download's redirect counted with it)",
               z.calls_per_cell, "calls", "<= 2.5", z.calls_per_cell <= 2.5, cmd),
        Figure(f"{name}: zbatch", f"HTTP {per} ({z.breakdown()})", z.requests_per_cell,
               "requests", "", None, cmd),
        Figure(f"{name}: naive poller, a poll every 1 s x {ts:g}", f"HTTP {per} "
               f"({naive.breakdown()})", naive.requests_per_cell, "requests", "", None,
               naive_cmd),
        Figure(f"{name}: zbatch vs naive poller", f"HTTP {per} ratio",
               z.requests_per_cell / naive.requests_per_cell, "x", "", None, cmd),
        Figure(f"{name}: zbatch vs naive poller", "polls per cell ratio",
               z.requests["poll"] / max(naive.requests["poll"], 1), "x", "", None, cmd),
        Figure(f"{name}: zbatch vs naive poller", "throughput ratio (whole runs)",
               z.per_s / naive.per_s, "x", "", None, cmd),
    ]  # fmt: skip


# -- the rate limit ----------------------------------------------------------------------


def bench_rate(sizes: Sizes, folder: Path) -> list[Figure]:
    rate = sizes.rate_per_s
    manifest = h.write_manifest(folder, name="rate", cells=sizes.rate_cells, in_flight=64)
    with h.emulator(time_scale=0) as emu:
        h.zbatch_run(manifest, emu.url, "--rate", str(rate)).wait()
        stamps = emu.created_s("zbatch:rate")
    most = max(sum(1 for t in stamps[i:] if t < start + 1.0) for i, start in enumerate(stamps))
    mean = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    name = f"rate limit --rate {rate:g} ({len(stamps)} submits, time_scale 0)"
    cmd = f"zbatch run --rate {rate:g}; each workflow's createdAt, on the emulator's clock"
    return [
        Figure(name, "max submissions in any 1 s window", most, "submits", f"<= {rate:g}",
               most <= rate, cmd),
        Figure(name, "mean rate", mean, "submits/s", f">= {0.9 * rate:g}", mean >= 0.9 * rate,
               cmd),
    ]  # fmt: skip


# -- resume half way --------------------------------------------------------------------


def bench_resume(sizes: Sizes, folder: Path) -> list[Figure]:
    n = sizes.resume_cells
    manifest = h.write_manifest(folder, name="resume", cells=n, in_flight=64)
    out = h.out_of(manifest)
    child_json(["bench.children", "fixture", str(manifest), "--done", "0.5"], folder)
    with h.emulator(time_scale=0.2) as emu:
        first = h.zbatch_run(manifest, emu.url)
        wait_for(lambda: len(h.events(out, "cell_submitted")) >= 20, timeout_s=120)
        first.kill9()
        before = {e["cell"] for e in h.events(out, "cell_submitted")}
        log_lines = len((out / "log.jsonl").read_text().splitlines())
        started = time.time()
        second = h.zbatch_run(manifest, emu.url)
        wait_for(lambda: any(e["cell"] not in before for e in new_submits(out, log_lines)), 120)
        second.kill9()
    submits = new_submits(out, log_lines)
    first_any = min(h.stamp_s(e) for e in submits) - started
    first_new = min(h.stamp_s(e) for e in submits if e["cell"] not in before) - started
    name = scaled("resume a batch killed half way (kill -9)", n, 100_000)
    cmd = "zbatch run; kill -9; zbatch run: from its start to its first submit answered"
    return [
        Figure(name, "time to the first submit of a new cell", first_new, "s", "<= 2",
               first_new <= 2, cmd),
        Figure(name, "time to the first submit (an open intent or a new cell)", first_any, "s",
               "", None, cmd),
    ]  # fmt: skip


def new_submits(out: Path, skip_lines: int) -> list[dict[str, Any]]:
    lines = (out / "log.jsonl").read_text().splitlines()[skip_lines:]
    events = [json.loads(line) for line in lines if '"cell_submitted"' in line]
    return [e for e in events if e.get("event") == "cell_submitted"]


def wait_for(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout_s} s")
        time.sleep(0.05)


# -- memory with many in flight ---------------------------------------------------------


def bench_memory(sizes: Sizes, folder: Path) -> list[Figure]:
    n, want = sizes.memory_cells, sizes.memory_in_flight
    manifest = h.write_manifest(folder, name="memory", cells=n, in_flight=want)
    out = h.out_of(manifest)
    with h.emulator(time_scale=sizes.memory_time_scale) as emu:
        run = h.zbatch_run(manifest, emu.url)
        deadline = time.monotonic() + sizes.memory_watch_s
        most = 0
        while time.monotonic() < deadline:
            time.sleep(1.0)
            most = max(most, in_flight(out))
            if most >= want:
                break
        peak_mib = h.proc_kib(run.pid, "VmHWM") / 1024
        run.kill9()
    name = scaled(f"memory, {n:,} cells, --concurrency {want:,}", n, 100_000)
    cmd = f"zbatch run (in_flight {want}); VmHWM from /proc/<pid>/status"
    return [
        Figure(name, "peak RSS of zbatch run", peak_mib, "MiB", "< 300", peak_mib < 300, cmd),
        Figure(name, "most workflows in flight seen", most, "workflows", f"{want:,}",
               most >= want, cmd),
    ]  # fmt: skip


def in_flight(out: Path) -> int:
    """Attempts in submitting or running, read from the record while the run goes on."""
    try:
        db = sqlite3.connect(f"file:{out / 'batch.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM attempts WHERE state IN ('submitting', 'running')"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0
    return int(count)


# -- zbatch export ----------------------------------------------------------------------


def bench_export(sizes: Sizes, folder: Path) -> list[Figure]:
    n = sizes.export_rows
    manifest = h.write_manifest(folder, name="export", cells=n)
    out = h.out_of(manifest)
    child_json(["bench.children", "fixture", str(manifest), "--done", "1.0"], folder)
    figures: list[Figure] = []
    name = scaled("zbatch export", n, 1_000_000)
    for fmt in ("jsonl", "parquet"):
        args = ["bench.children", "export", str(out), "--format", fmt]
        f, _ = child_json(args, folder)
        cmd = f"zbatch export OUT --format {fmt} (runner.dataset in bench.children)"
        rate, peak_mib = f["rows"] / f["elapsed_s"], f["peak_kib"] / 1024
        figures += [
            Figure(f"{name} --format {fmt}", "rows/s", rate, "rows/s", "", None, cmd),
            Figure(f"{name} --format {fmt}", "peak RSS", peak_mib, "MiB", "< 200",
                   peak_mib < 200, cmd),
        ]  # fmt: skip
    return figures


BENCHES: dict[str, Bench] = {
    "expand": bench_expand,
    "plan": bench_plan,
    "end_to_end": bench_end_to_end,
    "versus_script": bench_versus_script,
    "slot_use": bench_slot_use,
    "rate": bench_rate,
    "resume": bench_resume,
    "memory": bench_memory,
    "export": bench_export,
}
