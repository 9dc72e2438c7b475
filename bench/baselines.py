"""The two ways people run a batch without zbatch, written honestly, for `make bench` to beat.

Both use zbatch's own HTTP client (`runner.api._client.Client`: the same httpx stack, the same
token handling), so the comparison is the scheduling, not the HTTP library. Both write each
image to disk, as a script would, but keep no record: no database, no fsync, no retries.

- `sequential`: the official `civitai generate` CLI's way. One workflow at a time: submit
  with `wait` (the service holds the answer until the workflow ends), then download its
  images, then the next cell.
- `gather`: the usual script. `asyncio.gather` over every cell with a semaphore of C; each
  task submits, polls its own workflow every `poll_s` until it ends, and downloads. The
  usual script polls every second of real time; against an emulator whose durations are
  scaled by `time_scale`, `make bench` passes `poll_s = 1 s x time_scale`, so the script
  polls as often per workflow as it would against the service.

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
from typing import Any

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


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    started = time.monotonic()
    async with Client(base_url=args.url, token="zbatch-bench") as client:
        if args.how == "sequential":
            images = await sequential(client, args.cells, args.size, out)
        else:
            images = await gather(client, args.cells, args.size, out, args.concurrency, args.poll_s)
    return {"cells": args.cells, "images": images, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description="a naive baseline, for make bench")
    parser.add_argument("how", choices=["sequential", "gather"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--poll-s", type=float, default=1.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
