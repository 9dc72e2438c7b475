"""The dataset on disk: one metadata row per image, `OUT/metadata.jsonl` and caption sidecars.

`OUT` follows the Hugging Face `imagefolder` convention: images under `OUT/images/`, and
`OUT/metadata.jsonl` with one JSON object per downloaded image whose `file_name` is the
image's path relative to `OUT`, then its inputs and results (`COLUMNS`, then one
`var_<name>` column per template variable; every column snake_case, a plain name in SQL).
`refresh_dataset` rewrites it from the store atomically: rows stream from a read-only
snapshot of the database into a temp file beside it, which is fsynced and renamed over the
old one, so a reader sees the previous file or the new one, never half.

Column types never change from row to row: `imagefolder` fixes each column's type from the
first ~10 MB of the file, so a column that starts null and later holds text fails to load.
Text is `""` when absent, `loras` is the JSON text of its list of `{urn, strength}`, and
`nsfw_level` is always null (the store does not keep the service's level yet). `text` is the
caption: the batch's caption template (`runner.manifest._captions`, by default `{prompt}`)
filled in from the row, on one line, its whitespace normalised (the column diffusers'
`train_text_to_image` reads by default, and what a caption file holds). See docs/dataset.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import structlog

from runner.disk import AtomicFile, OutFolder, disk_error
from runner.errors import StoreError
from runner.manifest import (
    DEFAULT_CAPTION_TEMPLATE,
    VAR_COLUMN_PREFIX,
    Template,
    compile_caption,
    render_caption,
)
from runner.store import BatchInfo, DatasetImage, Store, open_store, redact

log = structlog.get_logger(__name__)
METADATA_NAME = OutFolder.METADATA_NAME
CAPTIONS = ("none", "txt")

# The fixed columns, in file order; `var_<name>` columns follow, sorted by name.
COLUMNS: tuple[str, ...] = (
    "file_name",  # relative to OUT: images/<ab>/<cell key>_<index>.<ext>
    "key",  # the cell key
    "index",  # the image's index in its workflow's output
    "attempt",
    "workflow_id",
    "model",
    "prompt",
    "text",  # the caption: the caption template filled in, one line (`render_caption`)
    "negative_prompt",
    "seed",
    "width",
    "height",
    "cfg_scale",
    "steps",
    "sample_method",
    "schedule",
    "quantity",
    "loras",  # [{urn, strength}] sorted by urn; JSON text in metadata.jsonl and CSV
    "buzz_charged",  # the attempt's charge / quantity: this image's share
    "sha256",
    "bytes",
    "nsfw_level",  # always null: the store does not keep it yet
    "created_at",  # when the service answered with the workflow id (UTC, ISO 8601)
    "finished_at",  # when the attempt's outcome was recorded
    "state",  # the image's: downloaded, pending or lost
    "reason",  # why it was lost; "" otherwise
    "revision",  # the manifest revision that last listed the cell (`run --keep`)
)
VAR_PREFIX = VAR_COLUMN_PREFIX  # `var_<name>`: a plain identifier in SQL, pandas, Arrow
PROMPT_CAPTION = compile_caption(DEFAULT_CAPTION_TEMPLATE)
# What a row is made of: the batch's template variables and its compiled caption template.
Columns = tuple[Sequence[str], Template]


def metadata_row(
    image: DatasetImage, var_names: Sequence[str], template: Template = PROMPT_CAPTION
) -> dict[str, Any]:
    """The dataset row of one image: `COLUMNS`, then `var_<name>` for each of `var_names`;
    `text` is its caption, `template` (a compiled caption template) filled in from the row.

    Pure. `loras` is a list of `{"urn", "strength"}` here (every reader keeps every LoRA:
    an object keyed by URN is one struct field per LoRA to DuckDB and Arrow); `flat_row`
    turns it into JSON text for flat formats. Text fields are `""` when absent, never None,
    so a column keeps one type.
    """
    request = image.request
    quantity = int(request.get("quantity") or 1)
    loras = request.get("loras") or {}
    prompt = _text(request.get("prompt"))
    row: dict[str, Any] = {
        "file_name": image.path,
        "key": image.cell_key,
        "index": image.index,
        "attempt": image.attempt,
        "workflow_id": image.workflow_id or "",
        "model": image.model,
        "prompt": prompt,
        "text": "",  # rendered from the row below
        "negative_prompt": _text(request.get("negativePrompt")),
        "seed": _int(request.get("seed")),
        "width": image.width if image.width is not None else _int(request.get("width")),
        "height": image.height if image.height is not None else _int(request.get("height")),
        "cfg_scale": _float(request.get("cfgScale")),
        "steps": _int(request.get("steps")),
        "sample_method": _text(request.get("sampleMethod")),
        "schedule": _text(request.get("schedule")),
        "quantity": quantity,
        "loras": [
            {"urn": str(air), "strength": float(weight)}
            for air, weight in sorted(dict(loras).items())
        ],
        "buzz_charged": round(image.charged_buzz / quantity, 4),
        "sha256": image.sha256,
        "bytes": image.size_bytes,
        "nsfw_level": None,
        "created_at": image.created_at,
        "finished_at": image.finished_at,
        "state": image.state,
        "reason": image.reason or "",
        "revision": image.revision,
    }
    for name in var_names:
        row[VAR_PREFIX + name] = _text(image.vars.get(name))
    row["text"] = (
        caption_text(prompt) if template is PROMPT_CAPTION else render_caption(template, row)
    )
    return row


# One encoder each, built once (`json.dumps` with arguments builds a new one per call): a
# refresh at the end of a run renders every row.
_LORAS_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_LINE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with `loras` as canonical JSON text: for metadata.jsonl and CSV."""
    loras = row["loras"]
    return {**row, "loras": _LORAS_JSON(loras) if loras else "[]"}


