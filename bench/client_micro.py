"""The client, per request: CPU per call of zbatch's `Client` against a bare aiohttp session.

    python -m bench.client_micro [--calls 2000] [--concurrency 64] [--size 64]

One emulator child (`bench.serve`, `time_scale 0`, no rate limits); this process drives it
with both clients in turn, `--concurrency` calls in flight, and reads its own CPU (user +
system, `RUSAGE_SELF`) around each phase. The phases are a cell's three requests: submit
(`wait=0`, a fresh externalId each), a workflow GET, and an image download (the blob URL,
its redirect, the content: the downloader's path, `Client.download`). Every image is fetched
once before it is measured, so the emulator renders nothing while a phase runs.
`--url` drives an emulator already running, and `--only zbatch` one client, so that
`py-spy record -- python -m bench.client_micro --url ... --only zbatch` profiles just it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.baselines import step
from bench.harness import TOKEN, emulator

MAX_BYTES = 64 * 1024 * 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    calls: list[Callable[[], Awaitable[Any]]], concurrency: int
) -> tuple[float, float, list[Any]]:
    """Run every call, `concurrency` at a time: (CPU ms per call, calls/s, results)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await call()

    cpu0, wall0 = cpu_s(), time.perf_counter()
    results = await asyncio.gather(*(one(call) for call in calls))
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
    return cpu / len(calls) * 1000, len(calls) / wall, results


async def zbatch_phases(url: str, n: int, size: int, conc: int, run: str) -> dict[str, Any]:
    from runner.api._client import Client

    rows: dict[str, Any] = {}
    async with Client(base_url=url, token=TOKEN) as api:
        warm = [
            (lambda s=s: api.submit([step(s, size)], external_id=f"{run}-zw-{s}"))
            for s in range(conc)
        ]
        await measure(warm, conc)  # connections opened, lazy imports done
        subs = [
            (lambda s=s: api.submit([step(s, size)], external_id=f"{run}-z-{s}")) for s in range(n)
        ]
        cpu, rate, wfs = await measure(subs, conc)
        rows["submit (wait=0)"] = (cpu, rate)
        ids = [wf.id for wf in wfs]
        cpu, rate, _ = await measure([(lambda i=i: api.get(i)) for i in ids], conc)
        rows["get workflow"] = (cpu, rate)
        urls = [image.url for wf in wfs for image in wf.images if image.url]
        fetch = [(lambda u=u: api.download(u, max_bytes=MAX_BYTES)) for u in urls]
        await measure(fetch, conc)  # renders each image once
        cpu, rate, _ = await measure(fetch, conc)
        rows["download (redirect + content)"] = (cpu, rate)
    return rows


async def aiohttp_phases(url: str, n: int, size: int, conc: int, run: str) -> dict[str, Any]:
    import aiohttp

    rows: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:

        async def submit(seed: int) -> Any:
            body = {"steps": [step(seed, size)], "externalId": f"{run}-a-{seed}"}
            async with session.post("/v2/consumer/workflows?wait=0", json=body) as r:
                r.raise_for_status()
                return await r.json()

        async def get(wf_id: str) -> Any:
            async with session.get(f"/v2/consumer/workflows/{wf_id}") as r:
                r.raise_for_status()
                return await r.json()

        async def fetch(image_url: str) -> bytes:
            async with session.get(image_url) as r:
                r.raise_for_status()
                return await r.read()

        await measure([(lambda s=s: submit(-1 - s)) for s in range(conc)], conc)  # warm up
        cpu, rate, wfs = await measure([(lambda s=s: submit(s)) for s in range(n)], conc)
        rows["submit (wait=0)"] = (cpu, rate)
        cpu, rate, _ = await measure([(lambda i=wf["id"]: get(i)) for wf in wfs], conc)
        rows["get workflow"] = (cpu, rate)
        urls = [
            image["url"]
            for wf in wfs
            for out in wf["steps"]
            for image in (out.get("output") or {}).get("images", [])
            if image.get("url")
        ]
        await measure([(lambda u=u: fetch(u)) for u in urls], conc)
        cpu, rate, _ = await measure([(lambda u=u: fetch(u)) for u in urls], conc)
        rows["download (redirect + content)"] = (cpu, rate)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", choices=["zbatch", "aiohttp"], default=None)
    parser.add_argument("--url", default=None, help="an emulator already running")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = f"micro{int(time.time() * 1000)}"
    from runner.log import configure_logging

    configure_logging(json=True, level="info", secrets=[TOKEN])  # as `zbatch run` does

    def both(url: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if args.only in (None, "aiohttp"):
            out["aiohttp"] = asyncio.run(
                aiohttp_phases(url, args.calls, args.size, args.concurrency, run)
            )
        if args.only in (None, "zbatch"):
            out["zbatch"] = asyncio.run(
                zbatch_phases(url, args.calls, args.size, args.concurrency, run)
            )
        return out

    if args.url:
        result = both(args.url)
    else:
        with emulator(time_scale=0, image_cache=2 * args.calls + 16) as emu:
            result = both(emu.url)
    if args.json:
        print(json.dumps(result))
        return
    print("| request | zbatch CPU ms | aiohttp CPU ms | ratio | zbatch calls/s | aiohttp calls/s |")
    print("|---|---|---|---|---|---|")
    for name in next(iter(result.values())):
        z = result.get("zbatch", {}).get(name, (float("nan"),) * 2)
        a = result.get("aiohttp", {}).get(name, (float("nan"),) * 2)
        print(
            f"| {name} | {z[0]:.3f} | {a[0]:.3f} | {z[0] / a[0]:.1f}x | {z[1]:.0f} | {a[1]:.0f} |"
        )


if __name__ == "__main__":
    main()
