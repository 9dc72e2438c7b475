"""`zbatch export --format folder`: the images and their captions side by side, for trainers.

One folder (`--to`, outside OUT: `_export.check_folder_target`) holds every downloaded image
as `<cell key>_<index>.<ext>` (the name it has under `OUT/images/`: stable across exports
and unique in the batch), its caption `<cell key>_<index>.txt` (one line, the row's `text`:
the batch's caption template filled in, by default the prompt), and `metadata.jsonl` (the
rows, `file_name` relative to the folder, with the `text` column). What each trainer takes:

* kohya-ss (DreamBooth-style `train_data_dir`), OneTrainer: a non-recursive glob of image
  files in a folder; the caption is the file of the same stem with `.txt` (its first line).
* diffusers `train_text_to_image` / `datasets.load_dataset("imagefolder")`: the images and
  `metadata.jsonl`, whose `text` column is the default caption column.

With `subsets` (`var_NAME`, `model` or a request field: `_where.input_field`) or `repeats`,
the images go into kohya-ss's subset folders `<repeats>_<value>` (one per value of the
field; without a field, one named after the batch) inside the folder, each a flat folder as
above; `metadata.jsonl` stays at the top and names them (`10_fox/<key>_0.jpg`).

Every file is written under a temp name and renamed (`disk.AtomicFile`); an image already
there with the same sha256 is left as it is, so exporting again copies only what changed.
Files of an earlier export (the names this module writes) that this one does not write
are removed, so the folder is the export, not its union with the last one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.dataset._metadata import Columns, flat_row, metadata_row
from runner.dataset._where import allowed_fields, field_value, input_field
from runner.disk import AtomicFile, fsync_dir
from runner.errors import ExportError
from runner.store import DatasetImage

METADATA = "metadata.jsonl"
# The files this export writes: `<32 hex>_<index>.<ext>`, and the subset folders.
_OWN_FILE = re.compile(r"[0-9a-f]{32}_\d+\.(jpg|jpeg|png|webp|txt)")
_SUBSET_FOLDER = re.compile(r"\d+_.+")
_UNSAFE = re.compile(r"[^\w .+-]+")
MAX_SUBSET_NAME = 100


@dataclass(frozen=True)
class Subsets:
    """kohya-ss subset folders: `<repeats>_<value of field>` (or `<repeats>_<batch>`)."""

    field: str | None
    repeats: int

    @classmethod
    def of(cls, field: str | None, repeats: int | None) -> Subsets | None:
        """The subsets asked for by `--subsets` (a column or manifest field name: `var_style`,
        `vars.style`, `model`, `steps`) and `--repeats`; None for one flat folder. Raises
        ExportError for a field that is not one, or a repeat count below 1."""
        if field is None and repeats is None:
            return None
        if repeats is not None and repeats < 1:
            raise ExportError(f"--repeats must be at least 1, not {repeats}")
        if field is not None:
            known = input_field(field)
            if known is None:
                raise ExportError(
                    f"--subsets: {field!r} is not a field (allowed: {allowed_fields()})"
                )
            field = known
        return cls(field, repeats or 1)

    def folder(self, image: DatasetImage, batch: str) -> str:
        """The subset folder of `image`: `<repeats>_<value>`, the value made a safe name."""
        if self.field is None:
            value: Any = batch
        else:
            value = field_value(self.field, image.model, image.request, image.vars)
        return f"{self.repeats}_{subset_name(value)}"


def subset_name(value: object) -> str:
    """`value` as one safe folder name: whitespace runs one space, characters other than
    letters, digits, space, `.`, `+`, `-` and `_` replaced by `_`, at most 100 characters,
    never empty or a dot name."""
    text = "" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)
    text = _UNSAFE.sub("_", " ".join(text.split()))[:MAX_SUBSET_NAME].strip()
    return text if text.strip(".") else "_"


class FolderWriter:
    """Writes the folder export one chunk of images at a time (in a worker thread)."""

    def __init__(
        self, folder: Path, columns: Columns, out: Path, subsets: Subsets | None, batch: str
    ) -> None:
        self.folder = folder
        self.names, self.template = columns
        self.out = out
        self.subsets = subsets
        self.batch = batch
        folder.mkdir(parents=True, exist_ok=True)
        self.metadata = AtomicFile(folder / METADATA)
        self.written: set[str] = set()  # paths relative to the folder
        self.rows = 0
        self.missing = 0

    def write(self, images: list[DatasetImage]) -> None:
        lines = []
        for image in images:
            if image.path is None:
                continue
            source = self.out / image.path
            if not source.is_file():
                self.missing += 1
                continue
            sub = self.subsets.folder(image, self.batch) if self.subsets else ""
            name = Path(sub, Path(image.path).name).as_posix()
            row = metadata_row(image, self.names, self.template)
            _copy(source, self.folder / name, image.sha256)
            caption = str(Path(name).with_suffix(".txt"))
            _write_text(self.folder / caption, row["text"])
            self.written.update((name, caption))
            line = flat_row({**row, "file_name": name})
            lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
            self.rows += 1
        if lines:
            self.metadata.text().write("\n".join(lines) + "\n")

    def commit(self) -> tuple[Path, int, int, int]:
        """Put metadata.jsonl in place, remove what an earlier export left; return the folder,
        the images written, the subset folders and the images missing from disk."""
        self.metadata.commit()
        self._remove_stale()
        folders = {Path(name).parent for name in self.written} - {Path(".")}
        for sub in folders:
            fsync_dir(self.folder / sub)
        fsync_dir(self.folder)
        return self.folder, self.rows, len(folders), self.missing

    def abort(self) -> None:
        self.metadata.abort()

    def _remove_stale(self) -> None:
        for path in self.folder.iterdir():
            if path.is_dir() and not path.is_symlink() and _SUBSET_FOLDER.fullmatch(path.name):
                for inner in path.iterdir():
                    self._remove_if_stale(inner)
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                self._remove_if_stale(path)

    def _remove_if_stale(self, path: Path) -> None:
        name = path.relative_to(self.folder).as_posix()
        if _OWN_FILE.fullmatch(path.name) and name not in self.written and path.is_file():
            path.unlink()


def _copy(source: Path, target: Path, sha256: str | None) -> None:
    """Copy `source` to `target` atomically, unless `target` already holds `sha256`."""
    if sha256 and target.is_file() and not target.is_symlink():
        with target.open("rb") as held:
            if hashlib.file_digest(held, "sha256").hexdigest() == sha256:
                return
    target.parent.mkdir(exist_ok=True)
    # Not fsynced one by one (the folder is fsynced at the end): every file is derived from
    # OUT, and an export cut short is made again by exporting again.
    with AtomicFile(target, durable=False) as file, source.open("rb") as held:
        shutil.copyfileobj(held, file)


def _write_text(target: Path, text: str) -> None:
    data = text.encode()
    try:
        if target.read_bytes() == data:
            return
    except (FileNotFoundError, IsADirectoryError):
        pass
    with AtomicFile(target, durable=False) as file:
        file.write(data)
