"""Command-line entry point `zbatch`: argument parsing, subcommands and exit codes; no logic.

Exit codes: 0 done, 1 unexpected error, 2 usage or manifest error, 3 auth or funds,
4 Buzz cap reached, 5 `zbatch verify` found damage, 6 the disk is full or read-only (or
failed), 7 the batch database cannot be used (in use, locked by another program, damaged,
or from a newer zbatch), 130 interrupted; `zbatch plan` exits 3 when the plan is over budget.
Results go to stdout; logs and progress to stderr (`main` configures logging for that).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from runner import __version__
from runner.disk._out_folder import OutFolder
from runner.errors import ApiError, AuthError, UsageError, ZbatchError
from runner.log import TOKEN_ENV, configure_logging

if TYPE_CHECKING:
    from runner.manifest._load import Manifest
    from runner.plan import Plan

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away
EXIT_OVER_BUDGET = 3
EXIT_CAP_REACHED = 4


def cmd_plan(args: argparse.Namespace) -> int:
    """Show what a manifest will do and cost, before anything is spent.

    Reads the manifest and its prompt files, expands the grid once and prints the axes and
    their sizes, the cells and images (duplicates removed, exclusions, inclusions), the Buzz
    by shape and by model against the budget (and, when over, how many cells fit before the
    run would stop), an estimated wall time at the manifest's limits, and the number of
    warnings (the warnings themselves go to stderr). It writes nothing and spends nothing.

    --whatif also asks the API (CIVITAI_API_TOKEN; CIVITAI_API_BASE_URL, e.g. a running
    `zbatch emulator`) for the exact price once per distinct shape, without any cell's
    externalId, and reports where it differs from the formula.

    Exit codes: 0 within budget; 2 invalid manifest (every problem listed) or --whatif
    without a token; 3 over budget (the plan is still printed); 1 unexpected, or the
    whatif call failed.

    Example:
        zbatch plan jobs/demo.yaml
        zbatch plan jobs/dataset-interiors.yaml --json | jq .buzz.total
        CIVITAI_API_TOKEN=... zbatch plan jobs/compare-models.yaml --whatif
    """
    from runner.manifest._load import load_manifest
    from runner.plan import make_plan, render_text, to_json

    if args.whatif and not os.environ.get(TOKEN_ENV, "").strip():
        print(f"zbatch: error: --whatif needs {TOKEN_ENV} (your Civitai API key)", file=sys.stderr)
        return 2
    manifest = load_manifest(args.manifest)
    for warning in manifest.warnings:
        print(f"zbatch: warning: {warning}", file=sys.stderr)
    if args.whatif:
        try:
            plan = anyio.run(_plan_with_whatif, manifest, backend="asyncio")
        except ApiError as exc:
            print(f"zbatch: error: the whatif price check failed: {exc}", file=sys.stderr)
            return 1
    else:
        plan = make_plan(manifest)
    print(json.dumps(to_json(plan), indent=2) if args.json else render_text(plan))
    return EXIT_OVER_BUDGET if plan.over_budget else 0


async def _plan_with_whatif(manifest: Manifest) -> Plan:
    from runner.api._client import Client
    from runner.ops._whatif import plan_with_whatif

    async with Client() as client:
        return await plan_with_whatif(manifest, client)


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "plan", cmd_plan)
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the batch's YAML manifest")
    p.add_argument("--json", action="store_true", help="print a JSON document (for scripts)")
    p.add_argument(
        "--whatif",
        action="store_true",
        help="ask the API for the exact price of each distinct shape (needs CIVITAI_API_TOKEN; "
        "spends nothing)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Run a batch: submit every cell, follow it, download and verify every image.

    Creates the batch under the manifest's `out` folder, or resumes it: cells already
    finished are not submitted again, intents a crash left behind are resubmitted with the
    same externalId (so the service never makes a second workflow), running workflows are
    followed, and images not yet on disk are downloaded. The Buzz cap holds throughout.
    Re-running a finished batch does nothing; an edited manifest adds its new cells.

    Ctrl-C (or SIGTERM) stops new submissions and lets in-flight work finish for a few
    seconds; a second Ctrl-C stops at once. Both are safe, as is kill -9.

    --adopt first records the workflows the service already has for this batch (found by
    its tag, matched to cells by externalId; paid, never resubmitted): for a batch whose
    batch.sqlite was lost, or picked up on another machine (docs/operations.md).

    Refuses an existing output folder that every user may write to (docs/reliability.md),
    unless --allow-shared-out; batch.sqlite and log.jsonl are created readable by you only.

    A full or read-only disk stops the run before it submits more (exit 6); a batch.sqlite
    locked by another program, damaged, or written by a newer zbatch is refused untouched
    (exit 7). Fix the cause and run again: nothing is lost. With --adopt, a damaged
    batch.sqlite is moved aside (kept) and rebuilt from the service (docs/reliability.md).

    Needs CIVITAI_API_TOKEN, unless --emulator runs the embedded emulator for this run.
    Exit codes: 0 done; 2 invalid manifest, flag or output folder; 3 auth or funds; 4 the
    Buzz cap stopped the batch (resumable with a larger --budget); 6 the disk is full,
    read-only or failed; 7 batch.sqlite in use, locked, damaged or newer; 130 interrupted;
    1 unexpected.

    Example:
        zbatch run jobs/demo.yaml --emulator
        CIVITAI_API_TOKEN=... zbatch run jobs/dataset-interiors.yaml --concurrency 16
    """
    from runner.cli._progress import render_summary, show_progress
    from runner.disk._out_folder import check_out_folder
    from runner.manifest._load import load_manifest
    from runner.ops._run import EmulatorOptions, RunOverrides, execute

    manifest = load_manifest(args.manifest)
    for warning in manifest.warnings:
        print(f"zbatch: warning: {warning}", file=sys.stderr)
    _check_run_settings(args)  # before any write, as is the next line
    check_out_folder(manifest.out, allow_shared=args.allow_shared_out)
    configure_logging(
        level="info",
        log_file=OutFolder(manifest.out).log,
        console_level="warning",  # stderr: warnings and errors; log.jsonl: every event
    )
    emulator = (
        EmulatorOptions(time_scale=args.time_scale, seed=args.seed, faults_path=args.faults)
        if args.emulator
        else None
    )
    overrides = RunOverrides(
        budget_buzz=args.budget,
        in_flight=args.concurrency,
        submit_per_s=args.rate,
        adopt=args.adopt,
    )
    outcome = execute(
        manifest,
        overrides=overrides,
        api_url=args.api_url,
        emulator=emulator,
        progress=None if args.quiet else show_progress,
    )
    if outcome.set_aside is not None:
        print(
            f"set aside   the damaged {manifest.out / 'batch.sqlite'} is now"
            f" {outcome.set_aside} (kept); the record was rebuilt from the service"
        )
    print(render_summary(outcome, out=manifest.out))
    if outcome.adopted is not None:  # operations: --adopt
        from runner.ops._adopt import render_adoption

        print(render_adoption(outcome.adopted))
    if outcome.canceled_at is not None:
        print(
            f"canceled    at {outcome.canceled_at}: nothing was submitted"
            f" (zbatch retry {manifest.out} --state canceled resumes it)"
        )
    if outcome.stats.cap_reached:
        return EXIT_CAP_REACHED
    if outcome.stats.stop_reason is not None:
        return EXIT_INTERRUPTED
    return 0


