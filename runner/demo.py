"""`make demo`: one real Z-Image round trip through runner/api.py against the embedded emulator.

Starts the emulator on 127.0.0.1 (a real socket, no token, no internet), prices a request
with `whatif`, submits it with `wait=0` and an externalId, resubmits the same key to show
that the service hands back the same workflow, polls to a terminal status, downloads the
image from its signed URL, verifies it and writes it atomically under `out/demo/`.
Until `zbatch run` exists this is the main job; it then becomes `zbatch run jobs/demo.yaml`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from runner.api import Client
from runner.files import atomic_write_bytes, verify_image
from runner.log import configure_logging
from runner.models import Workflow

DEMO_TOKEN = "emulator-demo-token"  # the emulator accepts any bearer token
WIDTH, HEIGHT, QUANTITY = 512, 512, 2
DEMO_INPUT: dict[str, object] = {
    "engine": "sdcpp",
    "ecosystem": "zImage",
    "model": "turbo",
    "operation": "createImage",
    "prompt": "A cozy cabin in the woods at sunset, cinematic lighting",
    "width": WIDTH,
    "height": HEIGHT,
    "cfgScale": 1,
    "steps": 9,
    "seed": 42,
    "quantity": QUANTITY,
}
POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class SavedImage:
    """One verified image on disk."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class DemoResult:
    """What the demo did: the workflow, what was paid, and the files it wrote."""

    workflow_id: str
    external_id: str
    whatif_buzz: int | None
    charged_buzz: int
    status: str
    images: tuple[SavedImage, ...]


def external_id_for(step_input: dict[str, object]) -> str:
    """A stable idempotency key from the request itself (the runner's cell keys work alike)."""
    canonical = json.dumps(step_input, sort_keys=True, separators=(",", ":"))
    return "demo-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


async def run_demo(
    base_url: str, out_dir: Path, *, say: Callable[[str], None] = lambda _: None
) -> DemoResult:
    """Price, submit (twice, same key), poll, download, verify and save one workflow."""
    steps = [{"$type": "imageGen", "input": DEMO_INPUT}]
    key = external_id_for(DEMO_INPUT)
    async with Client(base_url=base_url, token=DEMO_TOKEN) as client:
        preview = await client.submit(steps, whatif=True)
        say(f"whatif: {preview.cost_total} Buzz for {QUANTITY} images")
        first = await client.submit(steps, external_id=key, tags=["zbatch:demo"])
        again = await client.submit(steps, external_id=key, tags=["zbatch:demo"])
        if first.id is None or again.id != first.id:
            raise RuntimeError(f"resubmit made a second workflow: {first.id} vs {again.id}")
        say(f"submitted {first.id} (externalId {key}); resubmit returned the same workflow")
        final = await _wait_terminal(client, first.id, say)
        saved: list[SavedImage] = []
        for image in final.images:
            if not image.deliverable or image.url is None:
                say(f"image {image.index}: not deliverable ({image.blocked_reason or 'missing'})")
                continue
            download = await client.download(image.url, max_bytes=32 * 1024 * 1024)
            info = await anyio.to_thread.run_sync(
                functools.partial(verify_image, download.content, width=WIDTH, height=HEIGHT)
            )
            path = out_dir / "images" / f"{key}_{image.index}.{info.format}"
            await anyio.to_thread.run_sync(atomic_write_bytes, path, download.content)
            saved.append(SavedImage(path, info.sha256, info.size_bytes))
            say(f"image {image.index}: {path} ({info.size_bytes} bytes, sha256 {info.sha256[:12]})")
    return DemoResult(
        workflow_id=first.id,
        external_id=key,
        whatif_buzz=preview.cost_total,
        charged_buzz=final.charged_buzz,
        status=str(final.status),
        images=tuple(saved),
    )


async def _wait_terminal(client: Client, workflow_id: str, say: Callable[[str], None]) -> Workflow:
    last = None
    with anyio.fail_after(60):
        while True:
            wf = await client.get(workflow_id)
            if wf.status != last:
                say(f"status: {wf.status}")
                last = wf.status
            if wf.status.is_terminal:
                return wf
            await anyio.sleep(POLL_INTERVAL_S)


def main() -> int:
    """Start the emulator on a free loopback port, run the demo against it, print a summary."""
    from runner.emulator.config import EmulatorConfig
    from runner.emulator.server import running_server

    configure_logging(level="info")
    out_dir = Path("out/demo")
    config = EmulatorConfig(seed=7, time_scale=0.05)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with running_server(config) as base_url:
        say(f"emulator listening on {base_url} (time_scale {config.time_scale})")
        result = anyio.run(lambda: run_demo(base_url, out_dir, say=say), backend="asyncio")
    print(
        f"{result.status}: workflow {result.workflow_id}, {len(result.images)} images "
        f"in {out_dir}, charged {result.charged_buzz} Buzz (whatif said {result.whatif_buzz})"
    )
    return 0 if result.status == "succeeded" and result.images else 1


if __name__ == "__main__":
    sys.exit(main())
