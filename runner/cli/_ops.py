"""`zbatch cancel` and `zbatch verify`: operations on a batch's record (docs/operations.md)."""

from __future__ import annotations

import argparse
import functools

import anyio

from runner.cli._command import Command
from runner.cli._options import add_out
from runner.disk import OutFolder
from runner.errors import ExitCode
from runner.log import configure_logging

# Both can meet a token that is refused, a disk that refuses a write (cancel's record,
# verify's repaired image) and a batch.sqlite in use, locked, damaged or newer.
OPS_EXITS = frozenset({ExitCode.AUTH_OR_FUNDS, ExitCode.DISK, ExitCode.BATCH_UNUSABLE})
NO_BATCH = "or OUT holds no batch"


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a batch: cancel its workflows that have not started and submit nothing more.

    Takes the batch lock (so no `zbatch run` may be running: stop it first). Cancels every
    planned attempt, and on the service every workflow not yet processing (PUT status
    canceled: the service refunds it); workflows already processing are paid and left to
    finish, and `zbatch run` still downloads their images. The batch stays canceled, so
    `zbatch run` submits nothing, until `zbatch retry OUT --state canceled` resumes it.

    Needs CIVITAI_API_TOKEN.

    Example:
        zbatch cancel out/demo
        zbatch retry out/demo --state canceled    # resume it later
    """
    from runner.ops import cancel_out, render_cancel

    configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")
    report = anyio.run(
        functools.partial(cancel_out, args.out, api_url=args.api_url), backend="asyncio"
    )
    print(render_cancel(report, out=str(args.out)))
    return ExitCode.OK


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument("--api-url", metavar="URL", help="the orchestration API")


CANCEL = Command(
    "cancel",
    cmd_cancel,
    _cancel_arguments,
    exits=OPS_EXITS,
    notes={
        ExitCode.OK: "canceled",
        ExitCode.USAGE: NO_BATCH,
        ExitCode.BATCH_UNUSABLE: "in use by a runner: stop it first",
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
    when the batch's recorded settings say `captions: txt`.

    Example:
        zbatch verify out/demo
        zbatch verify out/demo --repair
    """
    from runner.ops import render_verify, verify_out

    if OutFolder(args.out).db.is_file():  # its events to log.jsonl, the report says the rest
        configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")
    report = anyio.run(
        functools.partial(verify_out, args.out, repair=args.repair, api_url=args.api_url),
        backend="asyncio",
    )
    print(render_verify(report, out=args.out))
    return ExitCode.OK if report.intact else ExitCode.DAMAGED


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument(
        "--repair", action="store_true", help="fetch damaged images again, else mark them lost"
    )
    p.add_argument("--api-url", metavar="URL", help="the orchestration API (with --repair)")


VERIFY = Command(
    "verify",
    cmd_verify,
    _verify_arguments,
    exits=OPS_EXITS | {ExitCode.DAMAGED},
    notes={
        ExitCode.OK: "intact: every image matches its record, after any repairs",
        ExitCode.USAGE: NO_BATCH,
        ExitCode.DAMAGED: "not all repaired; with --repair, any image marked lost",
    },
)
