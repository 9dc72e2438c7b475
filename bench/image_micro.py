"""What one downloaded image costs, step by step: `python -m bench.image_micro`.

The emulator's own JPEGs (`render_image`, quality 85, 4:2:0) at 64x64 and 1024x1024, each
step of the downloader's path timed alone, `--images` times, in this thread: CPU
(`time.thread_time`, so the machine's other load does not count) and wall (`perf_counter`,
which does: fsync waits on the disk). Steps: the header read (`Image.open`), the strict
decode (libjpeg-turbo, full size and with 1/8 DCT scaling), sha256, the write of a new temp
file (open + write + close), its fsync, the rename, the folder's fsync. Prints a markdown
table of microseconds per image (docs/performance.md, "An image, step by step").

`--path` times the downloader's whole work on an image once its bytes are in hand, as the
source tree it runs from does it: `--workers` tasks on one event loop, each image checked,
hashed and written (temp, fsync, rename, folder fsync) under `images/<ab>/` through
`anyio.to_thread.run_sync`, as `Downloader._download` does. The tree of this file does it in
one worker-thread call with a shared folder fsync; a tree without `atomic_write_hashed` (the
one before lever d) as it did, a call to check and hash then a call to write. CPU is the
process's (`getrusage`: every thread's, user and system apart). Copy this file into the tree
before to compare (docs/performance.md, lever d):

    git archive 0d892bd | tar -x -C /tmp/before && cp bench/image_micro.py /tmp/before/bench/
    (cd /tmp/before && python -m bench.image_micro --path); python -m bench.image_micro --path
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from PIL import Image

import runner.disk
from runner.emulator.images import render_image
from runner.engine import _images, _jpeg


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


def one_image(data: bytes, out: Path, size: int) -> Callable[[int], object]:
    """The downloader's work on image `i` once its bytes are in hand, as this tree does it."""
    check = functools.partial(
        _images.check_image, width=size, height=size, output_format="jpeg", max_bytes=1 << 24
    )
    hashed = getattr(runner.disk, "atomic_write_hashed", None)
    if hashed is None:  # the tree before lever d: check and hash, then write

        async def before(i: int) -> object:
            info = await anyio.to_thread.run_sync(check, data)
            await anyio.to_thread.run_sync(runner.disk.atomic_write_bytes, target(out, i), data)
            return info

        return before
    from runner.engine._downloader import _check_then_keep

    syncs = runner.disk.FolderSyncs()

    async def after(i: int) -> object:
        keep = functools.partial(hashed, target(out, i), folder_syncs=syncs)
        call = functools.partial(
            _check_then_keep,
            data,
            keep,
            width=size,
            height=size,
            output_format="jpeg",
            max_bytes=1 << 24,
        )
        return await anyio.to_thread.run_sync(call)

    return after


def target(out: Path, i: int) -> Path:
    """Image `i`'s path, in the downloader's layout (`images/<ab>/<cell key>_0.jpeg`)."""
    key = hashlib.sha256(str(i).encode()).hexdigest()[:16]
    return out / runner.disk.image_path(key, 0, "jpeg")


def time_path(
    data: bytes, out: Path, size: int, images: int, workers: int
) -> tuple[float, float, float]:
    """Microseconds per image of the process's user CPU, its system CPU (the kernel's file
    work: creating, writing, fsyncing; a loaded disk moves it most) and wall, `workers`
    images at a time."""
    step = one_image(data, out, size)

    async def run() -> None:
        numbers = iter(range(images))

        async def worker() -> None:
            for i in numbers:
                await step(i)

        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)

    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    anyio.run(run)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return user / images * 1e6, system / images * 1e6, wall / images * 1e6


def main_path(args: argparse.Namespace) -> None:
    for size in (64, 1024):
        data = render_image(prompt="p", seed=1, index=0, width=size, height=size, fmt="jpeg")
        with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
            time_path(data, Path(tmp) / "warm", size, 20, args.workers)  # threads, imports
            user, system, wall = time_path(data, Path(tmp), size, args.images, args.workers)
        print(
            f"{size}x{size}: {user + system:,.0f} us CPU ({user:,.0f} user, {system:,.0f} system),"
            f" {wall:,.0f} us wall per image",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=None, help="where to write (a real disk)")
    parser.add_argument("--path", action="store_true", help="the whole path, as this tree does it")
    parser.add_argument("--workers", type=int, default=16, help="--path: images at a time")
    args = parser.parse_args()
    if args.path:
        main_path(args)
        return
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
