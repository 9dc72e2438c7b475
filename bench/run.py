"""`make bench`: the figures this stage of zbatch can measure, printed as a table.

For now: the emulator's and the client's own overhead (an in-process round trip per
workflow at time_scale 0), request validation, image rendering, and `zbatch plan` on a
1,000,000-cell manifest (expand, key and price every cell: cells/s and the expansion's own
peak memory, measured in a fresh child process so nothing else in this run inflates it). The
runner benchmarks (issue: make bench) join this table when the runner exists. Every figure is
measured in this run; nothing here is asserted by the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from runner.api import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.emulator.images import render_image
from runner.emulator.validation import validate_template
from runner.log import configure_logging

ROUND_TRIPS = 300
VALIDATIONS = 5_000
PLAN_CHILD_FLAG = "--plan-child"
# 100 subjects x 100 places x 100 seeds = 1,000,000 cells, two models' worth of shapes.
PLAN_MANIFEST = """\
name: bench-1m
out: out
budget: 100000000
grid:
  model: [turbo, base]
  prompt: "A {subject} in {place}"
  vars:
    subject: [%s]
    place: [%s]
  seed: {count: 50}
"""


def _input(seed: int, size: int = 64) -> dict[str, Any]:
    return {
        "engine": "sdcpp",
        "ecosystem": "zImage",
        "model": "turbo",
        "operation": "createImage",
        "prompt": f"bench prompt {seed}",
        "width": size,
        "height": size,
        "seed": seed,
    }


async def _round_trips(count: int) -> float:
    config = EmulatorConfig(time_scale=0, submit_limit=None, read_limit=None)
    app = make_app(config)
    started = time.perf_counter()
    async with Client(
        base_url="http://emulator", token="bench", transport=EmulatorTransport(app)
    ) as client:
        for i in range(count):
            wf = await client.submit(
                [{"$type": "imageGen", "input": _input(i)}], external_id=f"b{i}"
            )
            assert wf.id is not None
            done = await client.get(wf.id)
            for image in done.images:
                assert image.url is not None
                await client.download(image.url, max_bytes=1 << 20)
    return time.perf_counter() - started


def _timed(fn: Callable[[], object], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def _memory_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of this process from /proc, in KiB.

    Not `ru_maxrss`: on Linux a child inherits its parent's peak across fork and exec, so it
    would report the parent's rendering buffers, not the expansion.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _plan_child() -> None:
    """In a fresh process: parse, then plan (expand + key + price) 1,000,000 cells; print JSON."""
    from runner.manifest import parse_manifest
    from runner.plan import make_plan

    subjects = ", ".join(f"subject{i}" for i in range(100))
    places = ", ".join(f"place{i}" for i in range(100))
    text = PLAN_MANIFEST % (subjects, places)
    with tempfile.TemporaryDirectory() as folder:
        manifest = parse_manifest(text, path=Path(folder) / "bench.yaml")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now
        before_kib = _memory_kib("VmRSS")
        started = time.perf_counter()
        plan = make_plan(manifest)
        elapsed_s = time.perf_counter() - started
        peak_kib = _memory_kib("VmHWM")
    figures = {"cells": plan.cells, "elapsed_s": elapsed_s, "before_kib": before_kib}
    print(json.dumps(figures | {"peak_kib": peak_kib, "buzz": plan.total_buzz}))


def _plan_figures() -> list[tuple[str, float, str]]:
    done = subprocess.run(
        [sys.executable, __file__, PLAN_CHILD_FLAG], check=True, capture_output=True, text=True
    )
    f = json.loads(done.stdout)
    name = f"zbatch plan: expand+key+price {f['cells']:,} cells"
    return [
        (name, f["cells"] / f["elapsed_s"], "cells/s"),
        (f"{name}: time", f["elapsed_s"], "s"),
        (
            f"{name}: peak RSS growth while planning",
            (f["peak_kib"] - f["before_kib"]) / 1024,
            "MiB",
        ),
        (f"{name}: peak RSS of the process", f["peak_kib"] / 1024, "MiB"),
    ]


def main() -> None:
    configure_logging(level="warning")
    rows: list[tuple[str, float, str]] = []
    elapsed_s = anyio.run(_round_trips, ROUND_TRIPS, backend="asyncio")
    rows.append(
        ("emulator+client round trip, 64x64, in-process", ROUND_TRIPS / elapsed_s, "workflows/s")
    )
    body = {"steps": [{"$type": "imageGen", "input": _input(1, 1024)}], "externalId": "k"}
    per_s = _timed(lambda: validate_template(body), VALIDATIONS)
    rows.append(("validate one SubmitWorkflow body", 1 / per_s, "bodies/s"))
    for fmt in ("jpeg", "png", "webP"):
        seconds = _timed(
            lambda f=fmt: render_image(
                prompt="bench", seed=1, index=0, width=2048, height=2048, fmt=f
            ),
            3,
        )
        rows.append((f"render a 2048x2048 {fmt}", seconds * 1000, "ms"))
    rows += _plan_figures()
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark'.ljust(width)}  {'value':>12}  unit")
    for name, value, unit in rows:
        print(f"{name.ljust(width)}  {value:12.1f}  {unit}")


if __name__ == "__main__":
    if PLAN_CHILD_FLAG in sys.argv:
        _plan_child()
    else:
        main()