def _check_run_settings(args: argparse.Namespace) -> None:
    """The fault profile, API URL and token of `zbatch run`: refused before anything is written."""
    if args.emulator:
        if args.faults is not None:
            import yaml

            from runner.emulator.config import load_faults

            try:
                load_faults(args.faults)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
                if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
                    detail = f"line {exc.problem_mark.line + 1}: {exc.problem}"
                raise UsageError(
                    f"--faults {args.faults}: not a fault profile ({detail})"
                ) from None
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


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "run", cmd_run)
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the batch's YAML manifest")
    p.add_argument(
        "--budget", type=_positive_int, metavar="BUZZ", help="Buzz cap (default: the manifest's)"
    )
    p.add_argument(
        "--concurrency",
        type=_in_flight,
        metavar="N",
        help="workflows in flight (default: the manifest's limits.in_flight)",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        metavar="R",
        help="submissions per second (default: the manifest's limits.submit_per_s)",
    )
    p.add_argument(
        "--api-url",
        metavar="URL",
        help="the orchestration API (default: $CIVITAI_API_BASE_URL or Civitai's)",
    )
    p.add_argument(
        "--emulator",
        action="store_true",
        help="run against the embedded emulator on 127.0.0.1 (no token, no network)",
    )
    p.add_argument(
        "--time-scale",
        type=_time_scale,
        default=0.05,
        metavar="X",
        help="with --emulator: simulated job durations times X (default: %(default)s)",
    )
    p.add_argument("--faults", type=Path, metavar="FILE", help="with --emulator: a fault profile")
    p.add_argument("--seed", type=int, default=0, help="with --emulator: its seed (default: 0)")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress display (stderr: warnings and errors; OUT/log.jsonl: every event)",
    )
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