def caption_text(prompt: str) -> str:
    """A caption: `prompt` on one line, every run of whitespace (newlines, tabs, the
    Unicode spaces) one space, none at either end. kohya-ss reads only a caption file's
    first line."""
    return " ".join(prompt.split())


def column_names(var_names: Sequence[str]) -> list[str]:
    """Every column of a row, in order."""
    return [*COLUMNS, *(VAR_PREFIX + name for name in var_names)]


async def caption_template(store: Store) -> Template:
    """The batch's caption template, compiled: the manifest's (`captions: {template: ...}`,
    recorded by `zbatch run`), or `{prompt}` for a batch that recorded none."""
    settings = await store.run_settings()
    return compile_caption(settings.caption_template if settings else DEFAULT_CAPTION_TEMPLATE)


def caption_path(out: Path, image_path: str) -> Path:
    """Where an image's caption lives: beside it, `NAME.txt` (kohya-ss, OneTrainer)."""
    return (out / image_path).with_suffix(".txt")


async def refresh_dataset(store: Store, out: Path, *, captions: str, rebuild: bool = False) -> int:
    """Rewrite `out/metadata.jsonl` from the store atomically; return the rows written.

    One row per downloaded image, ordered by path. With `captions == "txt"`, also write
    `NAME.txt` beside each image holding its caption (`text`: the batch's template), when
    it is missing or different.
    Idempotent, and safe to call while the engine runs on `store`: rows are read from a
    read-only snapshot of their own (`Store.reader`), and every blocking write runs in a
    worker thread, one chunk of rows at a time.

    Cheap to repeat: the line of an image already in the previous file with the same path
    and sha256 is copied as it was (same columns, same caption template), so only new
    images are rendered and have their captions checked. `rebuild=True` renders every row
    and checks every caption (once at the end of a run, say).

    A row is rendered only for an image whose file is there: one deleted under the run is
    left out (a loader would fail on it) with a warning that names `zbatch verify OUT
    --repair`. A disk that refuses the file raises `DiskFull` / `ReadOnlyDisk`, and the
    previous file stays as it was.
    """
    if captions not in CAPTIONS:
        raise ValueError(f"captions {captions!r} is not one of {', '.join(CAPTIONS)}")
    try:
        return await _refresh(store, out, captions=captions, rebuild=rebuild)
    except OSError as exc:  # the disk refused metadata.jsonl or a caption
        translated = disk_error(exc, out, f"writing {METADATA_NAME}")
        if translated is None:
            raise
        raise translated from exc


