"""The dataset on disk: one metadata row per image, `OUT/metadata.jsonl` and caption sidecars.

`OUT` follows the Hugging Face `imagefolder` convention: images under `OUT/images/`, and
`OUT/metadata.jsonl` with one JSON object per downloaded image whose `file_name` is the
image's path relative to `OUT`, then its inputs and results (`COLUMNS`, then one `vars.<name>`
column per template variable). `refresh_dataset` rewrites it from the store atomically: rows
stream from a read-only snapshot of the database into a temp file beside it, which is fsynced
and renamed over the old one, so a reader sees the previous file or the new one, never half.

Column types never change from row to row: `imagefolder` fixes each column's type from the
first ~10 MB of the file, so a column that starts null and later holds text fails to load.
Text is `""` when absent, `loras` is its JSON text, and `nsfwLevel` is always null (the
store does not keep the service's level yet). See docs/dataset.md.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import IO, Any

import anyio

from runner.errors import StoreError
from runner.files import fsync_dir
from runner.store import Store
from runner.store_reads import DatasetImage

METADATA_NAME = "metadata.jsonl"
CAPTIONS = ("none", "txt")

# The fixed columns, in file order; `vars.<name>` columns follow, sorted by name.
COLUMNS: tuple[str, ...] = (
    "file_name",  # relative to OUT: images/<ab>/<cell key>_<index>.<ext>
    "key",  # the cell key
    "index",  # the image's index in its workflow's output
    "attempt",
    "workflow_id",
    "model",
    "prompt",
    "negativePrompt",
    "seed",
    "width",
    "height",
    "cfgScale",
    "steps",
    "sampleMethod",
    "schedule",
    "quantity",
    "loras",  # {AIR URN: strength}; JSON text in metadata.jsonl, CSV and Parquet
    "buzz_charged",  # the attempt's charge / quantity: this image's share
    "sha256",
    "bytes",
    "nsfwLevel",  # always null: the store does not keep it yet
    "created_at",  # when the service answered with the workflow id (UTC, ISO 8601)
    "finished_at",  # when the attempt's outcome was recorded
    "state",  # the image's: downloaded, pending or lost
    "reason",  # why it was lost; "" otherwise
)
VAR_PREFIX = "vars."


def metadata_row(image: DatasetImage, var_names: Sequence[str]) -> dict[str, Any]:
    """The dataset row of one image: `COLUMNS`, then `vars.<name>` for each of `var_names`.

    Pure. `loras` is a dict here; `flat_row` turns it into JSON text for flat formats.
    Text fields are `""` when absent, never None, so a column keeps one type.
    """
    request = image.request
    quantity = int(request.get("quantity") or 1)
    loras = request.get("loras") or {}
    row: dict[str, Any] = {
        "file_name": image.path,
        "key": image.cell_key,
        "index": image.index,
        "attempt": image.attempt,
        "workflow_id": image.workflow_id or "",
        "model": image.model,
        "prompt": _text(request.get("prompt")),
        "negativePrompt": _text(request.get("negativePrompt")),
        "seed": _int(request.get("seed")),
        "width": image.width if image.width is not None else _int(request.get("width")),
        "height": image.height if image.height is not None else _int(request.get("height")),
        "cfgScale": _float(request.get("cfgScale")),
        "steps": _int(request.get("steps")),
        "sampleMethod": _text(request.get("sampleMethod")),
        "schedule": _text(request.get("schedule")),
        "quantity": quantity,
        "loras": {str(air): float(weight) for air, weight in sorted(dict(loras).items())},
        "buzz_charged": round(image.charged_buzz / quantity, 4),
        "sha256": image.sha256,
        "bytes": image.size_bytes,
        "nsfwLevel": None,
        "created_at": image.created_at,
        "finished_at": image.finished_at,
        "state": image.state,
        "reason": image.reason or "",
    }
    for name in var_names:
        row[VAR_PREFIX + name] = _text(image.vars.get(name))
    return row


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with `loras` as canonical JSON text: for metadata.jsonl, CSV and Parquet."""
    return {**row, "loras": json.dumps(row["loras"], sort_keys=True, separators=(",", ":"))}


