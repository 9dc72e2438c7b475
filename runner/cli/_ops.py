"""`zbatch cancel` and `zbatch verify`: operations on a batch's record (docs/operations.md)."""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING

import anyio

from runner.cli._command import Command
from runner.cli._emulator import api_target
from runner.cli._options import add_json, add_out, add_store, add_target_options, record_at
from runner.disk import OutFolder
from runner.errors import ExitCode
from runner.log import configure_logging

if TYPE_CHECKING:
    from runner.ops import VerifyReport

# Both can meet a token that is refused, a disk that refuses a write (cancel's record,
# verify's repaired image) and a batch.sqlite in use, locked, damaged or newer.
OPS_EXITS = frozenset({ExitCode.AUTH_OR_FUNDS, ExitCode.DISK, ExitCode.BATCH_UNUSABLE})
NO_BATCH = "or OUT (or the --store database) holds no batch, or another than the manifest's"
UNREACHABLE = "or the --store database cannot be reached"


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a batch: cancel its workflows that have not started and submit nothing more.

    Takes the batch lock (so no `zbatch run` may be running: stop it first). Cancels every
    planned attempt, and on the service every workflow not yet processing (PUT status
    canceled: the service refunds it); workflows already processing are paid and left to
    finish, and `zbatch run` still downloads their images. The batch stays canceled, so
    `zbatch run` submits nothing, until `zbatch retry OUT --state canceled` resumes it.

    Needs CIVITAI_API_TOKEN when workflows are in flight; without one and none in flight, it
    cancels the record alone and says so (exit 0). --emulator cancels on the embedded
    emulator the batch was made on (its state is kept in OUT/.emulator/). --json prints
    the counts (unsubmitted, canceled, refunded_buzz, withdrawn, finished, vanished), the
    workflows left running (started) and whether the service was asked (offline).

    With --store URL (or $ZBATCH_STORE) the record is in that PostgreSQL database, from any
    host: cancel takes the batch's advisory lock there (a runner holding it on any host
    refuses it, exit 7) and records through the same transitions; OUT keeps the log.

    Example:
        zbatch cancel out/demo
        zbatch cancel out/demo --emulator         # a batch made with run --emulator
        zbatch retry out/demo --state canceled    # resume it later
    """
    from runner.ops import cancel_out, render_cancel

    configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")
    with api_target(args, out=args.out) as target:
        report = anyio.run(
            functools.partial(cancel_out, args.out, target=target, at=record_at(args)),
            backend="asyncio",
        )
    if args.json:
        from runner.cli._help import result_json

        print(result_json(report, out=args.out))
    else:
        print(render_cancel(report, out=str(args.out)))
    return ExitCode.OK


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    add_json(p)
    add_out(p)
    add_store(p)
    add_target_options(p, faults=False)


CANCEL = Command(
    "cancel",
    cmd_cancel,
    _cancel_arguments,
    exits=OPS_EXITS,
    notes={
        ExitCode.OK: "canceled",
        ExitCode.USAGE: NO_BATCH,
        ExitCode.BATCH_UNUSABLE: "in use by a runner: stop it first; " + UNREACHABLE,
    },
)


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every downloaded image against its recorded sha256; --repair fetches bad ones.

    Re-hashes each downloaded image's file and reports the missing and the corrupt ones.
    Without --repair it only reads, and works during a run. With --repair (takes the batch
    lock; needs CIVITAI_API_TOKEN) it fetches each damaged image again through the
    workflow and blob routes and writes it back when the bytes hash as recorded; an image
    the service no longer has is marked lost (`zbatch retry OUT --state lost` remakes it).
    When a repair changed anything, metadata.jsonl is written again, with the .txt captions
    when the batch's recorded settings say `captions: txt`. An image whose recorded sha256
    is of bytes that do not decode is fetched again too: good bytes are written and
    recorded, bad ones again make it lost, with the reason.

    Without a token, --repair needs none when every image is intact (it says so, exit 0).
    --emulator repairs from the embedded emulator the batch was made on (its state is kept
    in OUT/.emulator/).

    With --store URL (or $ZBATCH_STORE) the record is in that PostgreSQL database, from any
    host: verify reads it in a read-only session; --repair takes the batch's advisory lock
    there and records through the same transitions. The images checked are OUT's.

    Example:
        zbatch verify out/demo
        zbatch verify out/demo --repair
        zbatch verify out/demo --repair --emulator    # a batch made with run --emulator
    """
    from runner.ops import Target, render_verify, verify_out

    at = record_at(args)
    if at.url is not None or OutFolder(args.out).db.is_file():  # events to log.jsonl
        configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")

    def verify(target: Target) -> VerifyReport:
        return anyio.run(
            functools.partial(verify_out, args.out, repair=args.repair, target=target, at=at),
            backend="asyncio",
        )

    if args.repair:
        with api_target(args, out=args.out) as target:
            report = verify(target)
    else:
        report = verify(Target())
    if args.json:
        from runner.cli._help import result_json

        print(result_json(report, intact=report.intact, damaged=report.damaged))
    else:
        print(render_verify(report, out=args.out))
    return ExitCode.OK if report.intact else ExitCode.DAMAGED


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    add_json(p)
    add_out(p)
    add_store(p)
    p.add_argument(
        "--repair", action="store_true", help="fetch damaged images again, else mark them lost"
    )
    add_target_options(p, faults=False)


VERIFY = Command(
    "verify",
    cmd_verify,
    _verify_arguments,
    exits=OPS_EXITS | {ExitCode.DAMAGED},
    notes={
        ExitCode.OK: "intact: every image matches its record, after any repairs",
        ExitCode.USAGE: NO_BATCH,
        ExitCode.DAMAGED: "not all repaired; with --repair, any image marked lost",
        ExitCode.BATCH_UNUSABLE: UNREACHABLE,
    },
)
