"""`zbatch export`: a batch's images and metadata as JSONL, CSV, Parquet, WebDataset or a folder.

Rows are `metadata_row`s (`_metadata.py`) read from the record (`OUT/batch.sqlite`, read-only,
safe during a run) in one statement streamed a chunk at a time, and written a chunk at a
time in a worker thread: memory stays flat however many rows there are (measured in
docs/dataset.md). Every file is written under a temp name beside its target, fsynced and
renamed into place, so a reader sees the previous export or the new one, never half.

* `jsonl`: one JSON object per image (`loras` as a list of `{urn, strength}`).
* `csv`: a header, then one line per image (`loras` as JSON text; absent values empty).
* `parquet`: a typed schema (`loras` a list of structs), one row group per chunk of 5,000
  rows (needs pyarrow: `zbatch[parquet]`).
* `webdataset`: tar shards `shard-000000.tar`... of `shard_size` samples, each sample
  `KEY.jpg` (or `.png`/`.webp`), `KEY.json` (its row) and `KEY.txt` (its caption), where KEY
  is `<cell key>_<index>`. Only downloaded images: a sample needs its file.
* `folder`: the images and their captions side by side in one folder, for trainers
  (`_folder.py`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from runner.dataset._folder import FolderWriter, Subsets
from runner.dataset._metadata import (
    COLUMNS,
    HERE,
    Columns,
    RecordAt,
    caption_template,
    column_names,
    flat_row,
    metadata_row,
    open_record,
)
from runner.dataset._where import matches, parse_where
from runner.disk import AtomicFile, OutFolder, fsync_dir
from runner.errors import ExportError, MissingExtra
from runner.store import DatasetImage, ImageState

FORMATS = ("jsonl", "csv", "parquet", "webdataset", "folder")
# The formats that are a folder of files (images), not one file: downloaded images only.
FOLDER_FORMATS = ("webdataset", "folder")
# Without --format: JSON Lines, the one most users want. It needs no extra (Parquet needs
# pyarrow), keeps every column typed as it is (`loras` as a list, numbers as numbers),
# and is read by `datasets.load_dataset("json")`, pandas, DuckDB, jq and Polars alike.
DEFAULT_FORMAT = "jsonl"
IMAGE_STATES = tuple(s.value for s in ImageState)
DEFAULT_SHARD_SIZE = 1_000  # samples per WebDataset shard
DEFAULT_CHUNK = 10_000  # rows read, converted and written at a time
PARQUET_CHUNK = 5_000  # the same for Parquet, and a row group: 10,000 made the peak 210 MB
SHARD_NAME = "shard-{:06d}.tar"
_SHARD_RE = re.compile(r"shard-(\d{6,})\.tar")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    format: str
    path: Path  # the file, or the WebDataset shard folder, or the folder
    rows: int  # rows (samples, images) written
    files: int  # files written: 1, or the number of shards (folder: of subset folders)
    missing: int  # downloaded images not found on disk, left out of a WebDataset or folder


def default_target(out: Path, fmt: str) -> Path:
    """`OUT/export/dataset.<ext>`, or the folder `OUT/export/webdataset/` for shards (a
    folder export has no default: `check_folder_target`)."""
    return OutFolder(out).export / (fmt if fmt in FOLDER_FORMATS else f"dataset.{fmt}")


async def export(
    out: Path,
    fmt: str,
    *,
    to: Path | None = None,
    states: Sequence[str] = ("downloaded",),
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk: int | None = None,
    all_cells: bool = False,
    where: Sequence[str] = (),
    subsets: str | None = None,
    repeats: int | None = None,
    at: RecordAt = HERE,
) -> ExportResult:
    """Export the images of batch folder `out` in `states` as `fmt` to `to` (or the default):
    those of the current manifest's cells, or with `all_cells` of every cell (also those a
    `run --replace` left out). `where`: `FIELD=VALUE` conditions every row meets
    (`_where.py`). `subsets` (a field) and `repeats`: kohya-ss subset folders in a `folder`
    export (`_folder.py`). `at`: the record (default: OUT/batch.sqlite); images from `out`.

    ExportError: a format, state or size not allowed; MissingExtra: Parquet without pyarrow.
    """
    check_request(fmt, states, shard_size)
    if fmt != "folder" and (subsets is not None or repeats is not None):
        raise ExportError("--subsets and --repeats make folders: they go with --format folder")
    layout = Subsets.of(subsets, repeats)
    if fmt == "folder":
        check_folder_target(out, to)
    conditions = parse_where(where)
    if chunk is None:
        chunk = PARQUET_CHUNK if fmt == "parquet" else DEFAULT_CHUNK
    if fmt == "parquet":
        require_pyarrow()
    target = to if to is not None else default_target(out, fmt)
    if to is not None:
        await anyio.to_thread.run_sync(prepare_folder, target, fmt)
    async with await open_record(out, at) as store:
        names = await store.var_names()
        template = await caption_template(store)
        batch = (await store.batch_info()).name if fmt == "folder" else ""
        if fmt == "folder":
            folder = functools.partial(FolderWriter, target, (names, template), out, layout, batch)
            writer: _Writer = _FolderExport(await anyio.to_thread.run_sync(folder))
        else:
            writer = await anyio.to_thread.run_sync(
                functools.partial(_open_writer, fmt, target, (names, template), out, shard_size)
            )
        try:
            images_of = store.dataset_images(states, chunk=chunk, all_cells=all_cells)
            async with aclosing(images_of) as chunks:
                async for images in chunks:
                    if conditions:
                        images = [
                            i for i in images if matches(conditions, i.model, i.request, i.vars)
                        ]
                    await anyio.to_thread.run_sync(writer.write, images)
            return await anyio.to_thread.run_sync(writer.commit)
        except BaseException:
            writer.abort()  # closes and unlinks temp files: quick, safe while cancelled
            raise


def prepare_folder(target: Path, fmt: str) -> None:
    """Make the folder a `--to` export goes into (the folder itself for webdataset, folder)
    when it is missing but its parent is there: only that last folder, never a whole path
    (a typo in `--to /mnt/dats/x.csv` must not create `/mnt/dats`). Raises ExportError."""
    folder = target if fmt in FOLDER_FORMATS else target.parent
    folder = Path(os.path.abspath(folder))
    if folder.is_dir():
        return
    if folder.exists():
        raise ExportError(f"--to {target}: {folder} is not a folder")
    if not folder.parent.is_dir():
        raise ExportError(
            f"--to {target}: the folder {folder.parent} does not exist (zbatch creates only the"
            f" last folder, {folder.name}/; create the others first)"
        )
    try:
        folder.mkdir()
    except FileExistsError:
        pass  # made meanwhile: fine
    except OSError as exc:
        raise ExportError(f"--to {target}: cannot create {folder} ({exc.strerror})") from exc


def check_folder_target(out: Path, to: Path | None) -> None:
    """A folder export goes outside OUT: inside it, `imagefolder` loading OUT would find its
    images and metadata.jsonl and count every image twice. Raises ExportError."""
    inside = to is not None and Path(os.path.abspath(to)).is_relative_to(os.path.abspath(out))
    if to is None or inside:
        where = "" if to is None else f" ({to} is inside {out})"
        raise ExportError(
            f"--format folder needs --to DIR outside OUT{where}: loading OUT as an imagefolder"
            " would count its images twice"
        )


def check_request(fmt: str, states: Sequence[str], shard_size: int) -> None:
    """Raise ExportError naming what is allowed when the request cannot be honoured."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not states:
        raise ExportError(f"no image state chosen (allowed: {', '.join(IMAGE_STATES)})")
    for state in states:
        if state not in IMAGE_STATES:
            raise ExportError(f"state {state!r} is not one of {', '.join(IMAGE_STATES)}")
    if fmt in FOLDER_FORMATS and set(states) != {"downloaded"}:
        raise ExportError(f"{fmt} holds image files: only --state downloaded can be exported")
    if shard_size < 1:
        raise ExportError(f"shard size must be at least 1, not {shard_size}")


