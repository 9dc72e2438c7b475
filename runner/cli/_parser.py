"""The `zbatch` argument parser: one subcommand per `Command` of the command modules."""

from __future__ import annotations

import argparse

from runner import __version__
from runner.cli._command import Command, add_command, exit_codes_help
from runner.cli._emulator import EMULATOR
from runner.cli._init import INIT
from runner.cli._list import LIST
from runner.cli._ops import CANCEL, VERIFY
from runner.cli._plan import PLAN
from runner.cli._read import EXPORT, GALLERY, REPORT, STATUS
from runner.cli._run import RETRY, RUN
from runner.errors import EXIT_CODES

# In `zbatch --help` order.
COMMANDS: tuple[Command, ...] = (
    INIT,
    PLAN,
    RUN,
    STATUS,
    LIST,
    GALLERY,
    EXPORT,
    REPORT,
    RETRY,  # operations (docs/operations.md)
    CANCEL,
    VERIFY,
    EMULATOR,
)


def build_parser() -> argparse.ArgumentParser:
    """The `zbatch` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="zbatch",
        description="YAML manifests to Z-Image generations on Civitai's orchestration API: "
        "resumable, exactly-once, cost-capped.",
        epilog=exit_codes_help(frozenset(EXIT_CODES))
        + "\n(each command's --help lists the codes it can end with)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zbatch {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    for command in COMMANDS:
        add_command(sub, command)
    return parser
