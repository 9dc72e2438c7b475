"""`zbatch status`: a batch's record read offline, as text or JSON, even while a run holds it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from runner.cli._main import main
from runner.dataset._status import read_status, render_status, status_json
from runner.disk._atomic import atomic_write_bytes
from runner.disk._out_folder import image_path
from runner.errors import NotABatch, StoreError
from runner.identity import PlanRow
from runner.store._rows import AttemptState, ImageOutcome
from runner.store._store import Store
from tests.cells import turbo_cell

NOW = "2026-01-02T03:04:05.000+00:00"


def cell(n: int) -> PlanRow:
    return turbo_cell(n, estimate_buzz=5)


async def build(out: Path) -> Store:
    """A batch in mid-run, its store left open (and locked) like a running `zbatch run`.

    Cell 0 succeeded (one image on disk, one lost), cell 1 failed and waits for its retry,
    cell 2 was blocked, cell 3 rejected, cell 4 is running, cell 5 is submitting, cell 6
    is planned.
    """
    store = await Store.open(out / "batch.sqlite", now=lambda: NOW)
    await store.init_batch(name="cabins", tag="zbatch:cabins", cap_buzz=100)
    await store.plan_rows([cell(i) for i in range(7)], max_attempts=2)
    a = {x.cell_key: x for x in await store.next_planned(10)}
    ids = [a[cell(i).key].id for i in range(6)]
    for n, attempt_id in enumerate(ids):
        assert await store.reserve(attempt_id, 5)
        if n < 5:
            await store.mark_running(attempt_id, f"wf-{n}", charged_buzz=4)
    images = [ImageOutcome(0, "blob-0", True), ImageOutcome(1, "blob-1", True)]
    await store.mark_finished(ids[0], AttemptState.SUCCEEDED, charged_buzz=4, images=images)
    relative = image_path(cell(0).key, 0, "jpeg")
    atomic_write_bytes(out / relative, b"not checked by status")
    await store.mark_downloaded(
        ids[0], 0, path=relative.as_posix(), sha256="0" * 64, size_bytes=21, width=64, height=64
    )
    await store.mark_lost(ids[0], 1, "the blob is gone from the service")
    await store.mark_finished(ids[1], AttemptState.FAILED, charged_buzz=0, reason="step failed")
    await store.mark_finished(ids[2], AttemptState.BLOCKED, charged_buzz=0, reason="moderation")
    await store.mark_finished(ids[3], AttemptState.FAILED, charged_buzz=0, reason="step failed")
    return store


async def test_status_counts_cells_attempts_images_and_buzz(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        store = await build(tmp_path)
        try:
            status = await read_status(tmp_path)
        finally:
            await store.close()
        assert status.name == "cabins"
        assert status.cells == {"planned": 3, "submitting": 1, "running": 1, "succeeded": 1,
                                "blocked": 1}  # fmt: skip
        assert status.attempts == {"planned": 3, "submitting": 1, "running": 1, "succeeded": 1,
                                   "failed": 2, "blocked": 1}  # fmt: skip
        assert status.images == {"pending": 0, "downloaded": 1, "lost": 1}
        assert status.files_on_disk == 1
        b = status.budget
        assert (b.charged_buzz, b.reserved_buzz, b.committed_buzz, b.cap_buzz) == (8, 5, 13, 100)
        assert status.last_event_at == NOW


async def test_status_groups_failures_by_reason_most_frequent_first(tmp_path: Path) -> None:
    """Failures are counted by each cell's latest attempt: a failed attempt whose retry waits
    is no failure; once the retries fail too, both cells count, most frequent reason first."""
    with anyio.fail_after(10):
        store = await build(tmp_path)
        try:
            waiting = [(f.kind, f.reason, f.count) for f in (await read_status(tmp_path)).failures]
            retries = [a for a in await store.next_planned(10) if a.attempt == 2]
            assert len(retries) == 2
            for retry in retries:
                assert await store.reserve(retry.id, 5)
                await store.mark_running(retry.id, f"wf-retry-{retry.id}", charged_buzz=0)
                await store.mark_finished(
                    retry.id, AttemptState.FAILED, charged_buzz=0, reason="step failed"
                )
        finally:
            await store.close()
        failures = [(f.kind, f.reason, f.count) for f in (await read_status(tmp_path)).failures]
        assert waiting == [
            ("blocked", "moderation", 1),
            ("image:lost", "the blob is gone from the service", 1),
        ]
        assert failures == [
            ("failed", "step failed", 2),
            ("blocked", "moderation", 1),
            ("image:lost", "the blob is gone from the service", 1),
        ]


async def test_status_text_names_every_figure(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        store = await build(tmp_path)
        await store.close()
        text = render_status(await read_status(tmp_path))
        assert text == "\n".join(
            [
                f"batch       cabins  (tag zbatch:cabins, created {NOW})",
                f"record      {tmp_path / 'batch.sqlite'}",
                "cells       7: planned 3 · submitting 1 · running 1 · succeeded 1 · blocked 1",
                "attempts    9: planned 3 · submitting 1 · running 1 · succeeded 1 · failed 2"
                " · blocked 1",
                "images      1 downloaded · 0 pending · 1 lost · 1 files on disk under "
                f"{tmp_path / 'images'}",
                "buzz        8 charged · 5 reserved · cap 100 (87 left)",
                "failures    1 blocked by moderation (reason: moderation) — not retried;"
                f" `zbatch report {tmp_path}` lists them",
                "            1 image lost (the blob is gone from the service) —"
                f" `zbatch retry {tmp_path}` fetches them again",
                f"last event  {NOW}",
            ]
        )


async def test_status_works_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    """The runner's store stays open and locked; status reads what it has committed."""
    with anyio.fail_after(10):
        store = await build(tmp_path)
        try:
            with pytest.raises(StoreError, match="one runner per batch"):
                await Store.open(tmp_path / "batch.sqlite")
            before = await read_status(tmp_path)
            (running,) = [a for a in await store.active() if a.state is AttemptState.RUNNING]
            await store.mark_finished(running.id, AttemptState.SUCCEEDED, charged_buzz=4)
            after = await read_status(tmp_path)
        finally:
            await store.close()
        assert before.cells["running"] == 1
        assert "running" not in after.cells
        assert after.cells["succeeded"] == 2