def require_pyarrow() -> None:
    """Raise MissingExtra, naming the extra to install, when pyarrow cannot be imported."""
    try:
        arrow()
    except ImportError as exc:
        raise MissingExtra(
            f"--format parquet needs pyarrow ({exc}): pip install 'zbatch[parquet]'"
        ) from exc


def arrow() -> tuple[Any, Any]:
    """`pyarrow` and `pyarrow.parquet`, imported on first use (an optional extra, untyped).

    Unless the user chose otherwise, Arrow allocates with the C library's allocator, which
    gives freed memory back: its default pool (mimalloc or jemalloc) keeps what each chunk
    used, 40 MB more at the peak of a million-row export. Read once, at the first import.
    """
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow  # type: ignore[import-untyped]
    import pyarrow.parquet  # type: ignore[import-untyped]

    return pyarrow, pyarrow.parquet


class _Writer(Protocol):
    def write(self, images: list[DatasetImage]) -> None: ...
    def commit(self) -> ExportResult: ...
    def abort(self) -> None: ...


def _open_writer(fmt: str, target: Path, columns: Columns, out: Path, shard_size: int) -> _Writer:
    if fmt == "jsonl":
        return _JsonlWriter(target, columns)
    if fmt == "csv":
        return _CsvWriter(target, columns)
    if fmt == "parquet":
        return _ParquetWriter(target, columns)
    return _WebDatasetWriter(target, columns, out, shard_size)


