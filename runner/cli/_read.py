"""The commands that read a batch's record without the batch lock: status, report, gallery,
export. Each opens OUT/batch.sqlite (or, with `--store` / $ZBATCH_STORE, the PostgreSQL
database holding the record) read-only, so it works while `zbatch run` is running."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import anyio

from runner.cli._command import Command
from runner.cli._help import result_json
from runner.cli._options import (
    add_json,
    add_out,
    add_store,
    positive_float,
    positive_int,
    record_at,
)
from runner.errors import ExitCode

# runner.dataset's export formats (not imported here: `zbatch --help` loads no dataset code;
# tests/test_cli_conventions.py keeps the two equal).
EXPORT_FORMATS = ("jsonl", "csv", "parquet", "webdataset", "folder")

# A record that cannot be read (locked past busy_timeout, damaged pages) and a disk that
# fails a read or refuses a write end these commands as they end `zbatch run`.
READ_EXITS = frozenset({ExitCode.DISK, ExitCode.BATCH_UNUSABLE})
NO_BATCH = {
    ExitCode.USAGE: "OUT (or the --store database) holds no zbatch batch, or another batch than"
    " the manifest's",
    ExitCode.BATCH_UNUSABLE: "or the --store database cannot be reached",
}


def cmd_status(args: argparse.Namespace) -> int:
    """Show a batch's cells, images, Buzz and failures from its record, offline.

    Reads OUT/batch.sqlite read-only and without the batch lock, so it works while
    `zbatch run` is running and changes nothing. Prints the batch name, cells (by their
    latest attempt) and attempts by state, images downloaded / pending / lost and the files
    on disk, Buzz charged / reserved / cap, the top failure reasons with their counts, and
    the time of the last recorded transition. --json prints the same as one document.

    --watch follows a batch that `zbatch run` is running in another terminal: the run's
    live panel, read from the record every --interval seconds, until the batch has no open
    cell and no run holds it (or Ctrl-C; both exit 0).

    With --store URL (or $ZBATCH_STORE) the record is read from that PostgreSQL database
    (a read-only session, no lock), from any host; OUT is still where the images and
    files are. A runner on another host holds the batch's advisory lock in PostgreSQL:
    --watch waits for it as for the folder's lock.

    Example:
        zbatch status out/demo
        zbatch status out/demo --json | jq .buzz
        zbatch status out/demo --watch --interval 5
    """
    from runner.cli._list import listed_instead
    from runner.dataset import read_status, render_status, status_json

    if args.watch:
        from runner.cli._watch import watch

        job = functools.partial(watch, args.out, interval_s=args.interval, at=record_at(args))
        try:
            anyio.run(job, backend="asyncio")
        except KeyboardInterrupt:
            pass  # watching ends on Ctrl-C; the batch is untouched
        return ExitCode.OK
    at = record_at(args)
    if at.url is None and listed_instead(args.out, as_json=args.json):  # `zbatch list`
        return ExitCode.OK
    status = anyio.run(functools.partial(read_status, args.out, at=at), backend="asyncio")
    print(json.dumps(status_json(status), indent=2) if args.json else render_status(status))
    return ExitCode.OK


def _status_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    add_json(p)
    add_store(p)


def _status_only_arguments(p: argparse.ArgumentParser) -> None:
    _status_arguments(p)
    p.add_argument(
        "--watch",
        action="store_true",
        help="follow a running batch until it has nothing open and no run holds it (Ctrl-C ends)",
    )
    p.add_argument(
        "--interval",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="with --watch, read the record every S seconds (default: %(default)s)",
    )


STATUS = Command("status", cmd_status, _status_only_arguments, exits=READ_EXITS, notes=NO_BATCH)


def cmd_report(args: argparse.Namespace) -> int:
    """Summarise a batch in a few lines, for a commit message or a chat post.

    Reads OUT/batch.sqlite read-only (safe while `zbatch run` is running): cells by the
    state of their latest attempt, images downloaded / pending / lost, the top failure
    reasons, Buzz charged, refunded (failed or canceled workflows credited back) and
    reserved against the cap, Buzz per usable (downloaded) image, the wall time from the
    first recorded transition to the last (every run of the batch, pauses included) and
    images per minute over it. --json prints the same as one document.

    With --store URL (or $ZBATCH_STORE) the record is read from that PostgreSQL database
    (a read-only session, no lock), from any host; OUT is still where the images and
    files are.

    Example:
        zbatch report out/demo
        zbatch report out/demo --json | jq .buzz
    """
    from runner.dataset import read_report, render_report, report_json

    job = functools.partial(read_report, args.out, at=record_at(args))
    report = anyio.run(job, backend="asyncio")
    print(json.dumps(report_json(report), indent=2) if args.json else render_report(report))
    return ExitCode.OK


REPORT = Command("report", cmd_report, _status_arguments, exits=READ_EXITS, notes=NO_BATCH)


def cmd_gallery(args: argparse.Namespace) -> int:
    """Write a batch's X/Y gallery: a static HTML page and a labelled PNG contact sheet.

    Reads OUT/batch.sqlite read-only (safe during a run) and the images under OUT, finds the
    axes (every input that differs between cells) and lays the images out on two of them,
    the others as filters, like AUTOMATIC1111's X/Y plot. Each image shows its inputs on
    hover and click; rows, columns and grid cells show their Buzz. Writes, atomically,
    OUT/gallery/index.html (open it from disk: no server, no network) and
    OUT/gallery/grid-X-Y.png. By default the two axes that make the fullest grid, the one
    with more values as rows. The images of one grid position sit side by side, each
    labelled with what tells it from the others (its seed, say). --thumb PX draws each
    image PX wide (default: a position is 200 px on the page, 160 on the sheet, shared).
    Shows the cells of the current manifest (and those a `run --keep` kept); --all also
    those a `run --replace` left out; --where model=base only the cells that match. See
    {docs}/gallery.md.

    With --store URL (or $ZBATCH_STORE) the record is read from that PostgreSQL database
    (a read-only session, no lock), from any host; OUT is still where the images and
    files are. The gallery is written under OUT.

    Example:
        zbatch gallery out/demo
        zbatch gallery out/demo --thumb 256
        zbatch gallery out/demo --x model --y prompt
        zbatch gallery out/demo --state downloaded,lost
    """
    from runner.dataset import make_gallery, render_result

    states = args.state.split(",")
    result = anyio.run(
        functools.partial(
            make_gallery,
            args.out,
            x=args.x,
            y=args.y,
            states=states,
            thumb=args.thumb,
            all_cells=args.all,
            where=args.where,
            at=record_at(args),
        ),  # fmt: skip
        backend="asyncio",
    )
    print(result_json(result) if args.json else render_result(result))
    return ExitCode.OK


THUMB_RANGE = (32, 1024)  # --thumb: smaller is unreadable; larger, the full image is a click away


def thumb_px(text: str) -> int:
    """The type of --thumb: a whole number of pixels in THUMB_RANGE."""
    low, high = THUMB_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not {low}..{high} pixels")
    return value


def _gallery_arguments(p: argparse.ArgumentParser) -> None:
    add_json(p)
    add_out(p)
    add_store(p)
    p.add_argument("--x", metavar="FIELD", help="the axis across the columns (default: chosen)")
    p.add_argument("--y", metavar="FIELD", help="the axis down the rows (default: chosen)")
    p.add_argument(
        "--thumb",
        type=thumb_px,
        metavar="PX",
        help=f"each image's width in pixels, {THUMB_RANGE[0]}..{THUMB_RANGE[1]} (default: a grid "
        "position 200 px wide on the page, 160 on the sheet, shared by its images)",
    )
    p.add_argument(
        "--state",
        default="downloaded",
        metavar="STATES",
        help="image states to show, comma-separated: downloaded, pending, lost "
        "(default: %(default)s)",
    )
    _add_all(p)


def _add_all(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="only the cells whose FIELD (model, a column such as steps or cfg_scale, or"
        " var_NAME) is VALUE; repeat to require several",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="also the cells a `run --replace` left out of the manifest (default: the current"
        " manifest's cells, and those a `run --keep` kept)",
    )


GALLERY = Command(
    "gallery",
    cmd_gallery,
    _gallery_arguments,
    exits=READ_EXITS,
    notes={
        ExitCode.USAGE: "OUT (or the --store database) holds no batch, or an axis or state is"
        " not one the batch has",
        ExitCode.BATCH_UNUSABLE: NO_BATCH[ExitCode.BATCH_UNUSABLE],
    },
)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a batch's images and metadata: JSONL, CSV, Parquet, WebDataset shards or a folder.

    Reads OUT/batch.sqlite read-only (safe while `zbatch run` is running) and streams one
    row per image, with every input that made it and what it cost ({docs}/dataset.md), to
    --to (default: OUT/export/dataset.<format>, or the folder OUT/export/webdataset/).
    Without --format it writes JSON Lines (jsonl) and says so. --to creates the last folder
    of its path when that one alone is missing, never more.
    Memory stays flat however many rows. Every file is written under a temp name and
    renamed into place, so a reader never sees half an export. --state picks images by
    state (comma-separated: downloaded, pending, lost); webdataset takes downloaded only.
    Parquet needs pyarrow: pip install 'zbatch[parquet]'. Images missing from disk are
    left out of a WebDataset, with a warning. Exports the cells of the current manifest (and
    those a `run --keep` kept); --all also those a `run --replace` left out; --where
    model=base only the rows that match. --format folder: every image beside its one-line
    .txt caption in one folder, for trainers (kohya-ss, OneTrainer, diffusers' imagefolder);
    --subsets FIELD --repeats N: kohya-ss subset folders N_<value> ({docs}/dataset.md).
    A caption is the manifest's caption template filled in (the `text` column).

    With --store URL (or $ZBATCH_STORE) the record is read from that PostgreSQL database
    (a read-only session, no lock), from any host; OUT is still where the images and
    files are. The images are read from OUT; the default --to is under OUT.

    Example:
        zbatch export out/demo                  # out/demo/export/dataset.jsonl
        zbatch export out/demo --format parquet
        zbatch export out/demo --format webdataset --shard-size 500 --to /data/demo-wds
        zbatch export out/demo --format csv --state lost --to lost.csv
        zbatch export out/demo --format folder --to train --subsets model --repeats 10
    """
    from runner.dataset import DEFAULT_FORMAT, describe, export

    fmt = args.format or DEFAULT_FORMAT
    states = tuple(s.strip() for s in args.state.split(",") if s.strip())
    job = functools.partial(
        export, args.out, fmt, to=args.to, states=states, shard_size=args.shard_size,
        all_cells=args.all, where=args.where, subsets=args.subsets, repeats=args.repeats,
        at=record_at(args),
    )  # fmt: skip
    result = anyio.run(job, backend="asyncio")
    if result.missing:
        print(
            f"zbatch: warning: {result.missing} downloaded images are missing from disk and "
            "were left out (zbatch verify finds them)",
            file=sys.stderr,
        )
    if args.json:
        print(result_json(result))
        return ExitCode.OK
    said = describe(result)
    if args.format is None:
        said += (
            f"; {DEFAULT_FORMAT} is the default (--format csv, parquet or webdataset for others)"
        )
    print(said)
    return ExitCode.OK


