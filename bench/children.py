"""The bench's child processes: each measures one thing in a fresh interpreter, prints JSON.

A fresh process per figure keeps its peak memory its own (`VmHWM` after resetting it with
`/proc/self/clear_refs`; not `ru_maxrss`, which a child inherits from its parent across fork
and exec) and keeps one benchmark's garbage out of the next one's timings.

    python -m bench.children expand --cells 1000000
    python -m bench.children plan --cells 200000 --folder DIR
    python -m bench.children fixture MANIFEST --done 0.5     # a batch half done, by SQL
    python -m bench.children export OUT --format parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from runner.disk._out_folder import OutFolder
from runner.grid import store_rows
from runner.identity import batch_tag
from runner.manifest._load import load_manifest, parse_manifest
from runner.ops._run import manifest_sha256
from runner.store._store import Store

EXPAND_MANIFEST = """\
name: bench-expand
out: out
budget: 100000000
grid:
  model: [turbo, base]
  prompt: "A {subject} in {place}"
  vars:
    subject: [%s]
    place: [%s]
  seed: {count: %d}
"""


def memory_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the peak (VmHWM) to the RSS now; return that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return memory_kib("VmRSS")


def expand_manifest_text(cells: int) -> str:
    """Both models x subjects x places x seeds = `cells` (a multiple of 200)."""
    side = 100 if cells >= 20_000 else 10
    seeds = max(1, cells // (2 * side * side))
    names = ", ".join(f"subject{i}" for i in range(side))
    places = ", ".join(f"place{i}" for i in range(side))
    return EXPAND_MANIFEST % (names, places, seeds)


def expand(cells: int) -> dict[str, Any]:
    """Parse, then plan (expand + key + price) the manifest: what `zbatch plan` does."""
    from runner.plan import make_plan

    with tempfile.TemporaryDirectory() as folder:
        manifest = parse_manifest(expand_manifest_text(cells), path=Path(folder) / "b.yaml")
        before_kib = reset_peak()
        started = time.perf_counter()
        cpu_started = time.process_time()
        plan = make_plan(manifest)
        elapsed_s = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        peak_kib = memory_kib("VmHWM")
    return {
        "cells": plan.cells,
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_s,
        "before_kib": before_kib,
        "peak_kib": peak_kib,
    }


def plan_manifest_text(cells: int) -> str:
    side = 100 if cells >= 10_000 else 10
    names = ", ".join(f"s{i}" for i in range(side))
    return (
        "name: bench-plan\nout: out\nbudget: 100000000\n"
        "grid:\n  model: [turbo]\n  prompt: 'A {s} at dusk'\n"
        f"  vars:\n    s: [{names}]\n  seed: {{count: {max(1, cells // side)}}}\n"
    )


async def plan(cells: int, folder: Path) -> dict[str, Any]:
    """Expand `cells` cells and plan them into a new batch.sqlite, as `zbatch run` first does."""
    manifest = parse_manifest(plan_manifest_text(cells), path=folder / "plan.yaml")
    db = OutFolder(folder).db
    before_kib = reset_peak()
    started = time.perf_counter()
    cpu_started = time.process_time()
    async with await Store.open(db) as store:
        await store.init_batch(name=manifest.name, tag=batch_tag(manifest.name), cap_buzz=10**9)
        result = await store.plan_rows(store_rows(manifest), max_attempts=manifest.retries.attempts)
    elapsed_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started  # this thread's and the SQLite worker's
    return {
        "cells": result.added,
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_s,
        "before_kib": before_kib,
        "peak_kib": memory_kib("VmHWM"),
    }


async def fixture(manifest_path: Path, done: float) -> dict[str, Any]:
    """Plan the manifest's batch as `zbatch run` does, then mark its first `done` share of
    cells succeeded with a downloaded image, by SQL (no files): a batch that far along,
    made in seconds instead of hours. The rest stays planned for a real run to continue."""
    manifest = load_manifest(manifest_path)
    db = OutFolder(manifest.out).db
    async with await Store.open(db) as store:
        await store.init_batch(
            name=manifest.name,
            tag=batch_tag(manifest.name),
            cap_buzz=manifest.budget_buzz,
            manifest_sha256=manifest_sha256(manifest),
        )
        result = await store.plan_rows(store_rows(manifest), max_attempts=manifest.retries.attempts)
    total = result.added + result.kept
    finished = int(total * done)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "CREATE TEMP TABLE done AS SELECT a.id FROM attempts a JOIN cells c"
            " ON c.key = a.cell_key ORDER BY c.seq LIMIT ?",
            (finished,),
        )
        con.execute(
            "UPDATE attempts SET state = 'succeeded', charged_buzz = 1,"
            " workflow_id = 'wf-' || id WHERE id IN (SELECT id FROM done)"
        )
        con.execute(
            "INSERT INTO images (attempt_id, idx, blob_id, state, path, sha256, size_bytes,"
            " width, height, updated_at) SELECT a.id, 0, 'blob-' || a.id, 'downloaded',"
            " 'images/' || substr(a.cell_key, 1, 2) || '/' || a.cell_key || '_0.jpg',"
            " lower(hex(randomblob(32))), 1234, 64, 64, a.updated_at"
            " FROM attempts a WHERE a.id IN (SELECT id FROM done)"
        )
        con.execute("UPDATE batch SET committed_buzz = ?", (finished,))
        con.execute("COMMIT")
    finally:
        con.close()
    return {"cells": total, "done": finished}


async def export(out: Path, fmt: str) -> dict[str, Any]:
    """`zbatch export OUT --format FMT`: the function the command calls, timed, its peak."""
    from runner.dataset._export import export as run_export

    before_kib = reset_peak()
    started = time.perf_counter()
    result = await run_export(out, fmt)
    return {
        "rows": result.rows,
        "elapsed_s": time.perf_counter() - started,
        "before_kib": before_kib,
        "peak_kib": memory_kib("VmHWM"),
    }


async def httpx_floor(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """The CPU a bare `httpx.AsyncClient` spends per GET against the emulator, nothing else:
    no store, no checks, no logging. The runner can spend no less per request it makes."""
    import resource

    import httpx

    headers = {"Authorization": f"Bearer {os.environ['CIVITAI_API_TOKEN']}"}
    limiter = anyio.CapacityLimiter(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:

        async def one() -> None:
            async with limiter:
                response = await client.get("/v2/consumer/workflows", params={"take": 1})
                response.raise_for_status()

        await one()  # the connection, the imports
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(requests):
                tg.start_soon(one)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"requests": requests, "cpu_s": cpu_s, "elapsed_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description="one bench measurement in a fresh process")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("expand")
    p.add_argument("--cells", type=int, required=True)
    p = sub.add_parser("plan")
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--folder", type=Path, required=True)
    p = sub.add_parser("fixture")
    p.add_argument("manifest", type=Path)
    p.add_argument("--done", type=float, required=True)
    p = sub.add_parser("export")
    p.add_argument("out", type=Path)
    p.add_argument("--format", required=True)
    p = sub.add_parser("httpx-floor")
    p.add_argument("--url", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    if args.what == "expand":
        figures = expand(args.cells)
    elif args.what == "plan":
        figures = anyio.run(plan, args.cells, args.folder, backend="asyncio")
        figures["bytes"] = sum(p.stat().st_size for p in args.folder.glob(f"{OutFolder.DB_NAME}*"))
    elif args.what == "fixture":
        figures = anyio.run(fixture, args.manifest, args.done, backend="asyncio")
    elif args.what == "httpx-floor":
        floor = (args.url, args.requests, args.concurrency)
        figures = anyio.run(httpx_floor, *floor, backend="asyncio")
    else:
        figures = anyio.run(export, args.out, args.format, backend="asyncio")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
