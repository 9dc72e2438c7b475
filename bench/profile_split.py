"""Where a cell's time goes: a py-spy raw profile of `zbatch run`, split by component.

Record one (the emulator in its own process, so it is not in the profile):

    python -m bench.serve --port 18765 --time-scale 0 --image-cache 4000 &
    CIVITAI_API_TOKEN=zbatch-bench py-spy record -r 250 --nonblocking --format raw \
        -o run.txt -- python -m runner.cli run M.yaml --api-url http://127.0.0.1:18765 --quiet
    python -m bench.profile_split run.txt --cpu-ms-per-cell 12.7

Each sample's stack is read from its leaf to its root; the first frame that names a
component gives the sample to it (so httpx called from the engine counts as httpx). Samples
waiting (the selector, the store writer's idle queue, a condition) are dropped. py-spy samples a
thread that is in a system call as busy, so fsync time counts under its component although
it is not CPU: the shares are of busy thread time. `--cpu-ms-per-cell` (the run's CPU
seconds per 1,000 cells) turns each share into milliseconds of a cell.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

IDLE = "idle (waiting)"
OTHER = "event loop, other"
RULES: list[tuple[str, str]] = [  # (component, regex on one frame)
    (
        IDLE,
        r"^(EpollSelector\.select|Condition\.wait) |^Writer\._next_jobs |^_next_jobs ",
    ),
    ("JSON (json, orjson)", r"/json/|orjson"),
    ("logging (structlog, runner/log.py)", r"structlog/|runner/log\.py"),
    ("image check (strict decode)", r"runner/engine/_jpeg\.py|PIL/"),
    ("image write (AtomicFile: write, fsync, rename)", r"runner/disk/_atomic\.py"),
    ("hashing (sha256)", r"hashlib|sha256"),
    ("display (rich, progress)", r"rich/|runner/cli/_progress"),
    (
        "store round trips (the writer's queue, thread hand-off)",
        r"runner/store/_writer\.py|call_soon_threadsafe|_write_to_self|_read_from_self|queue\.py|Condition\.notify",
    ),
    (
        "HTTP transport (httpx, httpcore, h11, aiohttp, sockets)",
        r"httpx/|httpcore/|h11/|httpx_aiohttp/|aiohttp/|yarl/|multidict/|selector_events|trsock"
        r"|anyio/abc/_sockets|anyio/streams",
    ),
    ("runner/api (request building, parsing, errors)", r"runner/api/"),
    # on the writer's thread, a statement or a COMMIT (its fsync) shows as the store's frame
    # that runs it: SQLite itself counts here
    ("runner/store (SQLite statements, commits, fsync; SQL building, rows)", r"runner/store/"),
    ("runner/engine (scheduling, pacing)", r"runner/engine/"),
    ("start-up (imports, plan, open)", r"importlib|runner/plan|runner/grid|runner/manifest"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in RULES]


def split(path: Path) -> collections.Counter[str]:
    """Samples per component."""
    found: collections.Counter[str] = collections.Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        component = OTHER
        for frame in reversed(stack.split(";")):
            hit = next((name for name, rx in COMPILED if rx.search(frame)), None)
            if hit is not None:
                component = hit
                break
        found[component] += int(count)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--cpu-ms-per-cell", type=float, required=True)
    args = parser.parse_args()
    found = split(args.raw)
    busy = sum(v for k, v in found.items() if k != IDLE)
    print("| component | share of busy samples | ms per cell |")
    print("|---|---|---|")
    for name, count in found.most_common():
        if name != IDLE:
            share = count / busy
            print(f"| {name} | {share:.0%} | {share * args.cpu_ms_per_cell:.2f} |")


if __name__ == "__main__":
    main()
