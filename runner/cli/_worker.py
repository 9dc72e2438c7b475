"""`zbatch worker NAME --store URL --out OUT`: one of several workers draining one batch."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.cli._command import Command
from runner.cli._emulator import api_target
from runner.cli._options import add_target_options, store_url
from runner.cli._run import check_target
from runner.errors import ExitCode


def cmd_worker(args: argparse.Namespace) -> int:
    """Join the batch NAME in PostgreSQL and work on it beside other workers until it is done.

    The batch is recorded first by `zbatch run MANIFEST --store URL` (a runner alone on the
    batch: workers join once it has stopped, e.g. by Ctrl-C); any number of workers, on
    any hosts that reach the database and the API, then drain it together: each claims
    attempts with their Buzz reservations in one transaction (the batch's in-flight limit
    is a total across all workers, the cap holds), submits and follows them, and downloads
    their images into its own --out.
    A worker renews its lease every third of --lease; one silent longer is declared dead
    by the others, which take over its attempts (an intent is resubmitted with its
    externalId: the service hands back the workflow it made, never a second). A worker
    that was declared dead and comes back stops at once: each of its records is refused
    (exit 8) ({docs}/design/scale-out.md).

    Ends when nothing in the batch is planned or in flight (exit 0), or when the cap binds
    with nothing in flight (exit 4). Ctrl-C stops it cleanly: what it holds goes back to the
    others at once.

    Example:
        zbatch worker cabins-v1 --store postgresql://zbatch@db/cabins --out ./w1
    """
    from runner.ops import execute_worker

    check_target(args)
    with api_target(args) as target:
        stats = execute_worker(
            args.name, args.store, out=args.out, target=target, lease_s=args.lease
        )
    if stats.cap_reached:
        return int(ExitCode.CAP_REACHED)
    return int(ExitCode.OK)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a lease is more than 0 seconds")
    return value


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the batch's name (its manifest's `name`)")
    p.add_argument(
        "--store",
        type=store_url,
        required=True,
        metavar="URL",
        help="the batch's PostgreSQL database (postgresql://user@host:port/database); give"
        " the password by PGPASSWORD or ~/.pgpass, it is never shown",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help="where this worker writes the images it downloads (its own folder)",
    )
    p.add_argument(
        "--lease",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds this worker may go silent before the others take its work over"
        " (default: %(default)s)",
    )
    add_target_options(p, faults=True)


WORKER_EXITS = frozenset(
    {ExitCode.AUTH_OR_FUNDS, ExitCode.CAP_REACHED, ExitCode.DISK, ExitCode.BATCH_UNUSABLE,
     ExitCode.FENCED}
)  # fmt: skip
WORKER = Command("worker", cmd_worker, _arguments, exits=WORKER_EXITS)
