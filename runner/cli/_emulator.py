"""`zbatch emulator`: serve the local emulator of Civitai's orchestration API; and the
embedded emulator `zbatch run --emulator` (and `retry`, `cancel`, `verify --repair` with
`--emulator`) run against, its state kept in the batch folder (`OUT/.emulator/state.json`).

The one module outside `runner/emulator/` that imports the emulator (lazily, when a command
needs it; pyproject's import-linter contracts keep it so).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from runner.cli._command import Command
from runner.cli._help import doc_url
from runner.cli._options import non_negative_float, positive_float
from runner.errors import ExitCode, UsageError
from runner.log import color_for, forward_stdlib

if TYPE_CHECKING:
    from runner.ops import Target

log = structlog.get_logger(__name__)
EMBEDDED_TOKEN = "zbatch-embedded-emulator"  # the emulator accepts any bearer token
EMULATOR_STATE = Path(".emulator") / "state.json"  # in the batch folder


def emulator_state(out: Path) -> Path:
    """Where the embedded emulator of the batch in `out` keeps its state."""
    return out / EMULATOR_STATE


@contextmanager
def api_target(args: argparse.Namespace, out: Path | None = None) -> Iterator[Target]:
    """Where a command's calls go: `--api-url` (or the environment's) with the token from the
    environment; with `--emulator`, an embedded emulator on a free loopback port, with its
    `--time-scale`, `--seed` and `--faults`, served for the block and always stopped after.

    With `out` (the batch folder), the embedded emulator starts from the state a command
    left in `OUT/.emulator/state.json` (its workflows, blobs, ledger and idempotency), and
    keeps it there: saved every second while it changes and when it stops, so `retry`,
    `cancel` and `verify --repair` with `--emulator` meet the service the run met."""
    from runner.ops import Target

    if not args.emulator:
        yield Target(base_url=args.api_url)
        return
    from runner.emulator import EmulatorConfig, StateError, running_server

    config = dataclasses.replace(
        EmulatorConfig.from_flags(
            seed=getattr(args, "seed", 0),
            time_scale=args.time_scale,
            faults_path=getattr(args, "faults", None),
        ),
        state_path=None if out is None else emulator_state(out),
    )
    with ExitStack() as stack:
        # its faults, one line each with their kind, to OUT/log.jsonl: not the user's stderr
        stack.enter_context(forward_stdlib("runner.emulator", event="emulator"))
        try:
            base_url = stack.enter_context(running_server(config))
        except StateError as exc:
            raise UsageError(
                f"--emulator: {exc}; move it aside to start an emulator that knows no workflow"
            ) from None
        log.info("emulator_started", url=base_url, time_scale=args.time_scale)
        yield Target(base_url=base_url, token=EMBEDDED_TOKEN, runtime_scale=args.time_scale)


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the local emulator of Civitai's orchestration API.

    The emulator validates Z-Image requests, moves workflows through their statuses over
    simulated time, charges Buzz, serves signed expiring image URLs and injects faults from a
    seeded profile. Any bearer token is accepted, each its own account.

    Example:
        zbatch emulator --port 8765 --time-scale 0.1
        zbatch init && zbatch emulator --faults faults/flaky.yaml --url-ttl 30 --blocked-words gore
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
    serve(config, host=args.host, port=args.port, use_colors=color_for(sys.stderr))
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
        help="YAML/JSON fault profile (`zbatch init` writes examples in faults/;"
        f" {doc_url('emulator')}); default: no faults",
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


def check_faults(path: Path) -> None:
    """Refuse a `--faults` file that is not a fault profile, naming the line at fault."""
    import yaml

    from runner.emulator.config import load_faults

    try:
        load_faults(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            detail = f"line {exc.problem_mark.line + 1}: {exc.problem}"
        raise UsageError(f"--faults {path}: not a fault profile ({detail})") from None
