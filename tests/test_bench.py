"""Every benchmark of `make bench` still runs, at a tiny size, and returns figures with units.

No timing is asserted: a benchmark proves here only that it works and what it reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from bench.benches import BENCHES, TINY, request_kinds
from bench.run import render
from bench.versus import side_by_side
from runner.api._client import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app


@pytest.mark.parametrize("name", list(BENCHES))
def test_benchmark_runs_at_a_tiny_size_and_reports_its_figures(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = BENCHES[name](TINY, tmp_path)
    assert figures
    for figure in figures:
        assert figure.benchmark
        assert figure.figure
        assert math.isfinite(figure.value), figure
        assert figure.command, figure
        if figure.target:
            assert figure.met is not None, figure
    with capsys.disabled():  # the issue asks that the tiny run show its figures
        print(f"\n{render(figures)}")  # noqa: T201


async def test_request_kinds_sorts_the_emulators_own_route_labels() -> None:
    """A submit, a poll and one download (the signed URL's redirect, then the content) as the
    emulator labels them: each lands in its kind, so "API calls per cell" counts a download
    once (a label that stops matching would count the redirect as a second download)."""
    app = make_app(EmulatorConfig(time_scale=0))
    step = {
        "$type": "imageGen",
        "input": {
            "engine": "sdcpp", "ecosystem": "zImage", "model": "turbo",
            "operation": "createImage", "prompt": "p", "width": 64, "height": 64,
        },
    }  # fmt: skip
    transport = EmulatorTransport(app)
    async with Client(base_url="http://emulator", token="bench", transport=transport) as client:
        wf = await client.submit([step], external_id="kinds-1", tags=["kinds"])
        await client.query(tags=["kinds"])
        url = wf.images[0].url
        assert url is not None
        await client.download(url, max_bytes=1 << 20)
    async with httpx.AsyncClient(transport=EmulatorTransport(app)) as plain:
        state = (await plain.get("http://emulator/_emulator/state")).json()
    assert request_kinds(state) == {"submit": 1, "poll": 1, "download": 1, "redirect": 1}


def test_versus_script_measures_both_runners_on_a_warm_emulator(tmp_path: Path) -> None:
    """Baseline (c) and zbatch ask the emulator for the same images: after the warm-up run
    neither makes it render one (the cache is keyed by what an image is drawn from), so the
    ratios measure the runners; both ratios carry the issue's targets."""
    figures = {f.figure: f for f in side_by_side(tmp_path, cells=6, size=64)}
    rendered = "images the emulator rendered while measured (0: not its ceiling)"
    assert figures[rendered].value == 0
    assert figures["cells/s ratio zbatch / script"].target == ">= 1.0"
    assert figures["CPU per 1,000 cells ratio zbatch / script"].target == "<= 1.5"
    assert figures["script CPU per 1,000 cells"].value > 0
    assert figures["zbatch CPU per 1,000 cells"].value > 0