async def _refresh(store: Store, out: Path, *, captions: str, rebuild: bool) -> int:
    target = OutFolder(out).metadata
    writer = await anyio.to_thread.run_sync(AtomicFile, target)
    previous: PreviousLines | None = None
    rows = 0
    missing = [0]  # rendered rows whose image file is gone: left out
    try:
        async with store.reader() as snapshot:
            names = await snapshot.var_names()
            template = await caption_template(snapshot)
            if not rebuild:
                columns = column_names(names)
                previous = await anyio.to_thread.run_sync(PreviousLines.open, target, columns)
            async with aclosing(snapshot.dataset_images(("downloaded",))) as chunks:
                async for chunk in chunks:
                    write = functools.partial(
                        _write_chunk, writer, chunk, (names, template), out, captions, previous
                    )
                    rows += await anyio.to_thread.run_sync(write, missing)
        await anyio.to_thread.run_sync(writer.commit)
    except BaseException:
        writer.abort()  # close and unlink the temp file: quick, safe while cancelled
        raise
    finally:
        if previous is not None:
            previous.close()
    if missing[0]:
        log.warning(
            "dataset_images_missing",
            count=missing[0],
            left_out_of=METADATA_NAME,
            repair=f"zbatch verify {out} --repair",
        )
    return rows


def _write_chunk(
    writer: AtomicFile,
    chunk: list[DatasetImage],
    columns: Columns,
    out: Path,
    captions: str,
    previous: PreviousLines | None,
    missing: list[int],
) -> int:
    names, template = columns
    lines = []
    for image in chunk:
        if image.path is None:
            continue
        kept = previous.take(image.path, image.sha256) if previous is not None else None
        if (
            kept is not None
            and previous is not None
            and previous.same_captions(kept, image, columns)
        ):
            lines.append(kept)
            continue
        if not (out / image.path).is_file():  # deleted under the run: `verify --repair`
            missing[0] += 1
            continue
        row = metadata_row(image, names, template)
        lines.append(_LINE_JSON(flat_row(row)) + "\n")
        if captions == "txt":
            write_caption(caption_path(out, image.path), row["text"])
    writer.text().write("".join(lines))
    return len(lines)


