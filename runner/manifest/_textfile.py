"""Reading the text files a user hands zbatch (manifests, prompt files): size, UTF-8, no binary.

``read_bytes(path, max_bytes=…)`` refuses anything but a regular file and checks the size
before reading; it reads at most ``max_bytes + 1`` bytes, so a file that grows (or lies
about its size) cannot make it read forever. ``decode_text(data)`` accepts UTF-8, skips a
UTF-8 byte-order mark silently (Windows editors write one), names UTF-16 and UTF-32 by
their BOM, and refuses control characters (NUL and the rest, except tab, CR and LF): such a
file is binary, not text. Every problem is a ``TextFileError`` whose message completes a
sentence about the file (``'p.txt' is not UTF-8 text …``), with the 1-based line and column
of the offending byte when there is one. Callers add the file's name and the field.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path

# What YAML (and so a prompt) may hold: PyYAML's printable set. Anything else is binary.
NOT_TEXT = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
SAVE_AS_UTF8 = "allowed: UTF-8 text; save the file as UTF-8"


class TextFileError(Exception):
    """A file is not usable text; ``line``/``column`` are 1-based, or 0 when not about a byte."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def size_text(size_bytes: int) -> str:
    """``104857600`` -> ``100 MiB``; small sizes in bytes."""
    if size_bytes < 2**20:
        return f"{size_bytes:,} bytes"
    mib = size_bytes / 2**20
    return f"{mib:.0f} MiB" if mib >= 10 or mib.is_integer() else f"{mib:.1f} MiB"


def read_bytes(path: Path, *, max_bytes: int, allowed: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    ``allowed`` ends the message for a missing file or a folder (``a manifest file``).
    """
    limit = f"(allowed: at most {size_text(max_bytes)})"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TextFileError(f"does not exist (allowed: {allowed})") from None
    except IsADirectoryError:
        raise TextFileError(f"is a folder (allowed: {allowed})") from None
    except OSError as exc:
        raise TextFileError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # an embedded NUL in the name
        raise TextFileError(f"is not a file name (allowed: {allowed})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise TextFileError(f"is a folder (allowed: {allowed})")
        if not stat.S_ISREG(info.st_mode):
            raise TextFileError(f"is not a regular file (allowed: {allowed})")
        if info.st_size > max_bytes:
            raise TextFileError(f"is {size_text(info.st_size)} {limit}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise TextFileError(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise TextFileError(f"is larger than {size_text(max_bytes)} {limit}")
    return data


def decode_text(data: bytes) -> str:
    """``data`` as text: UTF-8, an optional UTF-8 BOM, no control characters."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise TextFileError(f"is {name} text ({SAVE_AS_UTF8})", 1, 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        byte = data[exc.start]
        message = f"is not UTF-8 text (byte 0x{byte:02x}; {SAVE_AS_UTF8})"
        raise TextFileError(message, line, column) from None
    bad = NOT_TEXT.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        code = ord(bad[0])
        message = (
            f"holds the control character U+{code:04X}: it is binary, not text"
            " (allowed: printable characters, tabs and newlines)"
        )
        raise TextFileError(message, line, column)
    return text


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of byte ``offset``."""
    start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8-sig", errors="replace")) + 1
    return line, column
