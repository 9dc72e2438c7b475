"""What one downloaded image costs, step by step: `python -m bench.image_micro`.

The emulator's own JPEGs (`render_image`, quality 85, 4:2:0) at 64x64 and 1024x1024, each
step of the downloader's path timed alone, `--images` times, in this thread: CPU
(`time.thread_time`, so the machine's other load does not count) and wall (`perf_counter`,
which does: fsync waits on the disk). Steps: the header read (`Image.open`), the strict
decode (libjpeg-turbo, full size and with 1/8 DCT scaling), sha256, the write of a new temp
file (open + write + close), its fsync, the rename, the folder's fsync. Prints a markdown
table of microseconds per image (docs/performance.md, "An image, step by step").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from runner.emulator.images import render_image
from runner.engine import _jpeg


def timed(step: Callable[[int], object], count: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall per call of `step(i)`, over `count` calls."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for i in range(count):
        step(i)
    return (
        (time.thread_time() - cpu) / count * 1e6,
        (time.perf_counter() - wall) / count * 1e6,
    )


def steps(data: bytes, folder: Path) -> dict[str, Callable[[int], object]]:
    """Each step of an image's path, as a callable of the image's number."""
    fds: dict[int, int] = {}

    def header(_: int) -> object:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            return img.size

    def write(i: int) -> None:
        fd = os.open(folder / f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, data)
        fds[i] = fd

    def fsync_file(i: int) -> None:
        os.fsync(fds[i])
        os.close(fds.pop(i))

    def rename(i: int) -> None:
        os.replace(folder / f".{i}.tmp", folder / f"{i}.jpg")

    def fsync_folder(_: int) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return {
        "header read (Image.open)": header,
        "strict decode, full size (before)": lambda _: _jpeg.strict_jpeg_problem(data, scale=1),
        "strict decode, 1/8 DCT scaling": lambda _: _jpeg.strict_jpeg_problem(data, scale=8),
        "sha256": lambda _: hashlib.sha256(data).hexdigest(),
        "write temp file (open, write, close)": write,
        "fsync the file": fsync_file,
        "rename": rename,
        "fsync the folder": fsync_folder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=None, help="where to write (a real disk)")
    args = parser.parse_args()
    rows: dict[str, list[str]] = {}
    sizes = (64, 1024)
    for size in sizes:
        data = render_image(prompt="p", seed=1, index=0, width=size, height=size, fmt="jpeg")
        rows.setdefault("bytes", []).append(f"{len(data):,}")
        with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
            for name, step in steps(data, Path(tmp)).items():
                cpu, wall = timed(step, args.images)
                rows.setdefault(name, []).append(f"{cpu:,.0f} / {wall:,.0f}")
    print("| step | " + " | ".join(f"{s}x{s}: CPU / wall us" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
