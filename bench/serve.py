"""The bench's emulator process: `zbatch emulator` with the service's rate limits lifted.

`zbatch emulator` keeps the emulator's default limits (50 submits/s, 200 reads/s per token),
which would make every throughput figure the limiter's. The benches want the runner's own
pace, so this child serves `EmulatorConfig(..., submit_limit=None, read_limit=None)`; it is
otherwise the same uvicorn server `zbatch emulator` runs.

    python -m bench.serve --port 8765 --time-scale 0 --seed 1
"""

from __future__ import annotations

import argparse

from runner.emulator.config import EmulatorConfig
from runner.emulator.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-cache", type=int, default=EmulatorConfig().image_cache_entries,
        help="rendered images kept (a run warmed with as many cells renders none again)",
    )  # fmt: skip
    args = parser.parse_args()
    config = EmulatorConfig(
        seed=args.seed,
        time_scale=args.time_scale,
        submit_limit=None,
        read_limit=None,
        image_cache_entries=args.image_cache,
    )
    serve(config, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
