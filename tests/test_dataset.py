"""The dataset on disk: metadata rows, `OUT/metadata.jsonl` rewritten atomically, captions,
and the folder loading with the real `datasets` package's `imagefolder`."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.dataset._metadata import (
    COLUMNS,
    METADATA_NAME,
    caption_path,
    column_names,
    flat_row,
    metadata_row,
    refresh_dataset,
    write_caption,
)
from runner.emulator import EmulatorConfig, EmulatorTransport, FaultProfile, make_app
from runner.errors import DiskFull
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import RunOutcome, run_batch
from runner.store._rows import DatasetImage
from runner.store._store import Store

FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}
LORA = "urn:air:zImage:lora:civitai:123456@789012"

MANIFEST = """
name: dataset
out: out
budget: 1000
seed_base: 7
captions: txt
defaults: {{size: 64x64, quantity: 2}}
models:
  base: {{negativePrompt: "blurry, watermark"}}
grid:
  model: [turbo, base]
  prompt: "A {{animal}} in the snow"
  vars:
    animal: [fox, owl, "café cat"]
  loras: [{{}}, {{"{lora}": 0.8}}]
  seed: {{count: {seeds}}}
retries: {{attempts: 3}}
limits: {{in_flight: 8, submit_per_s: 1000, downloads: 4}}
"""


def small_manifest(tmp_path: Path, *, seeds: int = 1) -> Manifest:
    """2 models x 3 animals x 2 LoRA settings x `seeds`, two 64x64 images per cell."""
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(seeds=seeds, lora=LORA))
    return parse_manifest(path.read_text(), path=path)


async def run_small_batch(
    tmp_path: Path,
    *,
    seeds: int = 1,
    faults: FaultProfile | None = None,
    ledger: dict[str, Any] | None = None,
) -> tuple[Manifest, RunOutcome]:
    """Run `small_manifest` to the end against the in-process emulator.

    `ledger`, when given, receives the emulator's Buzz ledger (`state()["buzz"]`).
    """
    m = small_manifest(tmp_path, seeds=seeds)
    app = make_app(EmulatorConfig(time_scale=0, seed=5, faults=faults or FaultProfile()))
    async with Client(
        base_url="http://emulator", token="dataset-token", transport=EmulatorTransport(app)
    ) as client:
        outcome = await run_batch(m, client, tuning=FAST)
    if ledger is not None:
        ledger.update(app.state.emulator.state()["buzz"])
    return m, outcome


async def refresh(out: Path, captions: str = "txt") -> int:
    async with await Store.open(out / "batch.sqlite", read_only=True) as store:
        return await refresh_dataset(store, out, captions=captions)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def downloaded_paths(out: Path) -> list[str]:
    db = sqlite3.connect(out / "batch.sqlite")
    rows = db.execute("SELECT path FROM images WHERE state = 'downloaded'").fetchall()
    db.close()
    return sorted(r[0] for r in rows)


def image(**changes: Any) -> DatasetImage:
    base: dict[str, Any] = {
        "attempt_id": 3,
        "index": 1,
        "state": "downloaded",
        "path": "images/ab/abcdef0123456789_1.jpg",
        "sha256": "0" * 64,
        "size_bytes": 1234,
        "width": 64,
        "height": 64,
        "reason": None,
        "cell_key": "abcdef0123456789",
        "attempt": 2,
        "workflow_id": "wf-1",
        "model": "turbo",
        "request_json": json.dumps(
            {
                "model": "turbo",
                "prompt": "a fox",
                "width": 64,
                "height": 64,
                "cfgScale": 1,
                "steps": 9,
                "sampleMethod": "euler",
                "schedule": "simple",
                "seed": 42,
                "quantity": 2,
                "loras": {LORA: 1},
                "outputFormat": "jpeg",
            }
        ),
        "vars_json": json.dumps({"animal": "fox"}),
        "charged_buzz": 3,
        "created_at": "2026-01-01T00:00:01.000+00:00",
        "finished_at": "2026-01-01T00:00:05.000+00:00",
    }
    return DatasetImage(**(base | changes))


def test_metadata_row_has_every_column_with_stable_types() -> None:
    """Absent text is "", numbers keep their type, the charge is split over the quantity."""
    row = metadata_row(image(), ["animal", "place"])
    assert list(row) == column_names(["animal", "place"])
    assert list(row)[: len(COLUMNS)] == list(COLUMNS)
    assert row["file_name"] == "images/ab/abcdef0123456789_1.jpg"
    assert row["negative_prompt"] == ""
    assert row["cfg_scale"] == 1.0
    assert isinstance(row["cfg_scale"], float)
    assert row["buzz_charged"] == 1.5
    assert row["loras"] == [{"urn": LORA, "strength": 1.0}]
    assert row["text"] == row["prompt"] == "a fox"
    assert row["var_animal"] == "fox"
    assert row["var_place"] == ""
    assert row["nsfw_level"] is None
    assert row["reason"] == ""
    assert row["workflow_id"] == "wf-1"
    assert flat_row(row)["loras"] == json.dumps(
        [{"strength": 1.0, "urn": LORA}], separators=(",", ":")
    )


def test_metadata_row_of_a_lost_image_has_no_file() -> None:
    row = metadata_row(
        image(state="lost", path=None, sha256=None, size_bytes=None, width=None, height=None,
              reason="the workflow is gone"),
        [],
    )  # fmt: skip
    assert row["file_name"] is None
    assert row["sha256"] is None
    assert (row["width"], row["height"]) == (64, 64)  # the requested size
    assert row["reason"] == "the workflow is gone"


def test_write_caption_writes_only_when_missing_or_different(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    assert write_caption(path, "a fox") is True
    before = path.stat().st_mtime_ns
    assert write_caption(path, "a fox") is False
    assert path.stat().st_mtime_ns == before
    path.write_text("edited by hand")
    assert write_caption(path, "a fox") is True
    assert path.read_text() == "a fox"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


async def test_refresh_writes_one_row_per_downloaded_image_and_captions(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, outcome = await run_small_batch(tmp_path)
        assert outcome.counts["image:downloaded"] == 24
        assert await refresh(m.out) == 24
        rows = read_jsonl(m.out / METADATA_NAME)
        assert sorted(r["file_name"] for r in rows) == downloaded_paths(m.out)
        for row in rows:
            file = m.out / row["file_name"]
            assert hashlib.sha256(file.read_bytes()).hexdigest() == row["sha256"]
            assert row["bytes"] == file.stat().st_size
            assert row["prompt"] == f"A {row['var_animal']} in the snow"
            assert caption_path(m.out, row["file_name"]).read_text() == row["prompt"]
            assert row["negative_prompt"] == ("blurry, watermark" if row["model"] == "base" else "")
            assert json.loads(row["loras"]) in ([], [{"urn": LORA, "strength": 0.8}])
            assert row["text"] == row["prompt"]
            assert row["created_at"] <= row["finished_at"]
            assert row["workflow_id"]
            assert row["state"] == "downloaded"
        assert sum(r["buzz_charged"] for r in rows) == outcome.budget.charged_buzz
        assert {r["var_animal"] for r in rows} == {"fox", "owl", "café cat"}
        assert not list(m.out.glob(".*.tmp"))


async def test_refresh_is_idempotent_and_leaves_captions_alone(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        await refresh(m.out)
        first = (m.out / METADATA_NAME).read_bytes()
        captions = sorted(m.out.glob("images/*/*.txt"))
        stamps = [p.stat().st_mtime_ns for p in captions]
        await refresh(m.out)
        assert (m.out / METADATA_NAME).read_bytes() == first
        assert [p.stat().st_mtime_ns for p in captions] == stamps


async def test_refresh_copies_unchanged_lines_and_drops_images_no_longer_downloaded(
    tmp_path: Path,
) -> None:
    """A line whose image kept its path and sha256 is copied as it was; an image that left
    `downloaded` leaves the file; a changed sha256 renders its row again; rebuild renders all."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        await refresh(m.out)
        metadata = m.out / METADATA_NAME
        lines = metadata.read_text().splitlines(keepends=True)
        kept, gone, changed = (json.loads(lines[n]) for n in (0, 5, 9))
        edited = f'"workflow_id":"{kept["workflow_id"]}"'
        lines[0] = lines[0].replace(edited, '"workflow_id":"EDITED"')
        metadata.write_text("".join(lines))
        db = sqlite3.connect(m.out / "batch.sqlite")
        with db:
            db.execute("UPDATE images SET state = 'lost' WHERE path = ?", (gone["file_name"],))
            db.execute(
                "UPDATE images SET sha256 = ? WHERE path = ?", ("f" * 64, changed["file_name"])
            )
        db.close()
        assert await refresh(m.out) == 23
        rows = {r["file_name"]: r for r in read_jsonl(metadata)}
        assert rows[kept["file_name"]]["workflow_id"] == "EDITED"
        assert gone["file_name"] not in rows
        assert rows[changed["file_name"]]["sha256"] == "f" * 64
        async with await Store.open(m.out / "batch.sqlite", read_only=True) as store:
            assert await refresh_dataset(store, m.out, captions="txt", rebuild=True) == 23
        assert read_jsonl(metadata)[0]["workflow_id"] == kept["workflow_id"]


