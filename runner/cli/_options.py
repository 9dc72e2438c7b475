"""The option types and option groups the commands share, each with one set of bounds.

A runner setting given on the command line has the manifest's bounds (`SETTING_RANGES`):
`zbatch run --concurrency 0` and `zbatch retry --concurrency 0` are refused alike, with the
manifest's wording. `add_engine_options` adds the engine's limits to `run` and `retry`;
`add_target_options` the API or embedded emulator they run against.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runner.contract import number_text
from runner.manifest import CAPTIONS, MAX_BUDGET_BUZZ, SETTING_RANGES

if TYPE_CHECKING:
    from runner.dataset import RecordAt

MAX_FLAG_INT = MAX_BUDGET_BUZZ  # the manifest's largest Buzz cap; far inside SQLite's int64
MAX_TIME_SCALE = 1000.0


def _allowed(name: str) -> str:
    low, high, whole = SETTING_RANGES[name]
    what = "a whole number" if whole else "a number"
    return f"{what} {number_text(low)}..{number_text(high)}"


def whole_setting(name: str) -> Callable[[str], int]:
    """The type of a flag that sets the whole-number runner setting `name`, in its range."""
    low, high, whole = SETTING_RANGES[name]
    assert whole, f"{name} is not a whole-number setting"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {number_text(low)}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {number_text(high)}")
        return value

    return parse


def number_setting(name: str) -> Callable[[str], float]:
    """The type of a flag that sets the runner setting `name` (a number), in its range."""
    low, high, _ = SETTING_RANGES[name]

    def parse(text: str) -> float:
        value = non_negative_float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} must be between {number_text(low)} and {number_text(high)}"
            )
        return value

    return parse


def positive_int(text: str) -> int:
    """A whole number 1..MAX_FLAG_INT (a Buzz cap, a shard size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    if value > MAX_FLAG_INT:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_FLAG_INT}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def time_scale(text: str) -> float:
    """--time-scale of an embedded emulator: 0 (instant) .. MAX_TIME_SCALE."""
    value = non_negative_float(text)
    if value > MAX_TIME_SCALE:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_TIME_SCALE:g}")
    return value


_DURATION_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?")
MAX_DURATION_S = 30 * 24 * 3600.0
GIVE_UP_AFTER_DEFAULT = "6h"  # runner.engine.DEFAULT_GIVE_UP_AFTER_S, as --help says it


def duration(text: str) -> float:
    """A duration in seconds: `6h`, `90m`, `1h30m`, `45s`, or a number of seconds."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (allowed: e.g. 6h, 90m, 1h30m, 45s, or seconds)"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    value = hours * 3600 + minutes * 60 + seconds
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0 seconds")
    if value > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 30 days (720h)")
    return value


def add_give_up_after(parser: argparse.ArgumentParser) -> None:
    """--give-up-after: how long a run waits out an outage of the service (the engine's
    `DEFAULT_GIVE_UP_AFTER_S` without it: not imported here, so `zbatch plan` loads no
    engine; tests/test_world.py checks the two agree)."""
    parser.add_argument(
        "--give-up-after",
        type=duration,
        metavar="DURATION",
        help="once the service has answered, how long an outage is waited out before the run"
        f" stops (exit 130, resumable): e.g. 30m, 2h (default: {GIVE_UP_AFTER_DEFAULT})",
    )


def out_and_name(text: str) -> tuple[Path, str | None]:
    """OUT and, when OUT is a manifest, its batch name (None for a folder)."""
    path = Path(text)
    if not path.is_file():
        return path, None  # a folder, or nothing: the command says which it wanted
    from runner.errors import ManifestError
    from runner.manifest import load_manifest

    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        first = str(exc).splitlines()[0]
        raise argparse.ArgumentTypeError(
            f"{text} is a file but not a manifest whose `out` could be read: {first}"
        ) from None
    return manifest.out, manifest.name


class OutAction(argparse.Action):
    """Sets `out` and `batch_name` (the manifest's name when OUT is a manifest: a batch in
    PostgreSQL (`--store`) of another name is refused rather than read)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        try:
            out, name = out_and_name(str(values))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, out)
        namespace.batch_name = name