def column_names(var_names: Sequence[str]) -> list[str]:
    """Every column of a row, in order."""
    return [*COLUMNS, *(VAR_PREFIX + name for name in var_names)]


def caption_path(out: Path, image_path: str) -> Path:
    """Where an image's caption lives: beside it, `NAME.txt` (kohya-ss, OneTrainer)."""
    return (out / image_path).with_suffix(".txt")


async def refresh_dataset(store: Store, out: Path, *, captions: str) -> int:
    """Rewrite `out/metadata.jsonl` from the store atomically; return the rows written.

    One row per downloaded image, in (attempt, index) order. With `captions == "txt"`, also
    write `NAME.txt` beside each image holding its prompt, when it is missing or different.
    Idempotent, and safe to call while the engine runs on `store`: rows are read from a
    read-only snapshot of their own (`Store.reader`), and every blocking write runs in a
    worker thread, one chunk of rows at a time.
    """
    if captions not in CAPTIONS:
        raise ValueError(f"captions {captions!r} is not one of {', '.join(CAPTIONS)}")
    target = out / METADATA_NAME
    writer = await anyio.to_thread.run_sync(AtomicTextFile.create, target)
    rows = 0
    try:
        async with store.reader() as snapshot:
            names = await snapshot.var_names()
            async with aclosing(snapshot.dataset_images(("downloaded",))) as chunks:
                async for chunk in chunks:
                    write = functools.partial(_write_chunk, writer, chunk, names, out, captions)
                    rows += await anyio.to_thread.run_sync(write)
        await anyio.to_thread.run_sync(writer.commit)
    except BaseException:
        writer.abort()  # close and unlink the temp file: quick, safe while cancelled
        raise
    return rows


def _write_chunk(
    writer: AtomicTextFile,
    chunk: list[DatasetImage],
    names: Sequence[str],
    out: Path,
    captions: str,
) -> int:
    lines = []
    for image in chunk:
        row = metadata_row(image, names)
        lines.append(json.dumps(flat_row(row), ensure_ascii=False, separators=(",", ":")))
        if captions == "txt" and image.path is not None:
            write_caption(caption_path(out, image.path), row["prompt"])
    if lines:
        writer.handle.write("\n".join(lines) + "\n")
    return len(lines)


def write_caption(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds exactly that; True when written.

    Temp file and rename, so a trainer never reads half a caption. No fsync: a caption is
    derived from the record, and one a power cut damaged differs from its prompt, so the
    next refresh writes it again.
    """
    data = text.encode()
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with _create_exclusive(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


class AtomicTextFile:
    """A text file written under a temp name beside its target and renamed over it on commit."""

    def __init__(self, target: Path, tmp: Path, handle: IO[str]) -> None:
        self.target = target
        self.tmp = tmp
        self.handle = handle

    @classmethod
    def create(cls, target: Path) -> AtomicTextFile:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        handle = _create_exclusive(tmp, "w")
        return cls(target, tmp, handle)

    def commit(self) -> None:
        """Flush, fsync, rename over the target, fsync the folder: the new file is durable."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, mode: str) -> IO[Any]:
    """Open a new file (it must not exist) with the usual 0o666 & ~umask permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")


async def open_record(out: Path) -> Store:
    """Open `out/batch.sqlite` read-only (safe during a run); NotABatch when there is none."""
    from runner.batch import DB_NAME  # here: the engine imports this module
    from runner.status import NotABatch

    db = out / DB_NAME
    if not await anyio.Path(out).is_dir():
        raise NotABatch(f"{out} does not exist or is not a folder: give a batch's `out` folder")
    if not await anyio.Path(db).is_file():
        raise NotABatch(f"{out} holds no {DB_NAME}: it is not a zbatch batch folder")
    try:
        return await Store.open(db, read_only=True)
    except StoreError as exc:
        raise NotABatch(str(exc)) from exc


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
