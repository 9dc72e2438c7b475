"""Prompt templates (``{name}`` variables) and prompt sources (text, CSV and JSONL files).

**Templates.** ``{name}`` is a variable (``name``: a letter or ``_``, then letters, digits
or ``_``); ``{{`` and ``}}`` are literal braces; any other brace is an error. Every prompt
is a template, inline or read from a file, so a literal brace is always written doubled.
``compile_template`` parses once; ``render`` joins the parts for a cell (fast: no regex).

**Sources.** ``read_source`` reads one ``{file: …}``, ``{csv: …, column: …}`` or
``{jsonl: …, field: …}`` source as ``(line number, text)`` pairs, skipping blank values and,
in text files, lines starting with ``#``. Files are UTF-8 text of at most ``MAX_SOURCE_BYTES``
(a BOM is allowed; control characters mean a binary file and are refused; see
``runner.manifest._textfile``). This is the only module of the manifest pipeline that opens files
besides the manifest itself, and only inside the manifest's folder (``source_path``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.contract import shown, suggestion
from runner.manifest import _textfile as textfile
from runner.manifest._yaml import SURROGATE, lone_surrogate_message

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
SOURCE_KINDS: Mapping[str, str | None] = {"file": None, "csv": "column", "jsonl": "field"}
MAX_SOURCE_BYTES = 64 * 2**20  # ~300,000 long prompts; the size is checked before reading


class TemplateError(ValueError):
    """A prompt's braces do not form a template; the message says where and what to write."""


@dataclass(frozen=True)
class Var:
    """A template variable inside a compiled template."""

    name: str


Template = tuple[str | Var, ...]


def compile_template(text: str) -> Template:
    """``text`` as literal parts and ``Var``s; raises ``TemplateError`` for a stray brace."""
    parts: list[str | Var] = []
    literal: list[str] = []
    position = 0
    for match in BRACES.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        token = match[0]
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match[1] is not None and NAME.match(match[1]):
            parts.append("".join(literal))
            literal = []
            parts.append(Var(match[1]))
        else:
            raise TemplateError(_brace_problem(token, match.start()))
    literal.append(text[position:])
    parts.append("".join(literal))
    return tuple(part for part in parts if part != "")


def _brace_problem(token: str, index: int) -> str:
    where = f"at character {index + 1}"
    if len(token) == 1:
        double = token * 2
        return f"unmatched {token!r} {where}; write {double} for a literal brace"
    return (
        f"{token!r} {where} is not a template variable (a name of letters, digits and _);"
        " write {{ and }} for literal braces"
    )


def template_names(template: Template) -> tuple[str, ...]:
    """The variable names ``template`` uses, in first-use order."""
    return tuple(dict.fromkeys(part.name for part in template if isinstance(part, Var)))


def render(template: Template, values: Mapping[str, str]) -> str:
    """The template with each variable replaced by its value (``values`` must have them all)."""
    return "".join(part if isinstance(part, str) else values[part.name] for part in template)


class SourceError(Exception):
    """A prompt source cannot be read; ``line``/``column`` are 1-based in the source, or 0."""

    def __init__(self, message: str, line: int = 0, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def source_path(base_dir: Path, name: str) -> Path:
    """``name`` resolved under ``base_dir``; raises ``SourceError`` if it leaves the folder."""
    if "\0" in name:
        raise SourceError(f"{shown(name)} holds a NUL character (allowed: a file name)")
    try:
        base = base_dir.resolve()
        candidate = (base / name).resolve()
    except RuntimeError:  # Python 3.11, 3.12: a loop of symbolic links
        raise SourceError(f"{shown(name)} cannot be resolved (a loop of symbolic links)") from None
    except OSError as exc:
        raise SourceError(f"{shown(name)} cannot be resolved ({exc})") from None
    if candidate.is_symlink():  # Python 3.13 resolves a loop to a link it cannot follow
        raise SourceError(f"{shown(name)} cannot be resolved (a loop of symbolic links)")
    if Path(name).is_absolute() or not candidate.is_relative_to(base):
        raise SourceError(
            f"{shown(name)} leaves the manifest's folder (allowed: a path inside {base})"
        )
    return candidate


def read_source(path: Path, kind: str, column: str | None) -> Iterator[tuple[int, str]]:
    """The prompts of one source as ``(line, text)``; raises ``SourceError`` on bad content."""
    text = _read_text(path)
    if kind == "file":
        yield from _text_lines(text)
    elif kind == "csv":
        assert column is not None
        yield from _csv_column(text, column)
    else:
        assert column is not None
        yield from _jsonl_field(text, column)


def _read_text(path: Path) -> str:
    allowed = "a file inside the manifest's folder"
    try:
        data = textfile.read_bytes(path, max_bytes=MAX_SOURCE_BYTES, allowed=allowed)
        return textfile.decode_text(data)
    except textfile.TextFileError as exc:
        raise SourceError(exc.message, exc.line, exc.column or 1) from None


def _text_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _csv_column(text: str, column: str) -> Iterator[tuple[int, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise SourceError(f"is not valid CSV ({exc})", reader.line_num) from None
    if column not in header:
        hint = suggestion(column, list(header))
        listed = ", ".join(header) if header else "none: the file is empty"
        raise SourceError(f"has no column {column!r}{hint} (columns: {listed})", 1)
    try:
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                yield reader.line_num, value
    except csv.Error as exc:
        raise SourceError(f"is not valid CSV ({exc})", reader.line_num) from None


_JSON_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)


def _lone_escape_column(line: str) -> int:
    """The 1-based column of the first ``\\uXXXX`` escape in a JSON line that writes a lone
    surrogate (a high one not followed by a low one, or a low one on its own); 1 if none."""
    escapes = list(_JSON_ESCAPE.finditer(line))
    index = 0
    while index < len(escapes):
        match = escapes[index]
        code = int(match[1][1:], 16) if len(match[1]) == 5 else 0
        following = escapes[index + 1] if index + 1 < len(escapes) else None
        if 0xD800 <= code <= 0xDBFF and following is not None and following.start() == match.end():
            low = int(following[1][1:], 16) if len(following[1]) == 5 else 0
            if 0xDC00 <= low <= 0xDFFF:
                index += 2
                continue
        if 0xD800 <= code <= 0xDFFF:
            return match.start() + 1
        index += 1
    return 1


def _jsonl_field(text: str, field: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"is not JSON ({exc.msg})", number, exc.colno) from None
        except RecursionError:  # [[[[… json recurses per level
            raise SourceError("is not usable JSON (nested too deeply)", number) from None
        except ValueError as exc:  # a number of more than 4,300 digits
            raise SourceError(f"is not usable JSON ({exc})", number) from None
        if not isinstance(record, dict) or field not in record:
            keys = ", ".join(list(record)[:20]) if isinstance(record, dict) else "not an object"
            raise SourceError(f"has no field {field!r} (keys: {keys})", number)
        value = record[field]
        if not isinstance(value, str):
            raise SourceError(f"field {field!r} is {shown(value)}, not text", number)
        if SURROGATE.search(value):
            message = f"field {field!r}: {lone_surrogate_message(value)}"
            raise SourceError(message, number, _lone_escape_column(line))
        if value.strip():
            yield number, value.strip()