def add_out(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(batch_name=None)
    parser.add_argument(
        "out",
        action=OutAction,
        metavar="OUT",
        help="the batch's output folder, or its manifest (whose `out` is used)",
    )


STORE_ENV = "ZBATCH_STORE"


def store_url(text: str) -> str | None:
    """`--store`: a postgresql:// URL; an empty value keeps OUT/batch.sqlite. A refusal never
    repeats the text: it may hold a password."""
    from runner.store import is_store_url

    if not text.strip():
        return None
    if not is_store_url(text.strip()):
        raise argparse.ArgumentTypeError(
            "takes a postgresql://user@host:port/database URL (the text given is not shown:"
            " it may hold a password)"
        )
    return text.strip()


_NO_PASSWORD = (
    "Give the password by PGPASSWORD or ~/.pgpass rather than in the URL; it is never shown"
)
STORE_HELP = {
    "run": "keep the batch's record in PostgreSQL (postgresql://user@host:port/database;"
    f" default: ${STORE_ENV}, else OUT/batch.sqlite); the images stay in OUT. {_NO_PASSWORD}",
    "batch": "the batch's record is in PostgreSQL, as `zbatch run --store` put it there"
    f" (postgresql://user@host:port/database; default: ${STORE_ENV}, else OUT/batch.sqlite);"
    f" the images and files stay in OUT. {_NO_PASSWORD}",
    "list": "list the batch kept in this PostgreSQL database instead of searching FOLDER (a"
    f" database holds one batch; default: ${STORE_ENV}). {_NO_PASSWORD}",
}


def add_store(parser: argparse.ArgumentParser, *, role: str = "batch") -> None:
    """--store URL (default: $ZBATCH_STORE): where the batch's record is; `role` picks the
    help: "run" (it keeps it there), "batch" (a command that opens it), "list"."""
    parser.add_argument(
        "--store",
        type=store_url,
        default=os.environ.get(STORE_ENV, ""),
        metavar="URL",
        help=STORE_HELP[role],
    )


def record_at(args: argparse.Namespace) -> RecordAt:
    """Where the command finds the batch's record: `--store` / $ZBATCH_STORE, else OUT's
    batch.sqlite; with a store, the name of the manifest given as OUT must be its batch's."""
    from runner.dataset import RecordAt

    url = getattr(args, "store", None)
    if not url:
        return RecordAt()
    return RecordAt(url, getattr(args, "batch_name", None))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document (for scripts)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress display (stderr: warnings and errors; OUT/log.jsonl: every event)",
    )


def add_engine_options(parser: argparse.ArgumentParser, *, defaults: str) -> None:
    """--concurrency, --rate, --downloads: the engine's limits, in the manifest's bounds.

    `defaults` says whose limits apply without the flag: "the manifest's", "the batch's".
    """
    parser.add_argument(
        "--concurrency",
        type=whole_setting("in_flight"),
        metavar="N",
        help=f"workflows in flight, {_allowed('in_flight')} (default: {defaults} limits.in_flight)",
    )
    parser.add_argument(
        "--rate",
        type=number_setting("submit_per_s"),
        metavar="R",
        help=f"submissions per second, {_allowed('submit_per_s')}"
        f" (default: {defaults} limits.submit_per_s)",
    )
    parser.add_argument(
        "--downloads",
        type=whole_setting("downloads"),
        metavar="N",
        help=f"images downloaded at once, {_allowed('downloads')}"
        f" (default: {defaults} limits.downloads)",
    )


def add_target_options(parser: argparse.ArgumentParser, *, faults: bool) -> None:
    """--api-url, or --emulator and its --time-scale (and, with `faults`, --faults, --seed)."""
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help="the orchestration API (default: $CIVITAI_API_BASE_URL or Civitai's)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="run against the embedded emulator on 127.0.0.1 (no token, no network)",
    )
    parser.add_argument(
        "--time-scale",
        type=time_scale,
        default=0.05,
        metavar="X",
        help="with --emulator: simulated job durations times X (default: %(default)s)",
    )
    if faults:
        parser.add_argument(
            "--faults", type=Path, metavar="FILE", help="with --emulator: a fault profile"
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="with --emulator: its seed (default: 0)"
        )


def captions_mode(text: str) -> str:
    if text not in CAPTIONS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a captions mode (allowed: {', '.join(CAPTIONS)})"
        )
    return text