async def test_a_changed_caption_template_renders_every_row_again(tmp_path: Path) -> None:
    """The template a later `zbatch run` records reaches every row and caption file at the
    next refresh, not only the new images' (the lines kept would hold the old captions)."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        await refresh(m.out)
        db = sqlite3.connect(m.out / "batch.sqlite")
        with db:
            db.execute("UPDATE run_settings SET caption_template = 'zkfox, {var_animal}'")
        db.close()
        assert await refresh(m.out) == 24
        rows = read_jsonl(m.out / METADATA_NAME)
        assert {r["text"] for r in rows} == {"zkfox, fox", "zkfox, owl", "zkfox, café cat"}
        for row in rows:
            assert caption_path(m.out, row["file_name"]).read_text() == row["text"]


async def test_refresh_without_captions_writes_no_txt(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)  # the run wrote captions (captions: txt)
        for caption in m.out.rglob("*.txt"):
            caption.unlink()
        assert await refresh(m.out, captions="none") == 24
        assert not list(m.out.rglob("*.txt"))
        with pytest.raises(ValueError, match="'srt' is not one of none, txt"):
            await refresh(m.out, captions="srt")


async def test_a_failed_refresh_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half way leaves the previous metadata.jsonl whole, and no temp file."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        (m.out / METADATA_NAME).write_text('{"file_name": "old"}\n')
        calls = 0

        def failing(row: dict[str, Any]) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls > 5:
                raise OSError(28, "No space left on device")
            return flat_row(row)

        monkeypatch.setattr("runner.dataset._metadata.flat_row", failing)
        with pytest.raises(DiskFull, match="is full .* while writing metadata.jsonl"):
            await refresh(m.out, captions="none")
        assert (m.out / METADATA_NAME).read_text() == '{"file_name": "old"}\n'
        assert not list(m.out.glob(".*.tmp"))


async def test_refresh_during_a_run_uses_its_own_snapshot(tmp_path: Path) -> None:
    """Called on the engine's own (writable, locked) store, it reads through a reader."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        async with await Store.open(m.out / "batch.sqlite") as store:
            assert await refresh_dataset(store, m.out, captions="none") == 24
            await store.init_batch(name="dataset", tag="zbatch:dataset", cap_buzz=999)
            assert (await store.budget()).cap_buzz == 999  # the store is still usable


