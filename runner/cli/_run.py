"""`zbatch run` and `zbatch retry`: the commands that submit, follow and download a batch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner.cli._command import Command
from runner.cli._emulator import api_target, check_faults
from runner.cli._options import (
    add_engine_options,
    add_give_up_after,
    add_json,
    add_out,
    add_quiet,
    add_store,
    add_target_options,
    captions_mode,
    positive_int,
    record_at,
    whole_setting,
)
from runner.disk import OutFolder
from runner.errors import AuthError, CapReached, ExitCode, ServiceOutage, UsageError
from runner.log import TOKEN_ENV, configure_logging

if TYPE_CHECKING:
    from runner.manifest import Manifest
    from runner.ops import RetrySettings, RunOutcome, RunOverrides

# What `run` and `retry` can end with beyond every command's codes.
RUN_EXITS = frozenset(
    {ExitCode.AUTH_OR_FUNDS, ExitCode.CAP_REACHED, ExitCode.DISK, ExitCode.BATCH_UNUSABLE}
)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a batch: submit every cell, follow it, download and verify every image.

    Creates the batch under the manifest's `out` folder, or resumes it: cells already
    finished are not submitted again, intents a crash left behind are resubmitted with the
    same externalId (so the service never makes a second workflow), running workflows are
    followed, and images not yet on disk are downloaded. The Buzz cap holds throughout.
    Re-running a finished batch does nothing; an edited manifest adds its new cells, but one
    that leaves cells behind (an edited default or name gives every cell a new key) is
    refused (exit 2, nothing spent; `zbatch plan` compares) unless --replace (the old cells
    leave the dataset; their images stay) or --keep (both stay). The manifest's captions,
    limits and retries are recorded with the batch, for `zbatch retry` and `zbatch verify
    --repair` ({docs}/operations.md).

    Ctrl-C (or SIGTERM) stops new submissions and lets in-flight work finish for a few
    seconds; a second Ctrl-C stops at once. Both are safe, as is kill -9.

    --adopt first records the workflows the service already has for this batch (found by
    its tag, matched to cells by externalId; paid, never resubmitted): for a batch whose
    batch.sqlite was lost, or picked up on another machine ({docs}/operations.md).

    Refuses an existing output folder that every user may write to ({docs}/reliability.md),
    unless --allow-shared-out; batch.sqlite and log.jsonl are created readable by you only.

    A full or read-only disk stops the run before it submits more (exit 6); a batch.sqlite
    locked by another program, damaged, or written by a newer zbatch is refused untouched
    (exit 7). Fix the cause and run again: nothing is lost. With --adopt, a damaged
    batch.sqlite is moved aside (kept) and rebuilt from the service ({docs}/reliability.md).

    An API out of reach at the start is exit 2, naming the URL; an outage later is waited
    out for --give-up-after (default 6h), then exit 130, resumable ({docs}/reliability.md).

    Needs CIVITAI_API_TOKEN, unless --emulator runs the embedded emulator for this run.

    Example:
        zbatch init && zbatch run demo.yaml --emulator
        CIVITAI_API_TOKEN=... zbatch run my-dataset.yaml --concurrency 16
    """
    from runner.cli._progress import show_progress
    from runner.ops import execute

    manifest = _load_for_run(args)
    overrides = run_overrides(args)
    try:
        with api_target(args, out=manifest.out) as target:
            outcome = execute(
                manifest,
                overrides=overrides,
                target=target,
                progress=None if args.quiet else show_progress,
            )
    except (CapReached, ServiceOutage) as exc:  # run_batch attaches what the run did
        print_run(exc.outcome, out=manifest.out, json=args.json, store=args.store)
        raise
    print_run(outcome, out=manifest.out, json=args.json, store=args.store)
    return verdict(outcome)


def run_overrides(args: argparse.Namespace) -> RunOverrides:
    """`zbatch run`'s flags that win over the manifest (or over the batch's record)."""
    from runner.ops import RunOverrides

    return RunOverrides(
        budget_buzz=args.budget,
        in_flight=args.concurrency,
        submit_per_s=args.rate,
        downloads=args.downloads,
        adopt=args.adopt,
        leftover="replaced" if args.replace else "kept" if args.keep else None,
        sample=args.sample,
        give_up_after_s=args.give_up_after,
        store=args.store,
    )


def _load_for_run(args: argparse.Namespace) -> Manifest:
    """The manifest, its warnings said; the target and output folder checked before any
    write; logging to OUT/log.jsonl."""
    from runner.disk import check_out_folder
    from runner.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    for warning in manifest.warnings:
        print(f"zbatch: warning: {warning}", file=sys.stderr)
    check_target(args)  # before any write, as is the next line
    check_out_folder(manifest.out, allow_shared=args.allow_shared_out)
    configure_logging(
        level="info",
        log_file=OutFolder(manifest.out).log,
        console_level="warning",  # stderr: warnings and errors; log.jsonl: every event
    )
    return manifest


