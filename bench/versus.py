"""zbatch against the script a user would write instead (baseline (c), issue 14).

On one emulator process per image size (`time_scale 0`, in flight 64, the same grid: one
prompt, seeds 0..N-1, turbo, one image each): a warm-up run of the script renders every
image into the emulator's cache (keyed by what an image is drawn from, so any runner asking
the same cells gets the same bytes without a render), then the script and `zbatch run` are
measured one after the other. Neither pays for the emulator's encoder, so at 1024x1024 the
ratio measures the runners, not the emulator. Each runner's CPU is its own process's.

Two ratios per size, with the issue's targets: cells/s zbatch / script (>= 1.0) and CPU
seconds per 1,000 cells zbatch / script (<= 1.5).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bench import harness as h
from bench.figure import Figure

if TYPE_CHECKING:
    from bench.benches import Sizes

CONCURRENCY = 64
ISSUE_CELLS = 3_000


def run_script(url: str, folder: Path, *, cells: int, size: int, run: str) -> h.Finished:
    """`python -m bench.baselines script` against `url`: its wall and CPU seconds."""
    out = folder / f"script-{run}"
    args = ["bench.baselines", "script", "--url", url, "--cells", str(cells), "--size", str(size)]
    args += ["--out", str(out), "--concurrency", str(CONCURRENCY), "--poll-s", "0.001"]
    args += ["--run", run]
    done = h.spawn(args, log=folder / f"script-{run}.stderr").wait()
    images = len(list(out.iterdir()))
    shutil.rmtree(out, ignore_errors=True)
    if images != cells:
        raise RuntimeError(f"the script wrote {images} images for {cells} cells")
    return done


def side_by_side(folder: Path, *, cells: int, size: int) -> list[Figure]:
    """Warm the emulator's image cache, then measure the script and zbatch on it."""
    manifest = h.write_manifest(
        folder, name=f"versus{size}", cells=cells, size=size, in_flight=CONCURRENCY, first_seed=0
    )
    with h.emulator(time_scale=0, image_cache=cells + 100) as emu:
        run_script(emu.url, folder, cells=cells, size=size, run="warm")
        rendered = emu.state()["images_rendered"]
        emu_cpu0 = emu.cpu_s()
        script = run_script(emu.url, folder, cells=cells, size=size, run="script")
        emu_cpu1 = emu.cpu_s()
        zbatch = h.zbatch_run(manifest, emu.url).wait()
        emu_cpu2 = emu.cpu_s()
        renders = emu.state()["images_rendered"] - rendered
    # the emulator's share of one core while it served each runner: near 1.0, its ceiling
    emu_script, emu_zbatch = (
        (emu_cpu1 - emu_cpu0) / script.wall_s,
        (emu_cpu2 - emu_cpu1) / zbatch.wall_s,
    )
    images = len(list((h.out_of(manifest) / "images").rglob("*.jp*g")))
    if images != cells:
        raise RuntimeError(f"zbatch wrote {images} images for {cells} cells")
    shutil.rmtree(h.out_of(manifest))
    name = f"vs (c) aiohttp script, {size}x{size}, time_scale 0, in flight {CONCURRENCY}"
    name += "" if cells >= ISSUE_CELLS else f" [measured at {cells:,}, issue asks 3,000]"
    s_rate, z_rate = cells / script.wall_s, cells / zbatch.wall_s
    s_cpu, z_cpu = script.cpu_s / cells * 1000, zbatch.cpu_s / cells * 1000
    rate_ratio, cpu_ratio = z_rate / s_rate, z_cpu / s_cpu
    zcmd = f"zbatch run (in_flight {CONCURRENCY}) against python -m bench.serve --time-scale 0"
    scmd = "python -m bench.baselines script"
    return [
        Figure(name, "script cells/s", s_rate, "cells/s", "", None, scmd),
        Figure(name, "script CPU per 1,000 cells", s_cpu, "CPU s", "", None, scmd),
        Figure(name, "zbatch cells/s", z_rate, "cells/s", "", None, zcmd),
        Figure(name, "zbatch CPU per 1,000 cells", z_cpu, "CPU s", "", None, zcmd),
        Figure(name, "cells/s ratio zbatch / script", rate_ratio, "x", ">= 1.0",
               rate_ratio >= 1.0, zcmd),
        Figure(name, "CPU per 1,000 cells ratio zbatch / script", cpu_ratio, "x", "<= 1.5",
               cpu_ratio <= 1.5, zcmd),
        Figure(name, "emulator core use while serving the script (1.0: its ceiling)",
               emu_script, "cores", "", None, "/proc/<emulator>/stat"),
        Figure(name, "emulator core use while serving zbatch (1.0: its ceiling)",
               emu_zbatch, "cores", "", None, "/proc/<emulator>/stat"),
        Figure(name, "images the emulator rendered while measured (0: not its ceiling)",
               renders, "images", "", None, "GET /_emulator/state images_rendered"),
    ]  # fmt: skip


def bench_versus_script(sizes: Sizes, folder: Path) -> list[Figure]:
    figures: list[Figure] = []
    for size, cells in ((64, sizes.versus_cells), (1024, sizes.versus_big_cells)):
        work = folder / f"versus-{size}"
        work.mkdir()
        figures += side_by_side(work, cells=cells, size=size)
    return figures
