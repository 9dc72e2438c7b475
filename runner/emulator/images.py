"""Deterministic stand-in images for the emulator, rendered with Pillow.

``render_image`` turns (prompt, seed, index, size, format) into bytes. The same arguments
always give byte-identical output; a different prompt, seed or index gives a visibly
different picture: a two-colour gradient (direction and colours from a SHA-256 of the
arguments) with a few filled shapes on it. Encoders run with fixed settings and no
metadata: JPEG quality 85 with 4:2:0 subsampling and no EXIF, PNG at compression level 1
without time or text chunks, lossy WebP quality 80 at method 0 (its fastest). A 2048² image
renders in a small fraction of a second.

``metadata`` (the step input's ``imageMetadata``: "External metadata that will be stored with
the image") does not change the pixels; it is stored in the file as the EXIF ``UserComment``
(tag 0x9286 in the Exif IFD, ``UNICODE\0`` then UTF-16BE text: where A1111-style tools and
Civitai's own image pages put generation text), in every format: JPEG APP1, PNG eXIf, WebP
EXIF. ``stored_metadata(data)`` reads it back.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES_PER_IMAGE = 4
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\0"


@dataclass(frozen=True)
class ImageFormat:
    """How one ``outputFormat`` value is encoded, served and named."""

    pillow_name: str
    content_type: str
    extension: str


FORMATS: dict[str, ImageFormat] = {
    "jpeg": ImageFormat("JPEG", "image/jpeg", "jpeg"),
    "png": ImageFormat("PNG", "image/png", "png"),
    "webP": ImageFormat("WEBP", "image/webp", "webp"),
}


def _format(fmt: str) -> ImageFormat:
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def content_type(fmt: str) -> str:
    """The Content-Type served for ``fmt`` (``jpeg``, ``png`` or ``webP``)."""
    return _format(fmt).content_type


def extension(fmt: str) -> str:
    """The file extension, without a dot, for ``fmt`` (``jpeg``, ``png`` or ``webp``)."""
    return _format(fmt).extension


def _entropy(prompt: str, seed: int, index: int, salt: str = "") -> Iterator[int]:
    """An endless, deterministic stream of bytes derived from the arguments."""
    key = f"{seed}\x00{index}\x00{prompt}".encode()
    if salt:
        key += b"\x00" + salt.encode()
    counter = 0
    while True:
        yield from hashlib.sha256(key + counter.to_bytes(8, "big")).digest()
        counter += 1


def _colour(stream: Iterator[int]) -> tuple[int, int, int]:
    return (next(stream), next(stream), next(stream))


def _gradient(stream: Iterator[int], width: int, height: int) -> Image.Image:
    start, end = _colour(stream), _colour(stream)
    mask = Image.linear_gradient("L") if next(stream) % 2 else Image.radial_gradient("L")
    mask = mask.rotate(next(stream) % 4 * 90).resize((width, height), Image.Resampling.BILINEAR)
    return Image.composite(
        Image.new("RGB", (width, height), start), Image.new("RGB", (width, height), end), mask
    )


def _draw_shapes(picture: Image.Image, stream: Iterator[int]) -> None:
    draw = ImageDraw.Draw(picture)
    width, height = picture.size
    for _ in range(SHAPES_PER_IMAGE):
        left, top = next(stream) * width // 256, next(stream) * height // 256
        size_px = max(2, (32 + next(stream)) * min(width, height) // 512)
        box = (left, top, left + size_px, top + size_px)
        if next(stream) % 2:
            draw.ellipse(box, fill=_colour(stream))
        else:
            draw.rectangle(box, fill=_colour(stream))


def _exif(metadata: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = UNICODE_PREFIX + metadata.encode("utf-16-be")
    return exif.tobytes()


def stored_metadata(data: bytes) -> str | None:
    """The ``imageMetadata`` stored in an image rendered here, or None when it has none."""
    with Image.open(io.BytesIO(data)) as picture:
        comment = picture.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not isinstance(comment, bytes) or not comment.startswith(UNICODE_PREFIX):
        return None
    return comment.removeprefix(UNICODE_PREFIX).decode("utf-16-be")


def render_image(
    *,
    prompt: str,
    seed: int,
    index: int,
    width: int,
    height: int,
    fmt: str,
    salt: str = "",
    metadata: str | None = None,
) -> bytes:
    """The image for one output of a step: exactly ``width`` × ``height``, encoded as ``fmt``.

    ``salt`` carries the request's other inputs (model, steps, cfgScale, sampler, LoRAs...):
    as on the real service, the same prompt and seed on another model is another picture.
    ``metadata`` is stored in the file (EXIF UserComment), not drawn.
    """
    encoding = _format(fmt)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    stream = _entropy(prompt, seed, index, salt)
    picture = _gradient(stream, width, height)
    _draw_shapes(picture, stream)
    out = io.BytesIO()
    extra = {} if metadata is None else {"exif": _exif(metadata)}
    if encoding.pillow_name == "JPEG":
        picture.save(out, "JPEG", quality=85, subsampling=2, optimize=False, **extra)
    elif encoding.pillow_name == "PNG":
        picture.save(out, "PNG", compress_level=1, **extra)
    else:
        picture.save(out, "WEBP", quality=80, method=0, **extra)
    return out.getvalue()
