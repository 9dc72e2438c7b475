"""`zbatch list`: the batches under a folder, read without their lock."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio

from runner.cli._command import Command
from runner.cli._options import add_json, add_store
from runner.errors import ExitCode


def cmd_list(args: argparse.Namespace) -> int:
    """List the batches under a folder: cells done / failed / open, Buzz, state, last activity.

    Finds every folder holding a batch.sqlite at most 3 folders below FOLDER (default: the
    current folder; hidden folders and symlinks are not followed) and reads each read-only,
    as `zbatch status` does: it never takes a batch's lock, so it is safe while runs go on.
    STATE is `running` (a run holds the batch's lock), `incomplete` (cells or images still
    open: run it again), `failed cells` (every cell finished, some without success: `zbatch
    status` says why) or `finished`. A batch.sqlite that cannot be read (damaged, foreign,
    written by a newer zbatch) is one line saying so. --json prints the same as a document.

    `zbatch status FOLDER` on a folder with no batch.sqlite but batches below prints this list.

    With --store URL (or $ZBATCH_STORE) it lists the batch kept in that PostgreSQL database
    instead, and FOLDER is not searched: a database holds one batch, so the list is that
    batch's line (named by the URL without its password; `running` when a runner on any host
    holds its advisory lock), or says the database has none. An unreachable database exits 7.

    Example:
        zbatch list
        zbatch list out --json | jq '.[] | select(.state != "finished")'
        zbatch list --store postgresql://zbatch@db.example/demo
    """
    if args.store:
        _print_store(args.store, as_json=args.json)
    else:
        print_list(args.folder, as_json=args.json)
    return ExitCode.OK


def _print_store(url: str, *, as_json: bool) -> None:
    from runner.dataset import batches_json, list_store, render_batches
    from runner.store import redact

    lines = anyio.run(list_store, url, backend="asyncio")
    if as_json:
        print(json.dumps(batches_json(lines, Path()), indent=2))
    elif not lines:
        print(f"no batch in {redact(url)} (it has no zbatch schema: `zbatch run --store` makes it)")
    else:
        print(render_batches(lines, Path()))


def print_list(folder: Path, *, as_json: bool = False) -> None:
    from runner.dataset import batches_json, list_batches, render_batches

    lines = anyio.run(list_batches, folder, backend="asyncio")
    if as_json:
        print(json.dumps(batches_json(lines, folder), indent=2))
    else:
        print(render_batches(lines, folder))


def listed_instead(out: Path, *, as_json: bool) -> bool:
    """`zbatch status FOLDER` on a folder with batches below and none of its own: the list."""
    from runner.dataset import find_batches

    if not out.is_dir() or (out / "batch.sqlite").exists() or not find_batches(out):
        return False
    print_list(out, as_json=as_json)
    return True


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=Path("."),
        metavar="FOLDER",
        help="where to look for batches (default: the current folder)",
    )
    add_json(p)
    add_store(p, role="list")


LIST = Command(
    "list",
    cmd_list,
    _list_arguments,
    exits=frozenset({ExitCode.BATCH_UNUSABLE}),
    notes={
        ExitCode.USAGE: "or FOLDER is not a folder",
        ExitCode.BATCH_UNUSABLE: "the --store database cannot be reached, or is from a newer"
        " zbatch",
    },
)
