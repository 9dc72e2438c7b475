"""What makes downloaded bytes count as the image that was asked for.

`check_image` is the one gate: the requested format and exact size read from the header
before a pixel is decoded (so a decompression bomb is refused unopened), then a strict full
decode within the byte limit: an image counts only when it decodes without an error *or a
warning*. JPEG: libjpeg-turbo with its warnings as errors (`_jpeg`), since Pillow swallows
them and a file with damaged entropy-coded data ("Corrupt JPEG data: premature end of data
segment") would pass, half grey; where libjpeg-turbo is present it alone reads a JPEG, its
header (the size check) and then its data, with no parse by Pillow besides. PNG: every
chunk's CRC (IDAT's too) through to IEND (`Image.verify`), then a full decode. WebP: the
RIFF sizes must add up to the file, then a full decode. The downloader and `zbatch verify`
use this one check (the downloader as `inspect_image`, the check without the sha256: it
hashes the bytes while writing them).
Blocking by design: async callers run these on a worker thread (`run_whole`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass

import structlog
from PIL import Image

from runner.engine import _jpeg

log = structlog.get_logger(__name__)

# The formats an image may come in: Pillow parses nothing else (its other plugins are
# attack surface we have no use for), and it must be the one the request asked for.
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webP": "WEBP"}

# Pillow *warns* of a bomb between MAX_IMAGE_PIXELS and twice that; as an error, `check_image`
# refuses it like a bigger one, and nothing is printed on the user's terminal.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def check_image(
    data: bytes, *, width: int, height: int, output_format: str, max_bytes: int
) -> VerifiedImage:
    """Refuse bytes that are not the requested image, cheapest checks first.

    The header must name `output_format` and exactly `width` x `height`: a decompression
    bomb (a small file declaring millions of pixels, past Pillow's `MAX_IMAGE_PIXELS` or
    merely past the size asked for) and an image of the wrong size are refused here, before
    any pixel is decoded. Then every byte is decoded strictly. Raises `InvalidImage`.
    Blocking: run it on a worker thread (`run_whole`).
    """
    fmt = inspect_image(
        data, width=width, height=height, output_format=output_format, max_bytes=max_bytes
    )
    return VerifiedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        width=width,
        height=height,
        format=fmt,
    )


def inspect_image(
    data: bytes, *, width: int, height: int, output_format: str, max_bytes: int
) -> str:
    """`check_image` without the sha256 (the downloader hashes the bytes as it writes them).

    Returns the format's name ("jpeg", "png", "webp"). A JPEG goes to libjpeg-turbo alone
    (`_strict_jpeg`: its header read, the size checked, then the strict decode), with no
    parse by Pillow besides; anything else, or a JPEG whose header libjpeg-turbo cannot read
    or which declares more than `MAX_IMAGE_PIXELS`, is opened by Pillow first.
    """
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    expected = PILLOW_FORMATS.get(output_format, output_format)
    if expected == "JPEG" and _strict_jpeg(data, width=width, height=height):
        return "jpeg"
    try:
        img = Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS.values()))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"a decompression bomb, refused undecoded: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"bytes are not a JPEG, PNG or WebP image: {exc}") from exc
    with img:  # opened once: the strict decode below reads the same parsed header
        got_format, (got_w, got_h) = img.format, img.size
        if got_format != expected:
            raise InvalidImage(f"image is {got_format}, expected {expected}")
        if (got_w, got_h) != (width, height):
            raise InvalidImage(f"image is {got_w}x{got_h}, expected {width}x{height} (not decoded)")
        _decoded(img, data)
        return got_format.lower()


def _strict_jpeg(data: bytes, *, width: int, height: int) -> bool:
    """Check a JPEG with libjpeg-turbo alone: True when it passed; raise InvalidImage when it
    failed; False when Pillow's path must judge it (no libturbojpeg, no JPEG header that
    libjpeg-turbo reads, or more pixels than `MAX_IMAGE_PIXELS`: Pillow names the fault)."""
    if not data.startswith(b"\xff\xd8\xff") or not _jpeg.available():
        return False
    size = _jpeg.jpeg_size(data)
    limit = Image.MAX_IMAGE_PIXELS
    if size is None or (limit is not None and size[0] * size[1] > limit):
        return False
    if size != (width, height):
        raise InvalidImage(f"image is {size[0]}x{size[1]}, expected {width}x{height} (not decoded)")
    problem = _jpeg.strict_jpeg_problem(data)
    if problem is not None:
        raise InvalidImage(f"bytes do not decode as an image: {problem}")
    return True


class InvalidImage(ValueError):
    """Downloaded bytes are not the image that was asked for (corrupt, truncated, wrong size)."""


@dataclass(frozen=True)
class VerifiedImage:
    """What verification learned about an image's bytes."""

    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str


