"""Where an image lives under OUT, and what makes downloaded bytes count as that image.

Blocking by design (Pillow decodes the whole image): async callers run `verify_image`
through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image

_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webP": "webp"}
_CELL_KEY = re.compile(r"[0-9a-f]{8,64}")


def image_path(cell_key: str, index: int, output_format: str) -> PurePosixPath:
    """Where an image lives under the output folder: `images/<ab>/<cell key>_<index>.<ext>`.

    Made only from our own cell key (hex), the image index and the requested format, never
    from anything the API returned; the two-character folder keeps folders small.
    """
    if not _CELL_KEY.fullmatch(cell_key):
        raise ValueError(f"cell key {cell_key!r} is not 8-64 lowercase hex characters")
    if index < 0:
        raise ValueError(f"image index must be >= 0, not {index}")
    if output_format not in _EXTENSIONS:
        allowed = ", ".join(_EXTENSIONS)
        raise ValueError(f"output format {output_format!r} is not one of {allowed}")
    name = f"{cell_key}_{index}.{_EXTENSIONS[output_format]}"
    return PurePosixPath("images", cell_key[:2], name)


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
    """Check that `data` decodes fully as an image of exactly `width` x `height`.

    Raises InvalidImage naming what is wrong. Blocking (Pillow decodes the whole image):
    call it through `anyio.to_thread.run_sync` from async code.
    """
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every byte: truncation and corruption surface here
            got_w, got_h = img.size
            fmt = (img.format or "").lower()
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidImage(f"bytes do not decode as an image: {exc}") from exc
    if (got_w, got_h) != (width, height):
        raise InvalidImage(f"image is {got_w}x{got_h}, expected {width}x{height}")
    return VerifiedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        width=got_w,
        height=got_h,
        format=fmt,
    )
