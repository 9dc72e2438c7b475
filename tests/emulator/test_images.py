"""Emulator images: deterministic bytes, the requested size and format, distinct per seed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from runner.emulator.images import content_type, extension, render_image

FORMATS = [("jpeg", "JPEG"), ("png", "PNG"), ("webP", "WEBP")]


def _render(
    *,
    prompt: str = "a fox",
    seed: int = 42,
    index: int = 0,
    width: int = 320,
    height: int = 192,
    fmt: str = "png",
) -> bytes:
    return render_image(prompt=prompt, seed=seed, index=index, width=width, height=height, fmt=fmt)


@pytest.mark.parametrize(("fmt", "pillow_format"), FORMATS)
def test_same_arguments_give_the_same_bytes(fmt, pillow_format):
    """Rendering twice yields byte-identical output in every format."""
    assert _render(fmt=fmt) == _render(fmt=fmt)


@pytest.mark.parametrize(("fmt", "pillow_format"), FORMATS)
@pytest.mark.parametrize(("width", "height"), [(64, 64), (320, 192), (1536, 1024)])
def test_output_decodes_at_the_requested_size_and_format(fmt, pillow_format, width, height):
    """Pillow decodes the bytes as the named format at exactly width × height."""
    with Image.open(io.BytesIO(_render(fmt=fmt, width=width, height=height))) as picture:
        assert picture.format == pillow_format
        assert picture.size == (width, height)
        picture.load()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_no_metadata_is_embedded(fmt):
    """No EXIF, no text or time chunks: nothing that could vary between runs."""
    with Image.open(io.BytesIO(_render(fmt=fmt))) as picture:
        assert not picture.getexif()
        assert "exif" not in picture.info
        assert not {key for key in picture.info if str(key).lower() in ("time", "text", "comment")}


@pytest.mark.parametrize("change", [{"seed": 43}, {"index": 1}, {"prompt": "a wolf"}])
def test_different_seed_index_or_prompt_gives_a_different_picture(change):
    """Changing any identity argument changes the decoded pixels, not just the bytes."""
    with Image.open(io.BytesIO(_render())) as one, Image.open(io.BytesIO(_render(**change))) as two:
        difference = sum(abs(a - b) for a, b in zip(one.tobytes(), two.tobytes(), strict=True))
        assert difference / len(one.tobytes()) > 8


def test_seeds_give_many_distinct_images():
    """Twenty seeds, twenty different images."""
    assert len({_render(seed=seed, width=64, height=64) for seed in range(20)}) == 20


def test_largest_image_renders_at_full_size():
    """The largest size the API allows renders in every format at exactly 2048x2048.

    How fast it renders is a figure for `make bench`, not a test assertion.
    """
    for fmt, _ in FORMATS:
        with Image.open(io.BytesIO(_render(fmt=fmt, width=2048, height=2048))) as img:
            assert img.size == (2048, 2048)


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [("jpeg", "image/jpeg", "jpeg"), ("png", "image/png", "png"), ("webP", "image/webp", "webp")],
)
def test_content_type_and_extension(fmt, mime, ext):
    """Each outputFormat maps to its MIME type and file extension."""
    assert (content_type(fmt), extension(fmt)) == (mime, ext)


def test_unknown_format_names_the_allowed_ones():
    """A format outside the enum is refused with the allowed list."""
    with pytest.raises(ValueError, match="allowed: jpeg, png, webP"):
        _render(fmt="gif")


def test_other_inputs_make_another_picture():
    """The same prompt and seed on another model (or steps, LoRAs...) is another image."""
    one = render_image(prompt="p", seed=1, index=0, width=64, height=64, fmt="png", salt="turbo")
    two = render_image(prompt="p", seed=1, index=0, width=64, height=64, fmt="png", salt="base")
    assert one != two
    assert one == render_image(
        prompt="p", seed=1, index=0, width=64, height=64, fmt="png", salt="turbo"
    )
