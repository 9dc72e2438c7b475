"""The `zbatch` argument parser: one subcommand per `Command` of the command modules."""

from __future__ import annotations

import argparse

from runner import __version__
from runner.cli._command import Command, add_command, exit_codes_help
from runner.cli._completion import COMPLETION
from runner.cli._emulator import EMULATOR
from runner.cli._help import top_epilog
from runner.cli._init import INIT
from runner.cli._list import LIST
from runner.cli._ops import CANCEL, VERIFY
from runner.cli._plan import PLAN
from runner.cli._read import EXPORT, GALLERY, REPORT, STATUS
from runner.cli._run import RETRY, RUN
from runner.cli._worker import WORKER
from runner.errors import EXIT_CODES
from runner.log import COLOR_MODES

# In `zbatch --help` order.
COMMANDS: tuple[Command, ...] = (
    INIT,
    PLAN,
    RUN,
    WORKER,
    STATUS,
    LIST,
    GALLERY,
    EXPORT,
    REPORT,
    RETRY,  # operations
    CANCEL,
    VERIFY,
    EMULATOR,
    COMPLETION,
)


def build_parser() -> argparse.ArgumentParser:
    """The `zbatch` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="zbatch",
        description="YAML manifests to Z-Image generations on Civitai's orchestration API: "
        "resumable, exactly-once, cost-capped.",
        epilog=top_epilog(exit_codes_help(frozenset(EXIT_CODES))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zbatch {__version__}")
    parser.add_argument(
        "--color",
        choices=COLOR_MODES,
        default="auto",
        help="color on stderr's log lines and the progress display: auto (on a terminal,"
        " unless $NO_COLOR is set), always or never (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    for command in COMMANDS:
        add_command(sub, command)
    parser.set_defaults(root_parser=parser)  # `zbatch completion` writes its script from it
    return parser