def print_run(
    outcome: RunOutcome | None, *, out: Path, json: bool = False, store: str | None = None
) -> None:
    """What `zbatch run` prints on stdout once the run ends: its summary and notes (with
    `json`, the outcome as one JSON document)."""
    if outcome is None:
        return
    if json:
        from runner.cli._help import result_json

        print(result_json(outcome, out=out))
        return
    from runner.cli._summary import render_summary

    if outcome.set_aside is not None:
        print(
            f"set aside   the damaged {OutFolder(out).db} is now"
            f" {outcome.set_aside} (kept); the record was rebuilt from the service"
        )
    print(render_summary(outcome, out=out, store=store))
    if outcome.adopted is not None:  # operations: --adopt
        from runner.ops import render_adoption

        print(render_adoption(outcome.adopted))
    if outcome.canceled_at is not None:
        print(
            f"canceled    at {outcome.canceled_at}: nothing was submitted"
            f" (zbatch retry {out} --state canceled resumes it)"
        )


def verdict(outcome: RunOutcome) -> int:
    """The exit code of a run that ended without an error: done, or stopped by a signal.

    A run the Buzz cap stopped raised CapReached (exit 4, through the dispatcher) instead.
    """
    if outcome.stats.stop_reason is not None:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def check_target(args: argparse.Namespace) -> None:
    """The fault profile, API URL and token of `zbatch run`: refused before anything is written."""
    if args.emulator:
        if args.faults is not None:
            check_faults(args.faults)
        return
    base = args.api_url or os.environ.get("CIVITAI_API_BASE_URL")
    if base:
        import httpx

        try:
            url = httpx.URL(base)
        except httpx.InvalidURL:
            url = httpx.URL("")
        if url.scheme not in ("http", "https") or not url.host:
            source = "--api-url" if args.api_url else "CIVITAI_API_BASE_URL"
            raise UsageError(f"{source} {base!r} is not an http:// or https:// URL")
    if not os.environ.get(TOKEN_ENV, "").strip():
        raise AuthError(
            f"no API token: set {TOKEN_ENV} to your Civitai API key (or use --emulator)"
        )


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the batch's YAML manifest")
    p.add_argument(
        "--budget",
        type=positive_int,
        metavar="BUZZ",
        help="a new Buzz cap, kept for later runs (default: the last cap given, or the"
        " manifest's when its budget changed)",
    )
    p.add_argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help="run only N cells spread across every axis (each value of each axis at least"
        " once when N allows), under the batch's record: a later full run reuses them",
    )
    changed = p.add_mutually_exclusive_group()
    changed.add_argument(
        "--replace",
        action="store_true",
        help="the manifest leaves cells of the batch behind (or renames it): they leave the"
        " dataset, gallery and exports; their images stay on disk and in the record",
    )
    changed.add_argument(
        "--keep",
        action="store_true",
        help="the manifest leaves cells of the batch behind (or renames it): both stay in the"
        " dataset, each row naming its manifest revision",
    )
    add_engine_options(p, defaults="the manifest's")
    add_give_up_after(p)
    add_store(p, role="run")
    add_target_options(p, faults=True)
    add_quiet(p)
    add_json(p)
    p.add_argument(
        "--allow-shared-out",
        action="store_true",
        help="accept an output folder every user may write to (refused by default)",
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="first record the batch's workflows the service already has (found by the "
        "batch's tag): after batch.sqlite was lost, or on another machine",
    )


# Codes every command has, with what they mean when the service is out of reach.
SERVICE_NOTES = {
    ExitCode.USAGE: "or the API cannot be reached at the start: refused, no such host, TLS",
    ExitCode.INTERRUPTED: "or an outage outlasted --give-up-after",
}
RUN = Command("run", cmd_run, _run_arguments, exits=RUN_EXITS, notes=SERVICE_NOTES)