def cmd_status(args: argparse.Namespace) -> int:
    """Show a batch's cells, images, Buzz and failures from its record, offline.

    Reads OUT/batch.sqlite read-only and without the batch lock, so it works while
    `zbatch run` is running and changes nothing. Prints the batch name, cells (by their
    latest attempt) and attempts by state, images downloaded / pending / lost and the files
    on disk, Buzz charged / reserved / cap, the top failure reasons with their counts, and
    the time of the last recorded transition. --json prints the same as one document.

    Exit codes: 0; 2 when OUT is missing or holds no zbatch batch.

    Example:
        zbatch status out/demo
        zbatch status out/demo --json | jq .buzz
    """
    from runner.dataset._status import read_status, render_status, status_json

    status = anyio.run(read_status, args.out, backend="asyncio")
    print(json.dumps(status_json(status), indent=2) if args.json else render_status(status))
    return 0


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "status", cmd_status)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument("--json", action="store_true", help="print a JSON document (for scripts)")


def cmd_gallery(args: argparse.Namespace) -> int:
    """Write a batch's X/Y gallery: a static HTML page and a labelled PNG contact sheet.

    Reads OUT/batch.sqlite read-only (safe during a run) and the images under OUT, finds the
    axes (every input that differs between cells) and lays the images out on two of them,
    the others as filters, like AUTOMATIC1111's X/Y plot. Each image shows its inputs on
    hover and click; rows, columns and grid cells show their Buzz. Writes, atomically,
    OUT/gallery/index.html (open it from disk: no server, no network) and
    OUT/gallery/grid-X-Y.png. By default the two axes that make the fullest grid, the one
    with more values as rows. See docs/gallery.md.

    Exit codes: 0; 2 when OUT holds no batch, or an axis or state is not one the batch has.

    Example:
        zbatch gallery out/demo
        zbatch gallery out/demo --x model --y prompt
        zbatch gallery out/demo --state downloaded,lost
    """
    from runner.dataset._gallery import make_gallery, render_result

    states = args.state.split(",")
    result = anyio.run(
        functools.partial(make_gallery, args.out, x=args.x, y=args.y, states=states),
        backend="asyncio",
    )
    print(render_result(result))
    return 0


