"""`zbatch init`: a starter manifest, its prompts and the emulator's fault profiles, to edit.

The examples ship in the package (runner/cli/examples/, package data): an installed zbatch
has something to start from without the repository. The fault profiles are copies of the
repository's jobs/faults/ (tests/test_init.py keeps them identical).
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from runner.cli._command import Command
from runner.cli._options import add_json
from runner.errors import ExitCode, UsageError

EXAMPLES = "examples"


def example_files() -> dict[str, bytes]:
    """Every file `zbatch init` writes: its path relative to FOLDER, and its bytes."""
    found: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif not child.name.startswith(".") and child.name.endswith((".yaml", ".txt")):
                found[prefix + child.name] = child.read_bytes()

    walk(files("runner.cli") / EXAMPLES, "")
    return found


def cmd_init(args: argparse.Namespace) -> int:
    """Write a starter manifest, its prompts and the emulator's fault profiles into FOLDER.

    FOLDER (default: the current folder) gets demo.yaml (the demo batch: 12 cells on both
    models, with the common settings shown as comments), prompts.txt (its prompts) and
    faults/*.yaml (the fault profiles of `zbatch emulator --faults`). It writes over no file
    unless --force; the folder is created if needed. --json prints what it wrote as
    {"folder", "wrote": [paths relative to FOLDER], "manifest"}.

    Example:
        zbatch init my-batch && cd my-batch
        zbatch plan demo.yaml
        zbatch run demo.yaml --emulator
        zbatch emulator --faults faults/flaky.yaml --seed 7
    """
    from runner.disk import atomic_write_bytes

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: zbatch init writes its examples into one")
    examples = example_files()
    taken = [rel for rel in examples if (folder / rel).exists() or (folder / rel).is_symlink()]
    if taken and not args.force:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UsageError(
            f"{folder / taken[0]} exists{more}: zbatch init writes over no file; "
            "--force replaces them"
        )
    for rel, data in examples.items():
        atomic_write_bytes(folder / rel, data)
    manifest = folder / "demo.yaml"
    if args.json:
        import json

        document = {"folder": str(folder), "wrote": list(examples), "manifest": str(manifest)}
        print(json.dumps(document, indent=2))
        return ExitCode.OK
    print(f"wrote {', '.join(examples)} in {folder}")
    print(f"next: zbatch plan {manifest}   then: zbatch run {manifest} --emulator")
    return ExitCode.OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", nargs="?", default=".", metavar="FOLDER", help="where to write (default: .)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the files of the same names in FOLDER"
    )
    add_json(parser)


INIT = Command(
    "init",
    cmd_init,
    _add_arguments,
    exits=frozenset({ExitCode.DISK}),
    notes={ExitCode.USAGE: "a file of the same name exists, without --force"},
)