async def test_read_only_store_refuses_to_write(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        store = await build(tmp_path)
        await store.close()
        async with await Store.open(tmp_path / "batch.sqlite", read_only=True) as reader:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await reader.init_batch(name="cabins", tag="t", cap_buzz=1)
            assert (await reader.budget()).cap_buzz == 100


def test_status_json_for_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> None:
        with anyio.fail_after(10):
            await (await build(tmp_path)).close()

    anyio.run(make, backend="asyncio")
    assert main(["status", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["batch"] == "cabins"
    assert doc["cells"] == {
        "total": 7,
        "by_state": {"planned": 3, "submitting": 1, "running": 1, "succeeded": 1, "blocked": 1},
    }
    assert doc["attempts"]["total"] == 9
    assert doc["images"] == {"pending": 0, "downloaded": 1, "lost": 1, "on_disk": 1}
    assert doc["buzz"] == {"cap": 100, "charged": 8, "reserved": 5, "committed": 13}
    assert doc["failures"][0] == {"kind": "blocked", "reason": "moderation", "count": 1}
    assert doc["last_event_at"] == NOW
    assert doc == status_json(anyio.run(read_status, tmp_path, backend="asyncio"))


def test_status_prints_text_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> None:
        with anyio.fail_after(10):
            await (await build(tmp_path)).close()

    anyio.run(make, backend="asyncio")
    assert main(["status", str(tmp_path)]) == 0
    assert "buzz        8 charged · 5 reserved · cap 100 (87 left)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist or is not a folder"),
        ("empty", "holds no batch.sqlite: it is not a zbatch batch folder"),
        ("junk", "is not a zbatch batch database (file is not a database)"),
        ("foreign", "is not a zbatch batch database (no zbatch schema)"),
        ("unplanned", "holds no batch yet"),
    ],
)
def test_a_folder_without_a_batch_exits_2(
    setup: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    if setup != "missing":
        out.mkdir()
    if setup == "junk":
        (out / "batch.sqlite").write_bytes(b"hello, not a database" * 100)
    if setup == "foreign":
        sqlite3.connect(out / "batch.sqlite").execute("CREATE TABLE t (x)").connection.close()
    if setup == "unplanned":

        async def make() -> None:
            with anyio.fail_after(10):
                await (await Store.open(out / "batch.sqlite")).close()

        anyio.run(make, backend="asyncio")
    assert main(["status", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert captured.err.startswith("zbatch: error: ")


async def test_read_status_raises_not_a_batch_with_exit_code_2(tmp_path: Path) -> None:
    with anyio.fail_after(10), pytest.raises(NotABatch) as exc:
        await read_status(tmp_path / "nowhere")
    assert exc.value.exit_code == 2
    assert not (tmp_path / "nowhere").exists()


def test_a_manifest_stands_for_its_out_folder(tmp_path: Path, capsys) -> None:
    """`zbatch status MANIFEST` reads the batch in the manifest's `out`; a file that is no
    manifest is a usage error (exit 2) naming it."""
    out = tmp_path / "out" / "b"

    async def make() -> None:
        async with await build(out):
            pass

    anyio.run(make)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: b\nout: out/b\nbudget: 100\ngrid: {model: [turbo], prompt: [a fox]}\n",
        encoding="utf-8",
    )
    assert main(["status", str(manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    junk = tmp_path / "notes.txt"
    junk.write_text("not: [a manifest", encoding="utf-8")
    with pytest.raises(SystemExit) as refused:
        main(["status", str(junk)])
    assert refused.value.code == 2
    assert "is a file but not a manifest" in capsys.readouterr().err