def _add_gallery(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "gallery", cmd_gallery)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument("--x", metavar="FIELD", help="the axis across the columns (default: chosen)")
    p.add_argument("--y", metavar="FIELD", help="the axis down the rows (default: chosen)")
    p.add_argument(
        "--state",
        default="downloaded",
        metavar="STATES",
        help="image states to show, comma-separated: downloaded, pending, lost "
        "(default: %(default)s)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Export a batch's images and metadata as JSONL, CSV, Parquet or WebDataset shards.

    Reads OUT/batch.sqlite read-only (safe while `zbatch run` is running) and streams one
    row per image, with every input that made it and what it cost (docs/dataset.md), to
    --to (default: OUT/export/dataset.<format>, or the folder OUT/export/webdataset/).
    Memory stays flat however many rows. Every file is written under a temp name and
    renamed into place, so a reader never sees half an export. --state picks images by
    state (comma-separated: downloaded, pending, lost); webdataset takes downloaded only.
    Parquet needs pyarrow: pip install 'zbatch[parquet]'.

    Exit codes: 0 written (images missing from disk are left out of a WebDataset with a
    warning); 2 OUT holds no batch, or a format, state or shard size that is not allowed;
    1 pyarrow missing for parquet, or unexpected.

    Example:
        zbatch export out/demo --format parquet
        zbatch export out/demo --format webdataset --shard-size 500 --to /data/demo-wds
        zbatch export out/demo --format csv --state lost --to lost.csv
    """
    from runner.dataset._export import describe, export

    states = tuple(s.strip() for s in args.state.split(",") if s.strip())
    job = functools.partial(
        export, args.out, args.format, to=args.to, states=states, shard_size=args.shard_size
    )
    result = anyio.run(job, backend="asyncio")
    if result.missing:
        print(
            f"zbatch: warning: {result.missing} downloaded images are missing from disk and "
            "were left out (zbatch verify finds them)",
            file=sys.stderr,
        )
    print(describe(result))
    return 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "export", cmd_export)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument(
        "--format", required=True, metavar="FORMAT", help="jsonl, csv, parquet or webdataset"
    )
    p.add_argument(
        "--to",
        type=Path,
        metavar="PATH",
        help="the file (the shard folder for webdataset) to write (default: under OUT/export/)",
    )
    p.add_argument(
        "--state",
        default="downloaded",
        metavar="STATES",
        help="image states to export, comma-separated: downloaded, pending, lost "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shard-size",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="webdataset: samples per tar shard (default: %(default)s)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Summarise a batch in a few lines, for a commit message or a chat post.

    Reads OUT/batch.sqlite read-only (safe while `zbatch run` is running): cells by the
    state of their latest attempt, images downloaded / pending / lost, the top failure
    reasons, Buzz charged, refunded (failed or canceled workflows credited back) and
    reserved against the cap, Buzz per usable (downloaded) image, the wall time from the
    first recorded transition to the last (every run of the batch, pauses included) and
    images per minute over it. --json prints the same as one document.

    Exit codes: 0; 2 when OUT is missing or holds no zbatch batch.

    Example:
        zbatch report out/demo
        zbatch report out/demo --json | jq .buzz
    """
    from runner.dataset._report import read_report, render_report, report_json

    report = anyio.run(read_report, args.out, backend="asyncio")
    print(json.dumps(report_json(report), indent=2) if args.json else render_report(report))
    return 0


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "report", cmd_report)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument("--json", action="store_true", help="print a JSON document (for scripts)")


# -- operations: retry, cancel, verify (docs/operations.md) -------------------------------

EXIT_DAMAGED = 5


def cmd_retry(args: argparse.Namespace) -> int:
    """Give chosen cells of a batch a new attempt, then run them under the batch's cap.

    Chooses the cells whose latest attempt is in --state (default failed, expired, lost:
    failed or expired with its attempts used up, or succeeded with an image lost), or the
    cells named with --cell. Each gets attempt n+1 with a new externalId; nothing else is
    submitted, and a succeeded cell with every image on disk is never touched. Blocked and
    rejected cells are retried only when --cell names them. Then the batch runs as with
    `zbatch run` (no manifest needed: the record holds every request), within the batch's
    cap, which --budget replaces. A retry lifts `zbatch cancel`.

    Needs CIVITAI_API_TOKEN, unless --emulator runs the embedded emulator.
    Exit codes: 0 done (or nothing to retry); 2 OUT holds no batch, or a --cell is unknown;
    3 auth or funds; 4 the Buzz cap stopped it; 130 interrupted; 1 unexpected, or the
    batch is in use by another runner.

    Example:
        zbatch retry out/demo
        zbatch retry out/demo --state canceled --budget 500
        zbatch retry out/demo --cell 3f2a9c0d11e4b7a85c6d2e1f0a9b8c7d
    """
    from runner.cli._progress import render_summary, show_progress
    from runner.ops._retry import RetrySettings, execute_retry, render_retry
    from runner.ops._run import EmulatorOptions

    configure_logging(
        level="info",
        log_file=OutFolder(args.out).log,
        console_level="warning",  # stderr: warnings and errors; log.jsonl: every event
    )
    settings = RetrySettings(
        states=args.state or (),
        cells=tuple(args.cell or ()),
        attempts=args.attempts,
        budget_buzz=args.budget,
        in_flight=args.concurrency,
        submit_per_s=args.rate,
    )
    emulator = EmulatorOptions(time_scale=args.time_scale) if args.emulator else None
    outcome = execute_retry(
        args.out,
        settings,
        api_url=args.api_url,
        emulator=emulator,
        progress=None if args.quiet else show_progress,
    )
    print(render_retry(outcome.plan))
    if outcome.run is None:
        print("Nothing to retry: no cell matched.")
        unknown = [k for k, why in outcome.plan.skipped.items() if why.startswith("no such")]
        return 2 if unknown else 0
    print(render_summary(outcome.run, out=args.out))
    if outcome.run.stats.cap_reached:
        return EXIT_CAP_REACHED
    if outcome.run.stats.stop_reason is not None:
        return EXIT_INTERRUPTED
    return 0


