"""`zbatch completion SHELL`: the shell's completion script for zbatch, printed on stdout.

The script is generated from the parser itself by shtab (pyproject says why shtab): every
command, every flag, each flag's choices (`--format`, `--color`, this command's shells) and
paths where a command takes one. A batch folder (OUT: a folder holding batch.sqlite) and
`init`'s or `list`'s FOLDER complete as folders; a manifest, a fault profile or `--to` as
files. The script is static: the shell never runs zbatch (nor Python) to complete a word,
so completion costs nothing at run time; after an upgrade that adds a command, generate it
again (docs/cli.md#shell-completion).
"""

from __future__ import annotations

import argparse
import sys

from runner.cli._command import Command
from runner.cli._help import doc_url
from runner.cli._options import OutAction
from runner.errors import ExitCode

# The shells shtab writes a script for that the documentation says how to install.
SHELLS = ("bash", "zsh", "fish")
# Positionals and flags whose word is a folder, by their destination.
FOLDER_DESTS = frozenset({"folder"})


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell completion script for zbatch (bash, zsh or fish) on stdout.

    The script completes every command, every flag, the choices of --format and --color,
    a batch folder (OUT) as a folder and a manifest or fault profile as a file. It is
    static (the shell runs no Python to complete): after upgrading zbatch, install it again.

    Example:
        zbatch completion bash > ~/.local/share/bash-completion/completions/zbatch
        zbatch completion zsh > "${fpath[1]}/_zbatch"     # a folder on your $fpath
        zbatch completion fish > ~/.config/fish/completions/zbatch.fish
        eval "$(zbatch completion bash)"                  # this shell only

    See {docs}/cli.md#shell-completion.
    """
    sys.stdout.write(completion_script(args.root_parser, args.shell))
    return ExitCode.OK


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `shell` for `parser` (`zbatch`'s, which the parser hands
    every command as `root_parser`: this module does not import _parser, which imports it).
    Marks its path arguments for shtab."""
    import shtab

    _mark_paths(parser, folder=shtab.DIRECTORY, file=shtab.FILE)
    script = shtab.complete(parser, shell=shell)
    return script if script.endswith("\n") else script + "\n"


def _mark_paths(parser: argparse.ArgumentParser, *, folder: object, file: object) -> None:
    """Tell shtab which words are paths: a batch folder or FOLDER completes as a folder,
    any other path (a manifest, a fault profile, --to) as a file or folder."""
    from pathlib import Path

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_paths(sub, folder=folder, file=file)
        elif isinstance(action, OutAction) or action.dest in FOLDER_DESTS:
            action.complete = folder  # type: ignore[attr-defined]
        elif action.type is Path:
            action.complete = file  # type: ignore[attr-defined]


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "shell",
        choices=SHELLS,
        metavar="SHELL",
        help=f"the shell: {', '.join(SHELLS)} (how to install it: {doc_url('cli')})",
    )


COMPLETION = Command("completion", cmd_completion, _arguments)