def verify_image(
    data: bytes, *, width: int, height: int, max_bytes: int = 64 * 1024 * 1024
) -> VerifiedImage:
    """Check that `data` decodes fully and strictly as an image of exactly `width` x `height`.

    Raises InvalidImage naming what is wrong. Blocking (every byte is decoded): call it
    on a worker thread (`run_whole`) from async code.
    """
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS.values())) as img:
            got_w, got_h = img.size
            if (got_w, got_h) != (width, height):
                raise InvalidImage(f"image is {got_w}x{got_h}, expected {width}x{height}")
            _decoded(img, data)
            fmt = (img.format or "").lower()
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as exc:
        if isinstance(exc, InvalidImage):
            raise
        raise InvalidImage(f"bytes do not decode as an image: {exc}") from exc
    return VerifiedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        width=got_w,
        height=got_h,
        format=fmt,
    )


def _decoded(img: Image.Image, data: bytes) -> None:
    """Decode the opened `img` strictly (`_decode_strictly`); any fault as `InvalidImage`."""
    try:
        _decode_strictly(img, data)
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as exc:
        if isinstance(exc, InvalidImage):
            raise
        raise InvalidImage(f"bytes do not decode as an image: {exc}") from exc


def _decode_strictly(img: Image.Image, data: bytes) -> None:
    """Decode every byte of the opened `img`; raise InvalidImage on any damage a strict decoder
    reports (OSError and friends from Pillow are translated by the caller)."""
    if img.format == "JPEG":
        if _jpeg.available():
            problem = _jpeg.strict_jpeg_problem(data)
            if problem is not None:
                raise InvalidImage(f"bytes do not decode as an image: {problem}")
            return
        _warn_not_strict()
        img.load()
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise InvalidImage(
                "bytes do not decode as an image: JPEG data has no end-of-image marker"
            )
    elif img.format == "PNG":
        _check_png_chunks(data)
        img.load()
    else:
        _check_riff(data)
        img.load()


def _check_png_chunks(data: bytes) -> None:
    """Every chunk's CRC must hold (IDAT's too: Pillow checks none of them), through to IEND,
    which must end the file."""
    at = 8
    while at + 12 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        end = at + 8 + size
        kind = data[at + 4 : at + 8]
        if end + 4 > len(data):
            raise InvalidImage(f"PNG chunk {kind!r} at byte {at} is cut short: truncated")
        if zlib.crc32(data[at + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            raise InvalidImage(f"PNG chunk {kind!r} at byte {at} fails its CRC: corrupt")
        at = end + 4
        if kind == b"IEND":
            if at != len(data):
                raise InvalidImage(f"PNG has {len(data) - at} bytes after IEND")
            return
    raise InvalidImage("PNG ends before its IEND chunk: truncated")


def _check_riff(data: bytes) -> None:
    """A WebP's RIFF size and its chunks' sizes must add up to the file exactly."""
    if len(data) < 12 or int.from_bytes(data[4:8], "little") != len(data) - 8:
        raise InvalidImage(f"WebP RIFF size does not match the file's {len(data)} bytes")
    at = 12
    while at < len(data):
        if at + 8 > len(data):
            raise InvalidImage(f"WebP chunk header cut short at byte {at}")
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        at += 8 + size + (size & 1)
    if at != len(data):
        raise InvalidImage("WebP chunks overrun the file: it is truncated")


@functools.cache
def _warn_not_strict() -> None:
    log.warning(
        "jpeg_check_not_strict",
        detail="libturbojpeg is not installed: damaged JPEG data may pass (docs/reliability.md)",
    )