class PreviousLines:
    """The metadata.jsonl being replaced, read in step with the new rows (both by path).

    Holds one line at a time, so a refresh's memory stays flat however large the file.
    """

    _PREFIX = '{"file_name":"'

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle
        self._line = ""
        self._path: str | None = None
        self._same_captions: bool | None = None  # None: not checked yet
        self._advance()

    @classmethod
    def open(cls, path: Path, columns: Sequence[str]) -> PreviousLines | None:
        """The previous file, or None when there is none or its columns differ."""
        try:
            handle = path.open(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            first = json.loads(handle.readline() or "null")
        except ValueError:
            first = None
        if not isinstance(first, dict) or list(first) != list(columns):
            handle.close()
            return None
        handle.seek(0)
        return cls(handle)

    def _advance(self) -> None:
        self._line = self._handle.readline()
        if not self._line:
            self._path = None
        elif self._line.startswith(self._PREFIX):
            start = len(self._PREFIX)
            self._path = self._line[start : self._line.find('"', start)]
        else:
            self._path = ""  # sorts first: skipped

    def take(self, path: str, sha256: str | None) -> str | None:
        """The previous line of the image at `path`, if it had the same sha256; else None."""
        while self._path is not None and self._path < path:
            self._advance()  # an image no longer downloaded
        if self._path != path:
            return None
        line = self._line
        self._advance()
        if sha256 and f'"sha256":"{sha256}"' in line and line.endswith("\n"):
            return line
        return None

    def same_captions(self, line: str, image: DatasetImage, columns: Columns) -> bool:
        """Whether the previous file's captions are the current caption template's: checked
        once, on the first line kept (one template makes every row's caption), so a changed
        template renders every row and writes every caption again."""
        if self._same_captions is None:
            names, template = columns
            now = metadata_row(image, names, template)["text"]
            self._same_captions = json.loads(line).get("text") == now
        return self._same_captions

    def close(self) -> None:
        self._handle.close()


def write_caption(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds exactly that; True when written.

    Atomic, so a trainer never reads half a caption, but not durable (no fsync): a caption
    is derived from the record, and one a power cut damaged differs from its prompt, so the
    next refresh writes it again.
    """
    data = text.encode()
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    with AtomicFile(path, durable=False) as file:
        file.write(data)
    return True


@dataclass(frozen=True)
class RecordAt:
    """Where a command finds a batch's record: the PostgreSQL database `url` (`--store`,
    `ZBATCH_STORE`), else OUT/batch.sqlite. The files (images, metadata.jsonl, gallery) are
    in OUT either way. `name` is the manifest's batch name when OUT was given as a manifest:
    a database holding another batch is refused rather than read. Kept out of repr: the URL
    may hold a password."""

    url: str | None = field(default=None, repr=False)
    name: str | None = None

    def shown(self, out: Path) -> str:
        """Where the record is, as a message may show it (no password)."""
        return redact(self.url) if self.url else str(OutFolder(out).db)


HERE = RecordAt()


async def open_record(out: Path, at: RecordAt = HERE, *, read_only: bool = True) -> Store:
    """Open the batch's record (`at`), read-only (safe during a run, no lock) unless
    `read_only` is False (the batch lock taken, as `retry`, `cancel`, `verify --repair` do).
    NotABatch when there is none: no OUT/batch.sqlite, a database with no zbatch schema, or
    (`at.name`) one holding another batch. An unreachable database is BatchUnusable."""
    from runner.errors import BatchUnusable, NotABatch

    if at.url is None:
        db = await anyio.to_thread.run_sync(OutFolder(out).existing_db)
        if not read_only:
            return await Store.open(db)
        try:
            return await Store.open(db, read_only=True)
        except StoreError as exc:
            raise NotABatch(str(exc)) from exc
    try:
        store = await open_store(at.url, read_only=read_only, create=False)
    except BatchUnusable:
        raise
    except StoreError as exc:  # no zbatch schema, or an older one to migrate
        raise NotABatch(str(exc)) from None
    if at.name is not None:
        async with _closing_on_error(store):
            await _check_name(store, at)
    return store


@asynccontextmanager
async def _closing_on_error(store: Store) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        await store.close()
        raise


async def _check_name(store: Store, at: RecordAt) -> None:
    from runner.errors import NotABatch

    shown = redact(at.url or "")
    try:
        recorded = (await store.batch_info()).name
    except StoreError as exc:
        raise NotABatch(f"{shown}: {exc}") from None
    if recorded != at.name:
        raise NotABatch(
            f"{shown} holds the batch {recorded!r}, not the manifest's {at.name!r}"
            " (a database holds one batch: give the URL of the manifest's)"
        )


@asynccontextmanager
async def read_batch(out: Path, at: RecordAt = HERE) -> AsyncIterator[tuple[Store, BatchInfo]]:
    """The batch at `at` (OUT/batch.sqlite by default) opened read-only, with its batch row;
    NotABatch when there is no batch, or a run stopped before it recorded one."""
    from runner.errors import NotABatch

    async with await open_record(out, at) as store:
        try:
            info = await store.batch_info()
        except StoreError as exc:
            raise NotABatch(f"{at.shown(out)}: {exc}") from exc
        yield store, info


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