def _add_retry(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "retry", cmd_retry)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
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
        type=_positive_int,
        default=1,
        metavar="N",
        help="attempts per chosen cell in this retry (default: %(default)s)",
    )
    p.add_argument(
        "--budget", type=_positive_int, metavar="BUZZ", help="a new Buzz cap (default: the batch's)"
    )
    p.add_argument("--concurrency", type=_positive_int, metavar="N", help="workflows in flight")
    p.add_argument("--rate", type=_positive_float, metavar="R", help="submissions per second")
    p.add_argument("--api-url", metavar="URL", help="the orchestration API")
    p.add_argument("--emulator", action="store_true", help="the embedded emulator (demo only)")
    p.add_argument(
        "--time-scale",
        type=_non_negative_float,
        default=0.05,
        metavar="X",
        help="with --emulator: job durations times X (default: %(default)s)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress display (stderr: warnings and errors; OUT/log.jsonl: every event)",
    )


def _retry_states(text: str) -> tuple[str, ...]:
    from runner.store._ops import RETRY_STATES

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


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a batch: cancel its workflows that have not started and submit nothing more.

    Takes the batch lock (so no `zbatch run` may be running: stop it first). Cancels every
    planned attempt, and on the service every workflow not yet processing (PUT status
    canceled: the service refunds it); workflows already processing are paid and left to
    finish, and `zbatch run` still downloads their images. The batch stays canceled, so
    `zbatch run` submits nothing, until `zbatch retry OUT --state canceled` resumes it.

    Needs CIVITAI_API_TOKEN. Exit codes: 0 canceled; 1 the batch is in use by a runner,
    or unexpected; 2 OUT holds no batch; 3 auth.

    Example:
        zbatch cancel out/demo
        zbatch retry out/demo --state canceled    # resume it later
    """
    from runner.ops._cancel import cancel_out, render_cancel

    configure_logging(level="info", log_file=OutFolder(args.out).log, console_level="warning")
    report = anyio.run(
        functools.partial(cancel_out, args.out, api_url=args.api_url), backend="asyncio"
    )
    print(render_cancel(report, out=str(args.out)))
    return 0


def _add_cancel(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "cancel", cmd_cancel)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument("--api-url", metavar="URL", help="the orchestration API")


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every downloaded image against its recorded sha256; --repair fetches bad ones.

    Re-hashes each downloaded image's file and reports the missing and the corrupt ones.
    Without --repair it only reads, and works during a run. With --repair (takes the batch
    lock; needs CIVITAI_API_TOKEN) it fetches each damaged image again through the
    workflow and blob routes and writes it back when the bytes hash as recorded; an image
    the service no longer has is marked lost (`zbatch retry OUT --state lost` remakes it).

    Exit codes: 0 intact (every image matches, after repairs); 5 damaged (found, or marked
    lost by --repair); 2 OUT holds no batch; 3 auth; 1 unexpected.

    Example:
        zbatch verify out/demo
        zbatch verify out/demo --repair
    """
    from runner.ops._verify import render_verify, verify_out

    report = anyio.run(
        functools.partial(verify_out, args.out, repair=args.repair, api_url=args.api_url),
        backend="asyncio",
    )
    print(render_verify(report, out=args.out))
    return 0 if report.intact else EXIT_DAMAGED


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "verify", cmd_verify)
    p.add_argument("out", type=Path, metavar="OUT", help="the batch's output folder")
    p.add_argument(
        "--repair", action="store_true", help="fetch damaged images again, else mark them lost"
    )
    p.add_argument("--api-url", metavar="URL", help="the orchestration API (with --repair)")


