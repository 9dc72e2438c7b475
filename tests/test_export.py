"""`zbatch export`: JSONL, CSV, Parquet and WebDataset read back with the real readers, every
file replaced atomically, memory flat as the row count grows, and the CLI's exit codes."""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import sys
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.cli._main import main
from runner.dataset._export import default_target, export, shard_urls
from runner.dataset._metadata import column_names, metadata_row
from runner.errors import ExportError, MissingExtra
from runner.store._rows import DatasetImage
from runner.store._store import Store
from tests.test_dataset import LORA, fill_batch, read_jsonl, run_small_batch

COLUMNS = column_names(["animal"])


@pytest.fixture(autouse=True)
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` would point structlog at a test's captured stderr, which is closed after it."""
    monkeypatch.setattr("runner.cli._main.configure_logging", lambda **_: None)


async def expected_rows(
    out: Path, states: tuple[str, ...] = ("downloaded",)
) -> list[dict[str, Any]]:
    """The rows the record holds, straight from the store."""
    rows: list[dict[str, Any]] = []
    async with await Store.open(out / "batch.sqlite", read_only=True) as store:
        names = await store.var_names()
        async for chunk in store.dataset_images(states):
            rows += [metadata_row(image, names) for image in chunk]
    return rows


async def test_jsonl_round_trips_every_row(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, outcome = await run_small_batch(tmp_path)
        result = await export(m.out, "jsonl")
        assert result.path == m.out / "export" / "dataset.jsonl"
        assert result.rows == outcome.counts["image:downloaded"] == 24
        rows = read_jsonl(result.path)
        assert rows == await expected_rows(m.out)
        assert list(rows[0]) == COLUMNS
        assert {json.dumps(r["loras"]) for r in rows} == {
            "[]",
            json.dumps([{"urn": LORA, "strength": 0.8}]),
        }


async def test_csv_round_trips_text_with_commas_and_accents(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        result = await export(m.out, "csv", to=tmp_path / "rows.csv")
        with result.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == COLUMNS
            got = list(reader)
        want = await expected_rows(m.out)
        assert len(got) == len(want) == 24
        for g, w in zip(got, want, strict=True):
            assert g["negative_prompt"] == w["negative_prompt"]  # "blurry, watermark" on base
            assert g["var_animal"] == w["var_animal"]  # "café cat" among them
            assert json.loads(g["loras"]) == w["loras"]
            assert int(g["seed"]) == w["seed"]
            assert float(g["buzz_charged"]) == w["buzz_charged"]
            assert g["nsfw_level"] == ""  # None is an empty field


async def test_parquet_is_typed_and_written_in_row_groups(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet needs pyarrow (dev extra)")
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        result = await export(m.out, "parquet", chunk=5)
        table = pq.read_table(result.path)
        assert table.column_names == COLUMNS
        assert table.num_rows == 24
        assert pq.ParquetFile(result.path).num_row_groups == 5  # ceil(24 / 5)
        assert str(table.schema.field("seed").type) == "int64"
        assert str(table.schema.field("cfg_scale").type) == "double"
        want = await expected_rows(m.out)
        got = table.to_pylist()
        assert [r["sha256"] for r in got] == [r["sha256"] for r in want]
        assert str(table.schema.field("loras").type) == (
            "list<element: struct<urn: string, strength: double>>"
        )
        assert [r["loras"] for r in got] == [r["loras"] for r in want]
        assert [r["text"] for r in got] == [r["prompt"] for r in want]


async def test_webdataset_shards_read_back_with_the_webdataset_package(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset", reason="the shard test needs webdataset (dev)")
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        result = await export(m.out, "webdataset", shard_size=5)
        assert result.path == default_target(m.out, "webdataset")
        assert (result.rows, result.files, result.missing) == (24, 5, 0)
        names = sorted(p.name for p in result.path.iterdir())
        assert names == [f"shard-{n:06d}.tar" for n in range(5)]

        def read() -> list[dict[str, Any]]:
            # webdataset 1.0 leaves a shard's file for the garbage collector to close.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                urls = shard_urls(result.path, result.files)
                samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
                gc.collect()
            return samples

        samples = await anyio.to_thread.run_sync(read)
        want = {f"{r['key']}_{r['index']}": r for r in await expected_rows(m.out)}
        assert sorted(s["__key__"] for s in samples) == sorted(want)
        for sample in samples:
            row = json.loads(sample["json"])
            assert row == want[sample["__key__"]]
            assert hashlib.sha256(sample["jpg"]).hexdigest() == row["sha256"]
            assert sample["txt"].decode() == row["prompt"] == row["text"]


async def test_a_smaller_webdataset_export_removes_the_extra_old_shards(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        first = await export(m.out, "webdataset", shard_size=5)
        assert first.files == 5
        again = await export(m.out, "webdataset", shard_size=100)
        assert again.files == 1
        assert [p.name for p in again.path.iterdir()] == ["shard-000000.tar"]
        shard = again.path / "shard-000000.tar"
        first_bytes = shard.read_bytes()
        third = await export(m.out, "webdataset", shard_size=100)
        assert third.rows == 24
        assert shard.read_bytes() == first_bytes  # the same record makes the same bytes


async def test_webdataset_leaves_out_images_missing_from_disk(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        victim = next((m.out / "images").rglob("*.jpg"))
        victim.unlink()
        result = await export(m.out, "webdataset")
        assert (result.rows, result.missing) == (23, 1)


async def test_lost_and_pending_images_export_with_their_reason(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        downloaded = await fill_batch(tmp_path, 20, quantity=2, lost_every=4)
        assert downloaded == 30
        lost = await export(tmp_path, "jsonl", states=("lost",), to=tmp_path / "lost.jsonl")
        rows = read_jsonl(lost.path)
        assert len(rows) == 10
        assert all(r["file_name"] is None and r["reason"] == "gone" for r in rows)
        both = await export(tmp_path, "csv", states=("downloaded", "lost"))
        assert both.rows == 40


@pytest.mark.parametrize(
    ("fmt", "states", "shard_size", "message"),
    [
        ("xlsx", ("downloaded",), 1, "format 'xlsx' is not one of jsonl, csv, parquet, webdataset"),
        ("csv", ("failed",), 1, "state 'failed' is not one of pending, downloaded, lost"),
        ("csv", (), 1, "no image state chosen (allowed: pending, downloaded, lost)"),
        ("webdataset", ("lost",), 1, "only --state downloaded can be exported"),
        ("webdataset", ("downloaded",), 0, "shard size must be at least 1, not 0"),
    ],
)
async def test_requests_that_cannot_be_honoured_name_what_is_allowed(
    tmp_path: Path, fmt: str, states: tuple[str, ...], shard_size: int, message: str
) -> None:
    with anyio.fail_after(10), pytest.raises(ExportError) as exc:
        await export(tmp_path, fmt, states=states, shard_size=shard_size)
    assert message in str(exc.value)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "webdataset"])
async def test_a_failed_export_leaves_the_previous_one_intact(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure half way (here, after 7 rows) leaves the earlier export whole, no temp file."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        before = await export(m.out, fmt, shard_size=5, chunk=4)
        files = sorted(p for p in before.path.parent.rglob("*") if p.is_file())
        snapshot = {p: p.read_bytes() for p in files}
        calls = 0

        def failing(image: DatasetImage, names: list[str], template: Any) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls > 7:
                raise OSError(28, "No space left on device")
            return metadata_row(image, names, template)

        monkeypatch.setattr("runner.dataset._export.metadata_row", failing)
        with pytest.raises(OSError, match="No space left"):
            await export(m.out, fmt, shard_size=100, chunk=4)
        after = sorted(p for p in before.path.parent.rglob("*") if p.is_file())
        if fmt == "webdataset":  # shards are replaced one by one; shard 0 is not yet written
            assert after == files
            assert all(p.read_bytes() == snapshot[p] for p in after)
        else:
            assert after == files
            assert before.path.read_bytes() == snapshot[before.path]
        assert not [p for p in m.out.rglob("*.tmp")]


async def test_memory_stays_flat_as_rows_grow(tmp_path: Path) -> None:
    """Python's peak allocation exporting 24,000 rows is close to that of 3,000 rows.

    A whole-file export would grow ~8x; streaming in chunks of 1,000 keeps the peak at a
    chunk's worth. (1,000,000 rows: `make bench`, docs/dataset.md.)
    """
    peaks = {}
    for rows in (3_000, 24_000):
        out = tmp_path / str(rows)
        out.mkdir()
        await fill_batch(out, rows)
        tracemalloc.start()
        try:
            with anyio.fail_after(120):
                result = await export(out, "jsonl", chunk=1_000)
            peaks[rows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.rows == rows
    assert peaks[24_000] < 1.5 * peaks[3_000], peaks


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtra, match=r"pip install 'zbatch\[parquet\]'"):
        anyio.run(export, tmp_path, "parquet", backend="asyncio")


async def test_cli_export_prints_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
    code = await anyio.to_thread.run_sync(main, ["export", str(m.out), "--format", "webdataset"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"wrote 24 samples in 1 shard to {m.out / 'export' / 'webdataset'}" in out
    assert "shard-{000000..000000}.tar" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--format", "csv", "--state", "downloaded,gone"], 2, "state 'gone' is not one of"),
        (["--format", "parquet"], 1, "pip install 'zbatch[parquet]'"),
    ],
)
def test_cli_export_exit_codes(
    tmp_path: Path,
    argv: list[str],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["export", str(tmp_path), *argv]) == code
    assert message in capsys.readouterr().err


def test_cli_export_refuses_a_format_it_does_not_offer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format has choices: argparse refuses another (exit 2) before anything is read."""
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path), "--format", "xlsx"])
    assert exc.value.code == 2
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err


def test_cli_export_of_a_folder_without_a_batch_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path), "--format", "jsonl"]) == 2
    assert "holds no batch.sqlite" in capsys.readouterr().err


PARQUET_IN_A_FRESH_PROCESS = """
import sys, anyio
from pathlib import Path
from runner.dataset._export import export
result = anyio.run(export, Path(sys.argv[1]), "parquet")
print(result.rows, "pandas" in sys.modules)
"""


async def test_a_parquet_export_leaves_pandas_unimported(tmp_path: Path) -> None:
    """pyarrow imports pandas (50 MB) on its first conversion of Python objects when pandas
    is installed: the export parses its rows with Arrow's JSON reader instead."""
    pytest.importorskip("pandas", reason="only meaningful where pandas is installed")
    pytest.importorskip("pyarrow.parquet", reason="parquet needs pyarrow (dev extra)")
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
        done = await anyio.run_process(
            [sys.executable, "-c", PARQUET_IN_A_FRESH_PROCESS, str(m.out)],
            cwd=Path(__file__).parent.parent,
        )
    assert done.stdout.decode().split() == ["24", "False"]


async def test_cli_export_without_format_writes_jsonl_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: `export` required --format; now JSON Lines is the default, named in the output."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
    code = await anyio.to_thread.run_sync(main, ["export", str(m.out)])
    assert code == 0
    target = m.out / "export" / "dataset.jsonl"
    assert read_jsonl(target) == await expected_rows(m.out)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote 24 rows to {target} (jsonl); jsonl is the default"
        " (--format csv, parquet or webdataset for others)"
    )


@pytest.mark.parametrize("fmt", ["jsonl", "webdataset"])
async def test_export_to_creates_only_the_last_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """Issue 15: `--to /nonexistent/dir/...` made every missing folder. Now only the last one
    is made (the file's folder; the shard folder itself for webdataset); a missing parent of
    it is refused, exit 2, before anything is written."""
    with anyio.fail_after(60):
        m, _ = await run_small_batch(tmp_path)
    to = tmp_path / "a" / "b" / ("wds" if fmt == "webdataset" else "x.jsonl")
    last = to if fmt == "webdataset" else to.parent  # the folder zbatch may make
    argv = ["export", str(m.out), "--format", fmt, "--to", str(to)]
    assert await anyio.to_thread.run_sync(main, argv) == 2
    assert capsys.readouterr().err == (
        f"zbatch: error: --to {to}: the folder {last.parent} does not exist (zbatch creates"
        f" only the last folder, {last.name}/; create the others first)\n"
    )
    assert not (tmp_path / "a").exists()

    last.parent.mkdir(parents=True)
    assert await anyio.to_thread.run_sync(main, argv) == 0
    assert last.is_dir()
    assert (to / "shard-000000.tar").is_file() if fmt == "webdataset" else to.is_file()