async def test_refresh_of_an_empty_batch_writes_an_empty_file(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with await Store.open(tmp_path / "batch.sqlite") as store:
            await store.init_batch(name="empty", tag="zbatch:empty", cap_buzz=1)
            assert await refresh_dataset(store, tmp_path, captions="txt") == 0
        assert (tmp_path / METADATA_NAME).read_bytes() == b""


def load_imagefolder(data_dir: Path, cache: Path) -> Any:
    datasets = pytest.importorskip("datasets", reason="the dataset tests need `datasets` (dev)")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()
    return datasets.load_dataset("imagefolder", data_dir=str(data_dir), cache_dir=str(cache))


async def test_imagefolder_loads_out_with_every_column(tmp_path: Path) -> None:
    """`datasets.load_dataset("imagefolder", data_dir=OUT)` reads images and metadata, and
    ignores the record, the log, captions, exports and a gallery beside them."""
    with anyio.fail_after(120):
        m, _ = await run_small_batch(tmp_path)
        await refresh(m.out)
        (m.out / "gallery").mkdir()
        (m.out / "gallery" / "index.html").write_text("<html></html>")
        first = downloaded_paths(m.out)[0]
        (m.out / "gallery" / "grid-model-seed.jpg").write_bytes((m.out / first).read_bytes())
        (m.out / "export").mkdir()
        (m.out / "export" / "dataset.jsonl").write_text("{}\n")
        loaded = await anyio.to_thread.run_sync(load_imagefolder, m.out, tmp_path / "hf")
        train = loaded["train"]
        assert train.num_rows == 24
        expected = [c for c in column_names(["animal"]) if c != "file_name"]
        assert train.column_names == ["image", *expected]
        rows = read_jsonl(m.out / METADATA_NAME)
        for n in (0, 23):
            sample = train[n]
            assert sample["image"].size == (64, 64)
            assert sample["key"] == rows[n]["key"]
            assert sample["prompt"] == rows[n]["prompt"]
            with (m.out / rows[n]["file_name"]).open("rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == sample["sha256"]
        assert train.features["cfg_scale"].dtype == "float64"
        assert train.features["seed"].dtype == "int64"


async def fill_batch(out: Path, cells: int, *, quantity: int = 1, lost_every: int = 0) -> int:
    """A batch of `cells` succeeded cells written straight into the schema (fast, for volume).

    Each cell has `quantity` downloaded images whose paths exist only in the record (no
    files); every `lost_every`-th image is lost instead. Returns the downloaded images.
    """
    async with await Store.open(out / "batch.sqlite") as store:
        await store.init_batch(name="volume", tag="zbatch:volume", cap_buzz=10**9)
    db = sqlite3.connect(out / "batch.sqlite")
    downloaded = 0
    with db:
        for start in range(0, cells, 10_000):
            cell_rows: list[tuple[Any, ...]] = []
            attempt_rows: list[tuple[Any, ...]] = []
            image_rows: list[tuple[Any, ...]] = []
            event_rows: list[tuple[Any, ...]] = []
            for n in range(start, min(start + 10_000, cells)):
                key = f"{n:016x}"
                request = {
                    "model": "turbo", "prompt": f"a photo of thing {n}, detailed", "width": 64,
                    "height": 64, "cfgScale": 1, "steps": 9, "sampleMethod": "euler",
                    "schedule": "simple", "seed": n, "quantity": quantity, "loras": {},
                    "outputFormat": "jpeg",
                }  # fmt: skip
                variables = json.dumps({"n": str(n % 7)})
                cell_rows.append((key, n, 0, "turbo", json.dumps(request), variables, 1, 1, 1))
                attempt_rows.append((n + 1, key, 1, "succeeded", quantity, f"wf-{n}", "t1"))
                event_rows.append(("t0", n + 1, "submitting", "running", quantity, f"wf-{n}"))
                for i in range(quantity):
                    if lost_every and (n * quantity + i) % lost_every == 0:
                        image_rows.append((n + 1, i, "lost", None, None, None, "gone"))
                    else:
                        path = f"images/{key[:2]}/{key}_{i}.jpg"
                        image_rows.append((n + 1, i, "downloaded", path, "0" * 64, 1000, None))
                        downloaded += 1
            db.executemany(
                "INSERT INTO cells (key, seq, replica, model, request, vars, estimate_buzz,"
                " max_attempts, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                cell_rows,
            )
            db.executemany(
                "INSERT INTO attempts (id, cell_key, attempt, state, charged_buzz,"
                " workflow_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                attempt_rows,
            )
            db.executemany(
                "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                event_rows,
            )
            db.executemany(
                "INSERT INTO images (attempt_id, idx, state, path, sha256, size_bytes, reason,"
                " width, height, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 64, 64, 't1')",
                image_rows,
            )
    db.close()
    return downloaded
