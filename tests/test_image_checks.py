"""The image check is strict: what a strict decoder rejects, `check_image` rejects (issue 15, 4).

Real files (the emulator's renderer, Pillow's progressive and restart-interval JPEGs) have
bytes flipped or are cut short by hypothesis. The strict references: `djpeg -strict`
(libjpeg-turbo's own tool: every warning, such as "Corrupt JPEG data: premature end of data
segment", is an error, as in Chromium's decoder) for JPEG; `dwebp` (libwebp's) for WebP; for
PNG, libpng's rule for critical chunks, which a CRC makes simple: any changed byte of a chunk
breaks its CRC, so every changed PNG must be refused. .ci/run installs djpeg and dwebp.
"""

from __future__ import annotations

import functools
import hashlib
import io
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runner.disk import atomic_write_hashed
from runner.emulator.content import corrupt
from runner.emulator.images import render_image
from runner.engine import _images, _jpeg
from runner.engine._downloader import _check_then_keep
from runner.engine._images import InvalidImage, check_image, inspect_image

W, H = 96, 64


def _render(fmt: str, seed: int = 7, size: tuple[int, int] = (W, H)) -> bytes:
    w, h = size
    return render_image(prompt="a lighthouse", seed=seed, index=0, width=w, height=h, fmt=fmt)


def _pillow_jpeg(**options: object) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(_render("png"))).convert("RGB").save(out, "JPEG", **options)
    return out.getvalue()


ORIGINALS = {
    "jpeg": [_render("jpeg"), _pillow_jpeg(progressive=True), _pillow_jpeg(restart_marker_rows=1)],
    "png": [_render("png")],
    "webP": [_render("webP")],
}
REFERENCE = {
    "jpeg": ["djpeg", "-strict", "-outfile", "/dev/null"],
    "webP": ["dwebp", "-quiet", "-o", "/dev/null", "--", "-"],
}


def strict_reference_rejects(fmt: str, data: bytes) -> bool:
    if fmt == "png":
        return True  # every chunk has a CRC: a changed byte is always refused
    return subprocess.run(REFERENCE[fmt], input=data, capture_output=True).returncode != 0


def accepted(fmt: str, data: bytes) -> bool:
    try:
        check_image(data, width=W, height=H, output_format=fmt, max_bytes=1 << 20)
    except InvalidImage:
        return False
    return True


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(ORIGINALS)))
    data = bytearray(draw(st.sampled_from(ORIGINALS[fmt])))
    if draw(st.booleans()):
        return fmt, bytes(data[: draw(st.integers(1, len(data) - 1))])
    spots = st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)
    for at in draw(spots):  # distinct bytes: two flips of one byte could cancel out
        data[at] ^= draw(st.integers(1, 255))
    return fmt, bytes(data)


def test_the_originals_pass_the_check_and_the_references() -> None:
    for fmt, files in ORIGINALS.items():
        for data in files:
            assert accepted(fmt, data)
            if fmt in REFERENCE:
                assert not strict_reference_rejects(fmt, data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_every_file_a_strict_decoder_rejects_is_rejected(case: tuple[str, bytes]) -> None:
    fmt, data = case
    if strict_reference_rejects(fmt, data):
        assert not accepted(fmt, data)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_the_emulators_corrupt_blob_is_refused(fmt: str) -> None:
    """The issue's image: Pillow decodes it (lower half shifted); djpeg calls it corrupt."""
    for seed in range(10):
        data = corrupt(_render(fmt, seed, (512, 512)))
        assert strict_reference_rejects(fmt, data)
        with pytest.raises(InvalidImage, match="do not decode|corrupt"):
            check_image(data, width=512, height=512, output_format=fmt, max_bytes=1 << 22)


def test_pillow_alone_would_have_passed_a_damaged_jpeg() -> None:
    """Why the strict check exists: at least one of these decodes in Pillow without error."""
    passed_pillow = 0
    for seed in range(10):
        with Image.open(io.BytesIO(corrupt(_render("jpeg", seed, (512, 512))))) as img:
            try:
                img.load()
                passed_pillow += 1
            except OSError:
                pass
    assert passed_pillow > 0


def test_the_strict_jpeg_check_is_loaded_and_cheap_at_1024() -> None:
    """libturbojpeg is there (.ci/run installs it), and a 1024² check stays cheap (issue 14):
    no dearer than Pillow's own full decode, which it replaces."""
    assert _jpeg.available()
    data = render_image(prompt="p", seed=1, index=0, width=1024, height=1024, fmt="jpeg")

    def best(fn: object) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times)

    def pillow() -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.load()

    strict = best(
        lambda: check_image(data, width=1024, height=1024, output_format="jpeg", max_bytes=1 << 24)
    )
    assert strict < 2 * best(pillow) + 0.005


