"""`make bench`: the figures this stage of zbatch can measure, printed as a table.

For now: the emulator's and the client's own overhead (an in-process round trip per
workflow at time_scale 0), request validation, and image rendering. The runner benchmarks
(issue: make bench) join this table when the runner exists. Every figure is measured in
this run; nothing here is asserted by the test suite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from runner.api import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.emulator.images import render_image
from runner.emulator.validation import validate_template
from runner.log import configure_logging

ROUND_TRIPS = 300
VALIDATIONS = 5_000


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
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark'.ljust(width)}  {'value':>12}  unit")
    for name, value, unit in rows:
        print(f"{name.ljust(width)}  {value:12.1f}  {unit}")


if __name__ == "__main__":
    main()
