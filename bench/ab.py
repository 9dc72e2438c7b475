"""A lever's before and after: `zbatch run` from two source trees, alternating, one emulator.

    git archive BEFORE | tar -x -C /tmp/before
    python -m bench.ab /tmp/before . --cells 2000 --rounds 2 [--size 1024]

The emulator's image cache is warmed first by the script of baseline (c), so neither tree
pays for a render. Each run's CPU is its own process's (`RUSAGE_CHILDREN` before and after
reaping it), which a loaded machine disturbs far less than its wall time. Prints CPU seconds
per 1,000 cells and cells/s of every run, in order.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness as h
from bench.versus import run_script


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="images are size x size")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with (
        tempfile.TemporaryDirectory() as tmp,
        h.emulator(time_scale=0, image_cache=args.cells + 100) as emu,
    ):
        folder = Path(tmp)
        run_script(emu.url, folder, cells=args.cells, size=args.size, run="warm")
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                m = h.write_manifest(folder, name=f"ab{name}{round_}", cells=args.cells,
                                     size=args.size, first_seed=0)  # fmt: skip
                cpu_s, started = children_cpu_s(), time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "runner.cli", "run", str(m), "--api-url", emu.url,
                     "--quiet"],
                    cwd=tree, env=os.environ | {"CIVITAI_API_TOKEN": h.TOKEN},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise SystemExit(done.stderr.decode(errors="replace")[-2000:])
                cpu_s, wall_s = children_cpu_s() - cpu_s, time.monotonic() - started
                found[name].append((cpu_s / args.cells * 1000, args.cells / wall_s))
                print(f"{name} round {round_}: {found[name][-1][0]:.2f} CPU s/1000", flush=True)
    for name, runs in found.items():
        cpu = ", ".join(f"{c:.2f}" for c, _ in runs)
        rate = ", ".join(f"{r:.0f}" for _, r in runs)
        print(f"{name} ({trees[name]}): CPU s per 1,000 cells {cpu}; cells/s {rate}")


if __name__ == "__main__":
    main()