def _export_arguments(p: argparse.ArgumentParser) -> None:
    add_json(p)
    add_out(p)
    add_store(p)
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        metavar="FORMAT",
        help="jsonl, csv, parquet, webdataset or folder (default: jsonl, JSON Lines)",
    )
    p.add_argument(
        "--to",
        type=Path,
        metavar="PATH",
        help="the file (the folder for webdataset and folder) to write (default: under "
        "OUT/export/; folder: required, outside OUT)",
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
        type=positive_int,
        default=1000,
        metavar="N",
        help="webdataset: samples per tar shard (default: %(default)s)",
    )
    p.add_argument(
        "--subsets",
        metavar="FIELD",
        help="folder: kohya-ss subset folders REPEATS_<value>, one per value of FIELD "
        "(var_NAME, model or a column such as steps)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        metavar="N",
        help="folder: the repeats in the subset folders' names (default: 1; alone: one "
        "subset folder N_<batch name>)",
    )
    _add_all(p)


EXPORT = Command(
    "export",
    cmd_export,
    _export_arguments,
    exits=READ_EXITS,
    notes={
        ExitCode.ERROR: "or pyarrow is missing for parquet",
        ExitCode.USAGE: "OUT (or the --store database) holds no batch, or a format, state or"
        " shard size not allowed",
        ExitCode.BATCH_UNUSABLE: NO_BATCH[ExitCode.BATCH_UNUSABLE],
    },
)