class _JsonlWriter:
    def __init__(self, target: Path, columns: Columns) -> None:
        self.names, self.template = columns
        self.file = AtomicFile(target)
        self.rows = 0

    def write(self, images: list[DatasetImage]) -> None:
        lines = [_json(metadata_row(image, self.names, self.template)) for image in images]
        if lines:
            self.file.text().write("\n".join(lines) + "\n")
        self.rows += len(lines)

    def commit(self) -> ExportResult:
        self.file.commit()
        return ExportResult("jsonl", self.file.target, self.rows, 1, 0)

    def abort(self) -> None:
        self.file.abort()


class _CsvWriter:
    def __init__(self, target: Path, columns: Columns) -> None:
        self.names, self.template = columns
        self.file = AtomicFile(target)
        self.csv = csv.DictWriter(
            self.file.text(), fieldnames=column_names(self.names), lineterminator="\n"
        )
        self.csv.writeheader()
        self.rows = 0

    def write(self, images: list[DatasetImage]) -> None:
        self.csv.writerows(
            flat_row(metadata_row(image, self.names, self.template)) for image in images
        )
        self.rows += len(images)

    def commit(self) -> ExportResult:
        self.file.commit()
        return ExportResult("csv", self.file.target, self.rows, 1, 0)

    def abort(self) -> None:
        self.file.abort()


def parquet_schema(names: Sequence[str]) -> Any:
    """The Parquet schema (a `pyarrow.Schema`): the fixed columns typed (`loras` a list of
    `{urn, strength}` structs), `var_*` as strings."""
    pa, _ = arrow()
    types: dict[str, Any] = {
        "index": pa.int32(),
        "attempt": pa.int32(),
        "seed": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "cfg_scale": pa.float64(),
        "steps": pa.int32(),
        "quantity": pa.int32(),
        "buzz_charged": pa.float64(),
        "bytes": pa.int64(),
        "revision": pa.int32(),
        "loras": pa.list_(pa.struct([("urn", pa.string()), ("strength", pa.float64())])),
    }
    fields = [pa.field(name, types.get(name, pa.string())) for name in COLUMNS]
    fields += [pa.field(name, pa.string()) for name in column_names(names)[len(COLUMNS) :]]
    return pa.schema(fields)


class _ParquetWriter:
    def __init__(self, target: Path, columns: Columns) -> None:
        _, pq = arrow()
        self.names, self.template = columns
        self.target = target
        self.schema = parquet_schema(self.names)
        self.file = AtomicFile(target)
        self.writer = pq.ParquetWriter(self.file.release(), self.schema, compression="zstd")
        self.rows = 0

    def write(self, images: list[DatasetImage]) -> None:
        if not images:
            return
        self.writer.write_table(self._table(images))
        self.rows += len(images)

    def _table(self, images: list[DatasetImage]) -> Any:
        """The chunk as an Arrow table, parsed from its rows' JSON lines by Arrow's own JSON
        reader. Not from Python objects (`Table.from_pylist`, `pyarrow.array`): on its first
        such conversion pyarrow imports pandas when pandas is installed, 50 MB for nothing."""
        from pyarrow import json as arrow_json

        data = "\n".join(
            _json(metadata_row(image, self.names, self.template)) for image in images
        ).encode()
        return arrow_json.read_json(
            io.BytesIO(data),
            read_options=arrow_json.ReadOptions(use_threads=False, block_size=len(data) + 1),
            parse_options=arrow_json.ParseOptions(
                explicit_schema=self.schema, unexpected_field_behavior="error"
            ),
        )

    def commit(self) -> ExportResult:
        self._close()
        self.file.commit()
        return ExportResult("parquet", self.target, self.rows, 1, 0)

    def abort(self) -> None:
        self._close()
        self.file.abort()

    def _close(self) -> None:
        self.writer.close()


