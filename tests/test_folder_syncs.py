"""Shared folder fsyncs (`FolderSyncs`): an image is recorded only after an fsync of its
folder that STARTED after its rename has finished, however many writers share that fsync."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.disk import FolderSyncs
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.engine._downloader import Downloader, ImageFetcher
from runner.engine._pacing import Backoff
from runner.engine._shared import Changes, RunStats
from tests.cells import FOX_INPUT, first_image


class Events:
    """What happened, in order, from any thread: ("rename", who, folder), ("start", n, folder),
    ("end", n, folder), ("record", who, folder)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, object, Path]] = []
        self.fsyncs = 0

    def add(self, kind: str, who: object, folder: Path) -> None:
        with self.lock:
            self.log.append((kind, who, folder))

    def fsync(
        self, folder: Path, gate: threading.Event | None = None, pause_s: float = 0.0
    ) -> None:
        with self.lock:
            self.fsyncs += 1
            number = self.fsyncs
            self.log.append(("start", number, folder))
        if gate is not None and number == 1:
            assert gate.wait(10)
        if pause_s:
            threading.Event().wait(pause_s)  # widens the window for other threads' renames
        self.add("end", number, folder)


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (another thread makes it true); fail rather than hang."""
    for _ in range(10_000):
        if condition():
            return
        threading.Event().wait(0.001)
    raise AssertionError("the other threads never got there")


def assert_every_record_follows_a_later_fsync(log: list[tuple[str, object, Path]]) -> None:
    """For each record: some fsync of its folder started after its rename and ended before it."""
    renamed: dict[object, int] = {}
    started: dict[object, tuple[int, Path]] = {}
    records = 0
    for at, (kind, who, folder) in enumerate(log):
        if kind == "rename":
            renamed[who] = at
        elif kind == "start":
            started[who] = (at, folder)
        elif kind == "record":
            records += 1
            ended = {n for k, n, f in log[:at] if k == "end" and f == folder}
            assert any(
                n in ended and start > renamed[who] and f == folder
                for n, (start, f) in started.items()
            ), f"{who} was recorded without an fsync of {folder} begun after its rename"
    assert records == len(renamed) > 0


def test_writers_waiting_on_a_running_fsync_share_the_next_one(tmp_path: Path) -> None:
    events, gate = Events(), threading.Event()
    syncs = FolderSyncs(fsync=lambda folder: events.fsync(folder, gate))

    def writer(who: str) -> None:
        events.add("rename", who, tmp_path)
        syncs.sync(tmp_path)
        events.add("record", who, tmp_path)

    first = threading.Thread(target=writer, args=("a",))
    first.start()
    wait_until(lambda: events.fsyncs == 1)  # a's fsync is running (held at the gate)
    later = [threading.Thread(target=writer, args=(who,)) for who in ("b", "c")]
    for thread in later:
        thread.start()
    wait_until(lambda: syncs.waiting(tmp_path) == 2)  # b, c renamed after it began
    gate.set()
    for thread in [first, *later]:
        thread.join(10)
    assert events.fsyncs == 2  # a's, then one for both b and c
    assert_every_record_follows_a_later_fsync(events.log)


def test_under_contention_no_record_precedes_a_later_fsync(tmp_path: Path) -> None:
    """Eight writers, three folders, fsyncs that yield at random: the order always holds."""
    events, rng = Events(), random.Random(14)
    folders = [tmp_path / name for name in ("aa", "ab", "ac")]
    pauses = [rng.random() * 0.0005 for _ in range(64)]

    syncs = FolderSyncs(
        fsync=lambda folder: events.fsync(folder, pause_s=pauses[events.fsyncs % len(pauses)])
    )

    def writer(n: int) -> None:
        for i in range(20):
            folder = folders[(n + i) % len(folders)]
            events.add("rename", (n, i), folder)
            syncs.sync(folder)
            events.add("record", (n, i), folder)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert_every_record_follows_a_later_fsync(events.log)
    assert events.fsyncs <= 160


def test_a_failed_fsync_counts_for_nobody(tmp_path: Path) -> None:
    calls: list[Path] = []

    def fsync(folder: Path) -> None:
        calls.append(folder)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    syncs = FolderSyncs(fsync=fsync)
    with pytest.raises(OSError, match="Input/output"):
        syncs.sync(tmp_path)
    syncs.sync(tmp_path)  # runs its own: the failed one proved nothing
    assert len(calls) == 2


class RecordingStore:
    """The store's `mark_downloaded`, logged after the file is checked to be there."""

    def __init__(self, out: Path, events: Events) -> None:
        self.out, self.events = out, events

    async def mark_downloaded(self, attempt_id: int, index: int, **fields: Any) -> None:
        path = self.out / fields["path"]
        assert (
            fields["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        )  # hashed as written
        self.events.add("record", path.name, path.parent)


async def test_the_downloader_records_an_image_after_a_later_fsync_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = Events()
    real_replace = os.replace

    def logged_replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.add("rename", Path(dst).name, Path(dst).parent)

    monkeypatch.setattr("runner.disk._atomic.os.replace", logged_replace)
    app = make_app(EmulatorConfig(time_scale=0, submit_limit=None, read_limit=None))
    transport = EmulatorTransport(app)
    async with Client(base_url="http://emulator", token="t", transport=transport) as client:
        fetcher = ImageFetcher(client, Backoff(base_s=60, cap_s=60), max_bytes=1 << 20)
        store: Any = RecordingStore(tmp_path, events)
        downloader = Downloader(
            store, fetcher, out_dir=tmp_path, workers=8, stats=RunStats(), changes=Changes()
        )
        downloader._folder_syncs = FolderSyncs(fsync=events.fsync)
        items = []
        for n in range(12):
            request = dict(FOX_INPUT, seed=n)
            wf = await client.submit([{"$type": "imageGen", "input": request}], external_id=f"f{n}")
            fetcher.remember_urls(n, wf)
            item = first_image(wf, request, cell_key=f"{n % 2:02x}{n:06x}")
            items.append(replace(item, attempt_id=n))
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for item in items:
                    tg.start_soon(downloader._download, item)
    assert downloader.stats.images_downloaded == 12
    assert_every_record_follows_a_later_fsync(events.log)
