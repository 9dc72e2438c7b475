"""`zbatch emulator`: serve the local emulator of Civitai's orchestration API.

The one CLI module that imports `runner.emulator` (lazily, when the command runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.cli._command import Command
from runner.cli._options import non_negative_float, positive_float
from runner.errors import ExitCode, UsageError


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the local emulator of Civitai's orchestration API.

    The emulator validates Z-Image requests, moves workflows through their statuses over
    simulated time, charges Buzz, serves signed expiring image URLs and injects faults from a
    seeded profile. Any bearer token is accepted, each its own account.

    Example:
        zbatch emulator --port 8765 --time-scale 0.1
        zbatch emulator --faults jobs/faults/flaky.yaml --url-ttl 30 --blocked-words gore
        CIVITAI_API_BASE_URL=http://127.0.0.1:8765 CIVITAI_API_TOKEN=dev zbatch ...
    """
    from runner.emulator.config import EmulatorConfig
    from runner.emulator.server import serve

    try:
        config = EmulatorConfig.from_flags(
            seed=args.seed,
            time_scale=args.time_scale,
            faults_path=args.faults,
            url_ttl_s=args.url_ttl,
            submit_per_s=args.submit_rate,
            blocked_words=frozenset(w for w in (args.blocked_words or "").split(",") if w),
        )
    except (OSError, ValueError) as exc:  # a fault profile that is missing or wrong
        raise UsageError(f"--faults: {exc}") from exc
    serve(config, host=args.host, port=args.port)
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--time-scale",
        type=non_negative_float,
        default=1.0,
        metavar="X",
        help="multiply simulated job durations by X; 0 = instant (default: %(default)s)",
    )
    p.add_argument(
        "--faults",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON fault profile (see docs/emulator.md); default: no faults",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for images, runtimes and faults (default: 0)"
    )
    p.add_argument(
        "--url-ttl",
        type=positive_float,
        metavar="SECONDS",
        help="lifetime of a signed image URL (default: 3600)",
    )
    p.add_argument(
        "--submit-rate",
        type=positive_float,
        metavar="N",
        help="submissions a second per token before 429 + Retry-After (default: 50)",
    )
    p.add_argument(
        "--blocked-words",
        metavar="W1,W2",
        help="prompts holding one of these words fail moderation (reason 'blocked')",
    )


EMULATOR = Command(
    "emulator",
    cmd_emulator,
    _arguments,
    notes={ExitCode.USAGE: "or a fault profile that is missing or wrong"},
)
