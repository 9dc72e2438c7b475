"""One `zbatch` command: its function, its flags, and the exit codes it may return.

Every command declares its exit codes (`Command.exit_codes`: `COMMON`, which any command can
end with, and its own). Its `--help` lists them with their meaning from errors.py's
`EXIT_CODES` table (`exit_codes_help`; a command may add a note on what a code means for
it), and the dispatcher (`_main.checked`) flags a code outside the set, so the help and the
behaviour cannot drift apart (tests/test_cli_exits.py drives each command into its codes).
"""

from __future__ import annotations

import argparse
import inspect
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from runner.cli._help import DOCS_URL
from runner.errors import EXIT_CODES, ExitCode

# What any command may end with: done, an unexpected error, a usage error (argparse's own,
# before the command runs), Ctrl-C, and a reader of stdout that went away.
COMMON: frozenset[ExitCode] = frozenset(
    {ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.INTERRUPTED, ExitCode.BROKEN_PIPE}
)


@dataclass(frozen=True)
class Command:
    """A subcommand. `run` returns its exit code or raises; the dispatcher maps an error to
    its `exit_code`. `exits` are the codes it returns beyond `COMMON`; `notes` say what a
    code means for this command, after the table's meaning."""

    name: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    exits: frozenset[ExitCode] = frozenset()
    notes: Mapping[ExitCode, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.notes) - self.exit_codes
        if unknown:
            raise ValueError(f"zbatch {self.name}: a note on an undeclared exit code {unknown}")

    @property
    def exit_codes(self) -> frozenset[ExitCode]:
        """Every code this command can end with."""
        return COMMON | self.exits

    @property
    def doc(self) -> str:
        """The command's help text: its function's docstring, `{docs}` the documentation's
        address (an installed zbatch has no docs/ folder beside it)."""
        return inspect.cleandoc(self.run.__doc__ or "").replace("{docs}", DOCS_URL)

    @property
    def summary(self) -> str:
        """The first line of its help, for `zbatch --help`."""
        return self.doc.splitlines()[0] if self.doc else self.name


def exit_codes_help(codes: frozenset[ExitCode], notes: Mapping[ExitCode, str] | None = None) -> str:
    """The `Exit codes:` block of a help text: each code with the table's meaning."""
    lines = ["Exit codes:"]
    for code in sorted(codes):
        note = (notes or {}).get(code)
        meaning = EXIT_CODES[code] + (f" ({note})" if note else "")
        lines.append(
            textwrap.fill(
                meaning, width=88, initial_indent=f"  {int(code):<4} ", subsequent_indent=" " * 7
            )
        )
    return "\n".join(lines)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> argparse.ArgumentParser:
    """Add `command`'s subparser: its help from the docstring and the exit-code table."""
    parser = sub.add_parser(
        command.name,
        help=command.summary,
        description=command.doc,
        epilog=exit_codes_help(command.exit_codes, command.notes),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(parser)
    parser.set_defaults(command=command)
    return parser
