"""The live panel counts by cell as the run summary does (docs/states.md): after `verify
--repair` loses an image and `retry` remakes its cell, the panel's plain line and the
summary both say 6 of 6 cells and 12 images on disk, none lost (not 13 on disk, 1 lost)."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
from rich.console import Console

from runner.cli._progress import Sampler, render_line, render_panel
from runner.cli._summary import render_summary
from runner.disk import OutFolder
from runner.emulator import EmulatorConfig, make_app
from runner.engine._pacing import Backoff
from runner.ops._retry import RetrySettings, retry_batch
from runner.ops._run import run_batch
from runner.ops._verify import verify_batch
from runner.store._store import Store
from tests.e2e.ops_harness import FAST, client_for, lose_an_image, manifest


async def test_panel_after_repair_and_retry_shows_the_summary_numbers(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # 6 cells, 2 images each
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            lose_an_image(m, app)  # its file, and its workflow on the service
            assert (
                await verify_batch(m.out, client=client, backoff=Backoff(base_s=0.001, cap_s=0.01))
            ).lost
            retried = await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
        assert retried.run is not None
        summary = render_summary(retried.run, out=m.out).splitlines()
        assert summary[1] == "cells       6: 6 succeeded · 0 ended without success · 0 not finished"
        assert summary[3] == "images      12 on disk, 0 pending, 0 lost"
        store = await Store.open(OutFolder(m.out).db, lock=False, read_only=True)
        async with store:
            # Every attempt's images: the lost one and the two its retry fetched again.
            assert (await store.counts())["image:downloaded"] == 13
            snap = await Sampler(store, await store.cell_total()).snapshot()
        line = render_line(snap)
        assert "cells 6/6 done" in line
        assert " · images 12 on disk, 0 pending, 0 lost · " in line
        console = Console(record=True, width=80, file=io.StringIO())
        console.print(render_panel(snap))
        screen = console.export_text()
        assert "6/6 done" in screen
        assert "12 on disk, 0 pending, 0 lost" in screen