class _WebDatasetWriter:
    """Tar shards of `shard_size` samples; each shard written under a temp name, then renamed."""

    def __init__(self, folder: Path, columns: Columns, out: Path, shard_size: int) -> None:
        self.folder = folder
        self.names, self.template = columns
        self.out = out
        self.shard_size = shard_size
        folder.mkdir(parents=True, exist_ok=True)
        self.shards = 0  # shards committed
        self.in_shard = 0  # samples in the open shard
        self.file: AtomicFile | None = None
        self.tar: tarfile.TarFile | None = None
        self.rows = 0
        self.missing = 0

    def write(self, images: list[DatasetImage]) -> None:
        for image in images:
            if image.path is None:
                continue
            try:
                data = (self.out / image.path).read_bytes()
            except FileNotFoundError:
                self.missing += 1
                continue
            row = metadata_row(image, self.names, self.template)
            key = f"{image.cell_key}_{image.index}"
            ext = Path(image.path).suffix
            tar = self._shard()
            _add(tar, key + ext, data)
            _add(tar, key + ".json", _json(row).encode())
            _add(tar, key + ".txt", str(row["text"]).encode())
            self.in_shard += 1
            self.rows += 1
            if self.in_shard >= self.shard_size:
                self._close_shard()

    def _shard(self) -> tarfile.TarFile:
        if self.tar is None:
            self.file = AtomicFile(self.folder / SHARD_NAME.format(self.shards))
            self.tar = tarfile.open(self.file.release(), "w", format=tarfile.USTAR_FORMAT)
        return self.tar

    def _close_shard(self) -> None:
        assert self.tar is not None
        assert self.file is not None
        self.tar.close()
        self.file.commit()
        self.tar, self.file = None, None
        self.shards += 1
        self.in_shard = 0

    def commit(self) -> ExportResult:
        if self.tar is not None:
            self._close_shard()
        for path in self.folder.iterdir():  # shards of an earlier, larger export
            match = _SHARD_RE.fullmatch(path.name)
            if match and int(match.group(1)) >= self.shards:
                path.unlink()
        fsync_dir(self.folder)
        return ExportResult("webdataset", self.folder, self.rows, self.shards, self.missing)

    def abort(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self.file is not None:
            self.file.abort()


class _FolderExport:
    def __init__(self, writer: FolderWriter) -> None:
        self.writer = writer

    def write(self, images: list[DatasetImage]) -> None:
        self.writer.write(images)

    def commit(self) -> ExportResult:
        folder, rows, subsets, missing = self.writer.commit()
        return ExportResult("folder", folder, rows, subsets, missing)

    def abort(self) -> None:
        self.writer.abort()


def shard_urls(folder: Path, shards: int) -> str:
    """The brace pattern `webdataset.WebDataset` takes for `shards` shards in `folder`."""
    last = SHARD_NAME.format(max(shards - 1, 0))[len("shard-") : -len(".tar")]
    return str(folder / f"shard-{{000000..{last}}}.tar")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # the same export makes the same bytes
    tar.addfile(info, io.BytesIO(data))


def _json(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def describe(result: ExportResult) -> str:
    """One line saying what was written, and for shards how to load them."""
    if result.format == "folder":
        plural = "folder" if result.files == 1 else "folders"
        where = f"{result.files} subset {plural} of " if result.files else ""
        return f"wrote {result.rows} images and their captions to {where}{result.path}"
    if result.format != "webdataset":
        return f"wrote {result.rows} rows to {result.path} ({result.format})"
    shards = "shard" if result.files == 1 else "shards"
    line = f"wrote {result.rows} samples in {result.files} {shards} to {result.path}"
    if result.files:
        line += f"\nload with webdataset.WebDataset({shard_urls(result.path, result.files)!r})"
    return line