def test_without_libturbojpeg_the_check_falls_back_to_pillow_and_an_end_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where libturbojpeg is absent (documented as weaker), a JPEG still must decode in Pillow
    and end with its EOI marker; a good one passes."""
    monkeypatch.setattr(_jpeg, "available", lambda: False)
    good = _render("jpeg")
    assert accepted("jpeg", good)
    assert not accepted("jpeg", good[:-2] + b"\0\0")  # the end-of-image marker overwritten
    assert not accepted("jpeg", good[: len(good) // 2])


JPEGS = [*ORIGINALS["jpeg"], _render("jpeg", 3, (256, 192)), _pillow_jpeg(subsampling=0)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(JPEGS), st.data())
def test_the_scaled_strict_decode_judges_every_jpeg_as_the_full_size_one(
    original: bytes, draw: st.DataObject
) -> None:
    """1/8 DCT scaling still entropy-decodes every block: damage the full-size strict decode
    reports, the scaled one reports too, and a whole file passes both (issue 14)."""
    data = bytearray(original)
    if draw.draw(st.booleans()):
        data = data[: draw.draw(st.integers(1, len(data) - 1))]
    else:
        for at in draw.draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data[at] ^= draw.draw(st.integers(1, 255))
    full = _jpeg.strict_jpeg_problem(bytes(data), scale=1)
    scaled = _jpeg.strict_jpeg_problem(bytes(data), scale=8)
    assert (full is None) == (scaled is None), (full, scaled)
    assert _jpeg.strict_jpeg_problem(original, scale=8) is None


def test_a_jpeg_is_read_by_libjpeg_alone_its_size_checked_before_its_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No parse by Pillow for a JPEG libjpeg-turbo reads; a wrong size or a bomb is still
    refused before any data is decoded (a bomb by Pillow, which names it)."""
    opened: list[int] = []
    decoded: list[int] = []
    real_open, real_decode = Image.open, _jpeg.strict_jpeg_problem

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        opened.append(1)
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    def counting_decode(data: bytes, **kwargs: int) -> str | None:
        decoded.append(1)
        return real_decode(data, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(_jpeg, "strict_jpeg_problem", counting_decode)
    good = _render("jpeg")
    assert inspect_image(good, width=W, height=H, output_format="jpeg", max_bytes=1 << 20) == "jpeg"
    assert (opened, decoded) == ([], [1])
    with pytest.raises(InvalidImage, match=rf"image is {W}x{H}, expected 64x64 \(not decoded"):
        check_image(good, width=64, height=64, output_format="jpeg", max_bytes=1 << 20)
    assert (opened, decoded) == ([], [1])
    with pytest.raises(InvalidImage, match="image is PNG, expected JPEG"):
        check_image(_render("png"), width=W, height=H, output_format="jpeg", max_bytes=1 << 20)
    with pytest.raises(InvalidImage, match="bytes are not a JPEG, PNG or WebP"):
        check_image(good[:40], width=W, height=H, output_format="jpeg", max_bytes=1 << 20)
    assert decoded == [1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", W * H // 4)
    with pytest.raises(InvalidImage, match="a decompression bomb, refused undecoded"):
        check_image(good, width=W, height=H, output_format="jpeg", max_bytes=1 << 20)
    assert (len(opened), decoded) == (3, [1])


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webP"])
def test_the_downloaders_check_reads_no_hash_its_write_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """One pass for the hash: the check hashes nothing, the write returns the sha256 of the
    bytes it wrote, and that is what the downloader records."""
    monkeypatch.setattr(_images, "hashlib", SimpleNamespace())  # any hash here would fail
    data = ORIGINALS[fmt][0]
    target = tmp_path / "images" / "ab" / f"x.{fmt}"
    keep = functools.partial(atomic_write_hashed, target)
    info = _check_then_keep(data, keep, width=W, height=H, output_format=fmt, max_bytes=1 << 20)
    assert info.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    assert target.read_bytes() == data
    assert (info.size_bytes, info.width, info.height, info.format) == (len(data), W, H, fmt.lower())
    with pytest.raises(InvalidImage):  # bytes that fail the check are never written
        _check_then_keep(data[:-9], keep, width=W, height=H, output_format=fmt, max_bytes=1 << 20)
