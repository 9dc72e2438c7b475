"""What makes downloaded bytes count as the image that was asked for.

`check_image` is the one gate: the requested format and exact size read from the header
before a pixel is decoded (so a decompression bomb is refused unopened), then a full decode
within the byte limit (`verify_image`). Blocking by design (Pillow decodes the whole image):
async callers run these through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

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
    any pixel is decoded. Then `verify_image` decodes every byte. Raises `InvalidImage`.
    Blocking: run it through `anyio.to_thread.run_sync`.
    """
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    expected = PILLOW_FORMATS.get(output_format, output_format)
    try:
        with Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS.values())) as img:
            got_format, (got_w, got_h) = img.format, img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"a decompression bomb, refused undecoded: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"bytes are not a JPEG, PNG or WebP image: {exc}") from exc
    if got_format != expected:
        raise InvalidImage(f"image is {got_format}, expected {expected}")
    if (got_w, got_h) != (width, height):
        raise InvalidImage(f"image is {got_w}x{got_h}, expected {width}x{height} (not decoded)")
    return verify_image(data, width=width, height=height, max_bytes=max_bytes)


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