def cmd_retry(args: argparse.Namespace) -> int:
    """Give chosen cells of a batch a new attempt, then run them under the batch's cap.

    Chooses the cells whose latest attempt is in --state (default failed, expired, lost:
    failed or expired with its attempts used up, or succeeded with an image lost), or the
    cells named with --cell. Each gets attempt n+1 with a new externalId; nothing else is
    submitted, and a succeeded cell with every image on disk is never touched. Blocked and
    rejected cells are retried only when --cell names them. Then the batch runs as with
    `zbatch run` (no manifest needed: the record holds every request), within the batch's
    cap, which --budget replaces. A retry lifts `zbatch cancel`.

    It runs with the captions, limits and attempts `zbatch run` recorded from the manifest;
    --captions, --concurrency, --rate, --downloads and --attempts override them. A batch
    recorded by an older zbatch keeps that zbatch's defaults, and a warning names them.

    --give-up-after bounds how long an outage of the service is waited out, as in `zbatch
    run` (default 6h; then exit 130, resumable).

    Needs CIVITAI_API_TOKEN when a cell is chosen; without one and nothing to retry, it says
    so and exits 0. --emulator runs the embedded emulator instead, from the state the run
    kept in OUT/.emulator/ (it knows the batch's earlier workflows).

    --json prints what was chosen (`plan`: the cells, and those skipped with why) and how
    the run ended (`run`: as `zbatch run --json` prints it; null when nothing matched).

    --store URL (or $ZBATCH_STORE): the record is in that PostgreSQL database (locked there,
    from any host), as `zbatch run --store` put it; the images are written under OUT.

    Example:
        zbatch retry out/demo
        zbatch retry out/demo --state canceled --budget 500
        zbatch retry out/demo --cell 3f2a9c0d11e4b7a85c6d2e1f0a9b8c7d
    """
    from runner.cli._help import result_json
    from runner.cli._progress import show_progress
    from runner.ops import execute_retry, render_retry

    # stderr: warnings and errors; log.jsonl: every event
    configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")
    try:
        with api_target(args, out=args.out) as target:
            outcome = execute_retry(
                args.out,
                _retry_settings(args),
                target=target,
                progress=None if args.quiet else show_progress,
                at=record_at(args),
            )
    except CapReached as exc:
        if exc.outcome is not None:
            print_run(exc.outcome, out=args.out, json=args.json, store=args.store)
        raise
    if args.json:
        print(result_json(outcome, out=args.out))
    else:
        print_retry(render_retry(outcome.plan), outcome.run, out=args.out, store=args.store)
    if outcome.run is None:
        unknown = [k for k, why in outcome.plan.skipped.items() if why.startswith("no such")]
        return ExitCode.USAGE if unknown else ExitCode.OK
    return verdict(outcome.run)


def print_retry(
    chosen: str, run: RunOutcome | None, *, out: Path, store: str | None = None
) -> None:
    """What `zbatch retry` prints on stdout: the cells it chose (`chosen`, rendered), then
    the run's summary."""
    from runner.cli._summary import render_summary

    print(chosen)
    if run is None:
        print("Nothing to retry: no cell matched.")
    else:
        print(render_summary(run, out=out, store=store))


def _retry_settings(args: argparse.Namespace) -> RetrySettings:
    """What to retry, and the flags that override the batch's run settings."""
    from runner.ops import RetrySettings

    return RetrySettings(
        states=args.state or (),
        cells=tuple(args.cell or ()),
        budget_buzz=args.budget,
        attempts=args.attempts,
        in_flight=args.concurrency,
        submit_per_s=args.rate,
        downloads=args.downloads,
        captions=args.captions,
        give_up_after_s=args.give_up_after,
    )


def _retry_states(text: str) -> tuple[str, ...]:
    from runner.store import RETRY_STATES

    states = tuple(s.strip() for s in text.split(",") if s.strip())
    for state in states:
        if state not in RETRY_STATES:
            allowed = ", ".join(f"'{s}'" for s in RETRY_STATES)
            raise argparse.ArgumentTypeError(
                f"{state!r} is not one of {allowed} (blocked and rejected cells: name them with"
                " --cell)"
            )
    if not states:
        raise argparse.ArgumentTypeError("name at least one state")
    return states


def _retry_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument(
        "--state",
        type=_retry_states,
        metavar="STATES",
        help="comma-separated: failed, expired, lost, canceled (default: failed,expired,lost; "
        "with --cell, all)",
    )
    p.add_argument(
        "--cell", action="append", metavar="KEY", help="a cell key to retry (repeatable)"
    )
    p.add_argument(
        "--attempts",
        type=whole_setting("attempts"),
        metavar="N",
        help="attempts per chosen cell in this retry (default: the batch's retries.attempts)",
    )
    p.add_argument(
        "--budget", type=positive_int, metavar="BUZZ", help="a new Buzz cap (default: the batch's)"
    )
    add_engine_options(p, defaults="the batch's")
    p.add_argument(
        "--captions",
        type=captions_mode,
        metavar="MODE",
        help="none or txt: write a .txt caption beside each image (default: the batch's)",
    )
    add_give_up_after(p)
    add_store(p)
    add_target_options(p, faults=False)
    add_quiet(p)
    add_json(p)


RETRY = Command(
    "retry",
    cmd_retry,
    _retry_arguments,
    exits=RUN_EXITS,
    notes={
        ExitCode.OK: "or nothing to retry",
        ExitCode.USAGE: "or a --cell is unknown, " + SERVICE_NOTES[ExitCode.USAGE],
        ExitCode.INTERRUPTED: SERVICE_NOTES[ExitCode.INTERRUPTED],
    },
)