# -- end of operations ----------------------------------------------------------------------


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the local emulator of Civitai's orchestration API.

    The emulator validates Z-Image requests, moves workflows through their statuses over
    simulated time, charges Buzz, serves signed expiring image URLs and injects faults from a
    seeded profile. Any bearer token is accepted, each its own account.

    Example:
        zbatch emulator --port 8765 --time-scale 0.1
        zbatch emulator --faults jobs/faults/flaky.yaml --url-ttl 30 --blocked-words gore
        CIVITAI_API_BASE_URL=http://127.0.0.1:8765 CIVITAI_API_TOKEN=dev zbatch ...
    """
    from runner.emulator.config import EmulatorConfig
    from runner.emulator.server import serve

    try:
        config = EmulatorConfig.from_flags(
            seed=args.seed,
            time_scale=args.time_scale,
            faults_path=args.faults,
            url_ttl_s=args.url_ttl,
            submit_per_s=args.submit_rate,
            blocked_words=frozenset(w for w in (args.blocked_words or "").split(",") if w),
        )
    except (OSError, ValueError) as exc:  # a fault profile that is missing or wrong
        raise UsageError(f"--faults: {exc}") from exc
    serve(config, host=args.host, port=args.port)
    return 0


def _add_emulator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _subparser(sub, "emulator", cmd_emulator)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--time-scale",
        type=_non_negative_float,
        default=1.0,
        metavar="X",
        help="multiply simulated job durations by X; 0 = instant (default: %(default)s)",
    )
    p.add_argument(
        "--faults",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON fault profile (see docs/emulator.md); default: no faults",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for images, runtimes and faults (default: 0)"
    )
    p.add_argument(
        "--url-ttl",
        type=_positive_float,
        metavar="SECONDS",
        help="lifetime of a signed image URL (default: 3600)",
    )
    p.add_argument(
        "--submit-rate",
        type=_positive_float,
        metavar="N",
        help="submissions a second per token before 429 + Retry-After (default: 50)",
    )
    p.add_argument(
        "--blocked-words",
        metavar="W1,W2",
        help="prompts holding one of these words fail moderation (reason 'blocked')",
    )


def _subparser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(func.__doc__ or "")
    summary = doc.splitlines()[0] if doc else name
    p = sub.add_parser(
        name,
        help=summary,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


MAX_FLAG_INT = 10**12  # the manifest's largest Buzz cap; far inside SQLite's int64


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    if value > MAX_FLAG_INT:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_FLAG_INT}")
    return value


def _in_flight(text: str) -> int:
    """--concurrency: the manifest's range of limits.in_flight, 1..10000."""
    value = _positive_int(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 10000")
    return value


def _time_scale(text: str) -> float:
    """--time-scale of `zbatch run --emulator`: 0 (instant) .. 1000."""
    value = _non_negative_float(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 1000")
    return value


def _rate(text: str) -> float:
    """--rate: the manifest's range of limits.submit_per_s, 0.01..1000."""
    value = _non_negative_float(text)
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0.01 and 1000")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `zbatch` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="zbatch",
        description="YAML manifests to Z-Image generations on Civitai's orchestration API: "
        "resumable, exactly-once, cost-capped.",
    )
    parser.add_argument("--version", action="version", version=f"zbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_plan(sub)
    _add_run(sub)
    _add_status(sub)
    _add_gallery(sub)
    _add_export(sub)
    _add_report(sub)
    _add_retry(sub)  # operations
    _add_cancel(sub)  # operations
    _add_verify(sub)  # operations
    _add_emulator(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zbatch`; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level="info")  # logs to stderr (JSON when not a TTY); stdout is results
    try:
        code: int = args.func(args)
    except ZbatchError as exc:
        print(f"zbatch: error: {exc}", file=sys.stderr)
        return type(exc).exit_code
    except KeyboardInterrupt:
        print("zbatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `zbatch plan --json | head`: the reader left. Not our error; silence the final
        # flush of stdout as well (the recipe in Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # the machine's failures (a disk, the database), unwrapped
        from runner.disk._faults import translate

        found = translate(exc)
        if found is None:
            raise
        print(f"zbatch: error: {found}", file=sys.stderr)
        return type(found).exit_code
    return code
