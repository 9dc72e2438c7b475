"""The image fetcher: remembered URLs are used as they are; an expired one is refreshed at once."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from PIL import Image

from runner.api._client import Client
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    make_app,
)
from runner.emulator.hostile import bomb_png
from runner.engine._downloader import ImageFetcher
from runner.engine._images import InvalidImage, check_image
from runner.engine._pacing import Backoff
from tests.cells import FOX_INPUT, first_image

INPUT = dict(FOX_INPUT)


class RecordedBackoff(Backoff):
    """A backoff that records each pause it is asked for instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(base_s=60, cap_s=60)  # a real pause this long fails the guard
        self.pauses: list[int] = []

    async def pause(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> float:
        self.pauses.append(attempt)
        return 0.0


async def fetch_after(
    advance_s: float, *, faults: FaultProfile | None = None, backoff: Backoff | None = None
) -> tuple[object, dict[str, int]]:
    """Submit one workflow, remember its URL, let `advance_s` pass, fetch its image."""
    clock = ManualClock()
    config = EmulatorConfig(
        time_scale=0,
        url_ttl_s=60,
        submit_limit=None,
        read_limit=None,
        faults=faults or FaultProfile(),
    )
    app = make_app(config, clock=clock)
    async with Client(
        base_url="http://emulator", token="t", transport=EmulatorTransport(app)
    ) as client:
        wf = await client.submit([{"$type": "imageGen", "input": INPUT}], external_id="dl-1")
        assert wf.id is not None
        # A backoff this long would fail the guard below: an expiry must not wait for it.
        backoff = backoff or Backoff(base_s=60, cap_s=60)
        fetcher = ImageFetcher(client, backoff, max_bytes=1 << 20)
        fetcher.remember_urls(1, wf)
        clock.advance(advance_s)
        item = first_image(wf, INPUT, cell_key="k")
        with anyio.fail_after(10):
            got = await fetcher.fetch(item)
    routes: dict[str, int] = app.state.emulator.state()["requests"]["by_route"]
    return got, routes


async def test_a_remembered_url_is_downloaded_without_asking_for_the_workflow_again() -> None:
    """The emulator's clock starts at 2026-01-01: a fresh URL must not look expired to us."""
    got, routes = await fetch_after(0)
    assert not isinstance(got, str)
    assert "GET /v2/consumer/workflows/{workflowId}" not in routes


async def test_an_expired_remembered_url_is_refreshed_at_once_and_downloaded() -> None:
    backoff = RecordedBackoff()
    got, routes = await fetch_after(600, backoff=backoff)
    assert not isinstance(got, str)
    assert routes["GET /v2/consumer/workflows/{workflowId}"] == 1
    assert backoff.pauses == []


async def test_a_failing_blob_is_tried_again_after_the_backoffs_pause() -> None:
    """The fetcher waits through `Backoff.pause` (pacing's one place that sleeps), the
    exponent growing with each failed try."""
    backoff = RecordedBackoff()
    faults = FaultProfile(blob_5xx=FaultRule(p=1.0, times=2))
    got, _ = await fetch_after(0, faults=faults, backoff=backoff)
    assert not isinstance(got, str)
    assert backoff.pauses == [0, 1]


def test_check_image_refuses_another_format_and_a_bomb_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Format and size come from the header; a bomb is refused before a pixel is decoded,
    also where Pillow only warns (the suite makes warnings errors; a run does not)."""
    decoded: list[tuple[int, int]] = []
    real_load = Image.Image.load

    def counting_load(self: Image.Image) -> Any:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    decoded.clear()  # saving loads the new image
    with pytest.raises(InvalidImage, match="image is PNG, expected JPEG"):
        check_image(png.getvalue(), width=64, height=64, output_format="jpeg", max_bytes=1 << 20)
    with pytest.raises(InvalidImage, match="a decompression bomb, refused undecoded"):
        check_image(bomb_png(), width=64, height=64, output_format="png", max_bytes=1 << 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a silenced warning
        with pytest.raises(InvalidImage, match=r"image is 10000x10000, expected 64x64 \(not"):
            check_image(bomb_png(), width=64, height=64, output_format="png", max_bytes=1 << 20)
    assert decoded == []
    info = check_image(png.getvalue(), width=64, height=64, output_format="png", max_bytes=1 << 20)
    assert (info.format, info.width, info.height) == ("png", 64, 64)
    assert decoded  # a good image is decoded in full
    assert set(decoded) == {(64, 64)}


def test_a_bomb_in_a_real_process_is_refused_without_a_word_on_stderr() -> None:
    """Outside pytest's warning filters: the runner turns Pillow's bomb warning into the
    refusal itself, so a bomb never prints a DecompressionBombWarning on the user's terminal."""
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from runner.engine._images import check_image\n"
        "from runner.engine._images import InvalidImage\n"
        "png = io.BytesIO()\n"
        "Image.new('1', (9000, 12000)).save(png, 'PNG')\n"  # 108 Mpx: a warning, not an error
        "try:\n"
        "    check_image(png.getvalue(), width=64, height=64, output_format='png',"
        " max_bytes=1 << 20)\n"
        "except InvalidImage as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
    assert done.stdout.startswith("a decompression bomb, refused undecoded")
