"""A demo-like batch made in-process on the emulator, for the gallery's tests.

`jobs/demo.yaml`'s grid (both models x three prompts x two seeds, 512x512), with prompts
that HTML must escape: one holds markup and quotes, one a `<script>` that would retitle the
page if it ever ran.
"""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from runner.api._client import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.manifest._load import parse_manifest
from runner.ops._run import run_batch

FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}

PROMPTS = (
    'A cozy cabin <b>in the woods</b> & "friends" at sunset',
    "<script>document.title='pwned'</script> A lighthouse under a storm",
    "A bowl of ramen on a wooden table, steam rising",
)

DEMO_LIKE = """
name: gallery-demo
out: out
budget: 1000
seed_base: 42
defaults: {size: 512x512}
grid:
  model: [turbo, base]
  prompt:
    - 'A cozy cabin <b>in the woods</b> & "friends" at sunset'
    - "<script>document.title='pwned'</script> A lighthouse under a storm"
    - A bowl of ramen on a wooden table, steam rising
  seed: {count: 2}
limits: {in_flight: 8, submit_per_s: 1000, downloads: 4}
"""


async def build_batch(folder: Path, text: str = DEMO_LIKE) -> Path:
    """Run the manifest `text` to completion on the emulator under `folder`; return its OUT."""
    path = folder / "manifest.yaml"
    path.write_text(text)
    manifest = parse_manifest(text, path=path)
    app = make_app(EmulatorConfig(time_scale=0))
    # The run's log events are kept in memory, not written to whatever stream an earlier
    # test left structlog pointing at (a CLI test's captured, since closed, stderr).
    with capture_logs():
        async with Client(
            base_url="http://emulator", token="gallery-token", transport=EmulatorTransport(app)
        ) as client:
            await run_batch(manifest, client, tuning=FAST)
    return manifest.out
