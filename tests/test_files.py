"""Atomic writes leave the old file or the whole new one; verification rejects bad images."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

import runner.disk._atomic
from runner.disk._atomic import (
    AtomicFile,
    atomic_write_bytes,
    atomic_write_hashed,
    remove_stray_temps,
    sweep_batch_temps,
)
from runner.disk._out_folder import image_path
from runner.engine._images import InvalidImage, verify_image


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_atomic_write_creates_parents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """The file holds exactly the bytes written and no temporary file remains beside it."""
    target = tmp_path / "a" / "b" / "img.jpeg"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.jpeg"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path: Path) -> None:
    """Files get 0o666 less the process umask like any program's output, not mkstemp's 0o600."""
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 3 * 256 * 1024 + 7])
def test_a_hashed_write_returns_the_sha256_of_the_bytes_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Hashed slice by slice as written (each slice through the write boundary once), the
    digest is the whole file's; the file is whole and no temp file remains."""
    data = bytes(n * 7 % 251 for n in range(size))
    written: list[int] = []
    real_write_all = runner.disk._atomic.write_all

    def counting_write_all(fd: int, piece: bytes | memoryview) -> None:
        written.append(len(piece))
        real_write_all(fd, piece)

    monkeypatch.setattr(runner.disk._atomic, "write_all", counting_write_all)
    target = tmp_path / "images" / "ab" / "x.jpg"
    assert atomic_write_hashed(target, data) == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert sum(written) == size
    assert all(n <= 256 * 1024 for n in written)
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]


def test_failed_write_keeps_old_content_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before the rename leaves the previous file untouched and no temp behind."""
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_verify_accepts_image_of_requested_size() -> None:
    data = _jpeg(64, 48)
    info = verify_image(data, width=64, height=48)
    assert (info.width, info.height, info.format, info.size_bytes) == (64, 48, "jpeg", len(data))
    assert len(info.sha256) == 64


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[: len(b) // 2], "do not decode"),
        (lambda b: b[:20] + bytes(x ^ 0xFF for x in b[20:200]) + b[200:], "do not decode"),
        (lambda b: b"not an image at all", "do not decode"),
    ],
    ids=["truncated", "corrupt", "garbage"],
)
def test_verify_rejects_damaged_bytes(mangle, message) -> None:
    with pytest.raises(InvalidImage, match=message):
        verify_image(mangle(_jpeg(64, 64)), width=64, height=64)


def test_verify_rejects_wrong_size_and_oversize() -> None:
    with pytest.raises(InvalidImage, match="is 64x64, expected 128x64"):
        verify_image(_jpeg(64, 64), width=128, height=64)
    with pytest.raises(InvalidImage, match="over the limit of 10"):
        verify_image(_jpeg(64, 64), width=64, height=64, max_bytes=10)


def test_stray_temp_files_of_a_crash_are_swept(tmp_path: Path) -> None:
    """Only the temp names atomic writes make are removed; images stay."""
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / ".x_0.jpg.k2j3.tmp").write_bytes(b"half")
    (tmp_path / "ab" / "x_0.jpg").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    assert remove_stray_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ab", "notes.tmp", "x_0.jpg"]


def test_image_path_comes_from_key_and_index_only() -> None:
    assert image_path("ab" * 16, 3, "jpeg").as_posix() == f"images/ab/{'ab' * 16}_3.jpg"
    assert image_path("0f" * 16, 0, "webP").suffix == ".webp"
    for bad_key in ["../etc", "AB" * 16, "ab/cd" * 4, ""]:
        with pytest.raises(ValueError, match="is not 8-64 lowercase hex"):
            image_path(bad_key, 0, "jpeg")
    with pytest.raises(ValueError, match="is not one of jpeg, png, webP"):
        image_path("ab" * 16, 0, "gif")


def test_a_killed_runs_temp_files_are_swept_but_not_an_exports(tmp_path: Path) -> None:
    (tmp_path / "images" / "ab").mkdir(parents=True)
    (tmp_path / "export").mkdir()
    (tmp_path / "images" / "ab" / ".x_0.jpg.k2.tmp").write_bytes(b"")
    (tmp_path / ".metadata.jsonl.9f.tmp").write_bytes(b"")
    (tmp_path / "export" / ".dataset.jsonl.77.tmp").write_bytes(b"")  # a live export's
    assert sweep_batch_temps(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*.tmp")] == [".dataset.jsonl.77.tmp"]


def test_atomic_file_streams_text_and_renames_on_commit(tmp_path: Path) -> None:
    """Until commit the target keeps its old content; after it, the whole new text."""
    target = tmp_path / "metadata.jsonl"
    target.write_text("old\n")
    with AtomicFile(target) as file:
        file.text().write("a\n")
        file.text().write("b\n")
        assert target.read_text() == "old\n"
        assert file.tmp.parent == tmp_path
        assert file.tmp.name.startswith(".metadata.jsonl.")
    assert target.read_text() == "a\nb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.jsonl"]


def test_atomic_file_aborts_on_an_exception(tmp_path: Path) -> None:
    """An exception inside the block leaves the target as it was and removes the temp file."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def write_then_fail() -> None:
        with AtomicFile(target) as file:
            file.write(b"new")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_then_fail()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_atomic_file_released_to_a_writer_that_opens_by_name(tmp_path: Path) -> None:
    """A writer that opens `tmp` itself (Parquet, tar) commits through the same rename."""
    target = tmp_path / "shard.tar"
    file = AtomicFile(target, durable=False)
    file.release().write_bytes(b"written by name")
    with pytest.raises(ValueError, match="released"):
        file.write(b"too late")
    file.commit()
    assert target.read_bytes() == b"written by name"
    file.abort()  # after a commit: nothing to remove, the target stays
    assert target.read_bytes() == b"written by name"
