"""Command-line entry point `zbatch`: parse, run the command, map what it raised to an exit code.

Each command is a `Command` (runner/cli/_command.py) in a module of its group: _plan,
_run (run, retry), _read (status, report, gallery, export), _ops (cancel, verify),
_emulator; _parser builds the parser from them. A command returns its exit code or raises;
`dispatch` maps a ZbatchError to its `exit_code` (errors.py), Ctrl-C to 130, a reader that
went away to 141, and the machine's failures (a disk, the database) to 6 or 7 through
`disk.local_failure`; anything else is a bug and ends in a traceback. `checked` flags
an exit code the command did not declare (its --help lists the declared ones).

Results go to stdout; logs and progress to stderr (`main` configures logging for that).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import structlog

from runner.cli._command import Command
from runner.cli._help import safe_streams
from runner.cli._parser import build_parser
from runner.disk import platform_problem
from runner.errors import ExitCode, ZbatchError
from runner.log import configure_logging, set_color

__all__ = ["build_parser", "checked", "dispatch", "main"]

log = structlog.get_logger(__name__)
# Tests set this: an undeclared exit code then fails the test instead of being logged.
STRICT_EXIT_CODES = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zbatch`; return the process exit code."""
    safe_streams()
    args = build_parser().parse_args(argv)
    if (problem := platform_problem()) is not None:  # Windows: one line, not a traceback
        print(f"zbatch: error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    set_color(args.color)
    # stderr: warnings and errors only (a command with a batch folder sends every event from
    # info up to its log.jsonl); human lines on a terminal, JSON lines otherwise.
    configure_logging(level="info", console_level="warning")
    command: Command = args.command
    return checked(command, dispatch(command, args))


def dispatch(command: Command, args: argparse.Namespace) -> int:
    """Run `command`; its exit code, or the one of the error it raised (see above)."""
    try:
        return int(command.run(args))
    except ZbatchError as exc:
        print(f"zbatch: error: {exc}", file=sys.stderr)
        return type(exc).exit_code
    except KeyboardInterrupt:
        print("zbatch: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `zbatch plan --json | head`: the reader left. Not our error; silence the final
        # flush of stdout as well (the recipe in Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except Exception as exc:  # the machine's failures (a disk, the database), unwrapped
        from runner.disk import local_failure

        found = local_failure(exc)
        if found is None:
            raise
        print(f"zbatch: error: {found}", file=sys.stderr)
        return type(found).exit_code


def checked(command: Command, code: int) -> int:
    """`code`, after checking that `command` declares it (and so its --help lists it).

    An undeclared code is a bug in the declaration, not the user's problem: it is logged
    and returned as it is (under tests, `STRICT_EXIT_CODES` makes it fail instead).
    """
    if code not in command.exit_codes:
        declared = sorted(int(c) for c in command.exit_codes)
        log.error("exit_code_undeclared", command=command.name, code=code, declared=declared)
        if STRICT_EXIT_CODES:
            raise AssertionError(f"zbatch {command.name} exited {code}, not in {declared}")
    return code
