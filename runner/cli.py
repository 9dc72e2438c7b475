"""Command-line entry point `zbatch`: argument parsing, subcommands and exit codes; no logic.

Exit codes: 0 done, 1 unexpected error, 2 usage or manifest error, 3 auth or funds,
4 Buzz cap reached, 130 interrupted. Results go to stdout; logs and progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from runner import __version__
from runner.errors import ZbatchError

EXIT_INTERRUPTED = 130


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the local emulator of Civitai's orchestration API.

    The emulator validates Z-Image requests, moves workflows through their statuses over
    simulated time, charges Buzz, serves signed expiring image URLs and injects faults from a
    seeded profile. Any bearer token is accepted unless the fault/profile file restricts them.

    Example:
        zbatch emulator --port 8765 --time-scale 0.1
        CIVITAI_API_BASE_URL=http://127.0.0.1:8765 CIVITAI_API_TOKEN=dev zbatch ...
    """
    from runner.emulator.config import EmulatorConfig
    from runner.emulator.server import serve

    config = EmulatorConfig.from_flags(
        seed=args.seed, time_scale=args.time_scale, faults_path=args.faults
    )
    serve(config, host=args.host, port=args.port)
    return 0


def _add_emulator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "emulator", cmd_emulator)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--time-scale",
        type=_non_negative_float,
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


def _subparser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    doc = (func.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else name
    p = sub.add_parser(
        name,
        help=summary,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `zbatch` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="zbatch",
        description="YAML manifests to Z-Image generations on Civitai's orchestration API: "
        "resumable, exactly-once, cost-capped.",
    )
    parser.add_argument("--version", action="version", version=f"zbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_emulator(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zbatch`; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ZbatchError as exc:
        print(f"zbatch: error: {exc}", file=sys.stderr)
        return type(exc).exit_code
    except KeyboardInterrupt:
        print("zbatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
