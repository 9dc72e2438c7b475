"""The ways people run a batch without zbatch, written honestly, for `make bench` to beat.

(a) and (b) use zbatch's own HTTP client (`runner.api._client.Client`: the same aiohttp wire,
the same token handling), so that comparison is the scheduling, not the HTTP library. (c) is
the script a user would write instead of choosing zbatch: its own `aiohttp.ClientSession`,
nothing of zbatch's (issue 14). All three write each image to disk, as a script would, but
keep no record: no database, no fsync, no retries, no cap, no resume.

- `sequential`: the official `civitai generate` CLI's way. One workflow at a time: submit
  with `wait` (the service holds the answer until the workflow ends), then download its
  images, then the next cell.
- `gather`: the usual script. `asyncio.gather` over every cell with a semaphore of C; each
  task submits, polls its own workflow every `poll_s` until it ends, and downloads. The
  usual script polls every second of real time; against an emulator whose durations are
  scaled by `time_scale`, `make bench` passes `poll_s = 1 s x time_scale`, so the script
  polls as often per workflow as it would against the service.
- `script`: (c), the same shape as `gather` with aiohttp: one `ClientSession`, a semaphore of
  C; each task submits with `wait=0` and an externalId, polls its workflow every `poll_s`,
  follows each image's blob redirect (aiohttp follows it) and writes the file.

Run as a child process of `make bench` (so its CPU time is its own):

    python -m bench.baselines gather --url http://127.0.0.1:8765 --cells 500 --out DIR \
        --concurrency 64 --poll-s 1.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (a) and (b) import zbatch's client when they run; (c) never does
    from runner.api._client import Client
    from runner.api._models import Workflow

PROMPT = "A bench cabin at dusk"  # the prompt of bench.harness.write_manifest
MAX_BYTES = 64 * 1024 * 1024


def step(seed: int, size: int) -> dict[str, Any]:
    """The imageGen step of cell `seed`, as the bench manifests make it (turbo, one image)."""
    return {
        "$type": "imageGen",
        "input": {
            "engine": "sdcpp",
            "ecosystem": "zImage",
            "model": "turbo",
            "operation": "createImage",
            "prompt": PROMPT,
            "width": size,
            "height": size,
            "steps": 9,
            "cfgScale": 1,
            "seed": seed,
            "quantity": 1,
        },
    }


async def download_all(client: Client, wf: Workflow, out: Path, seed: int) -> int:
    written = 0
    for image in wf.images:
        if image.url:
            got = await client.download(image.url, max_bytes=MAX_BYTES)
            (out / f"{seed}_{image.index}.jpg").write_bytes(got.content)
            written += 1
    return written


async def sequential(client: Client, cells: int, size: int, out: Path) -> int:
    """One at a time: submit and wait for the end, download, next."""
    images = 0
    for seed in range(cells):
        wf = await client.submit([step(seed, size)], external_id=f"seq-{seed}", wait_s=90)
        images += await download_all(client, wf, out, seed)
    return images


async def gather(
    client: Client, cells: int, size: int, out: Path, concurrency: int, poll_s: float
) -> int:
    """`asyncio.gather` over every cell, a semaphore of `concurrency`, a poll every `poll_s`."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(seed: int) -> int:
        async with semaphore:
            wf = await client.submit([step(seed, size)], external_id=f"gather-{seed}")
            while not wf.status.is_terminal:
                await asyncio.sleep(poll_s)
                assert wf.id is not None
                wf = await client.get(wf.id)
            return await download_all(client, wf, out, seed)

    return sum(await asyncio.gather(*(one(seed) for seed in range(cells))))


TERMINAL = frozenset({"succeeded", "failed", "expired", "canceled"})


async def script(
    url: str, cells: int, size: int, out: Path, concurrency: int, poll_s: float, run: str
) -> int:
    """(c) The 60-line aiohttp script: its own session, a semaphore, submit, poll, download."""
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": "Bearer zbatch-bench", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:

        async def one(seed: int) -> int:
            async with semaphore:
                body = {"steps": [step(seed, size)], "externalId": f"{run}-{seed}"}
                async with session.post("/v2/consumer/workflows?wait=0", json=body) as r:
                    r.raise_for_status()
                    wf = await r.json()
                while wf["status"] not in TERMINAL:
                    await asyncio.sleep(poll_s)
                    async with session.get(f"/v2/consumer/workflows/{wf['id']}") as r:
                        r.raise_for_status()
                        wf = await r.json()
                written = 0
                for step_out in wf["steps"]:
                    for i, image in enumerate((step_out.get("output") or {}).get("images", [])):
                        if not image.get("url"):
                            continue
                        # a blob URL redirects to its content: aiohttp follows it, and drops
                        # the Authorization header when the redirect leaves the origin
                        async with session.get(image["url"]) as r:
                            r.raise_for_status()
                            data = await r.read()
                        (out / f"{seed}_{i}.jpg").write_bytes(data)
                        written += 1
                return written

        return sum(await asyncio.gather(*(one(seed) for seed in range(cells))))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    started = time.monotonic()
    if args.how == "script":
        images = await script(
            args.url, args.cells, args.size, out, args.concurrency, args.poll_s, args.run
        )
        return {"cells": args.cells, "images": images, "wall_s": time.monotonic() - started}
    from runner.api._client import Client

    async with Client(base_url=args.url, token="zbatch-bench") as client:
        if args.how == "sequential":
            images = await sequential(client, args.cells, args.size, out)
        else:
            images = await gather(client, args.cells, args.size, out, args.concurrency, args.poll_s)
    return {"cells": args.cells, "images": images, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description="a naive baseline, for make bench")
    parser.add_argument("how", choices=["sequential", "gather", "script"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--run", default="script", help="(c)'s externalId prefix")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
