"""The invariants the crash harness checks: the emulator's introspection against the batch record.

`check_any_instant` holds after every SIGKILL (and at the end); `check_final` only once the
run has finished; `check_token` once everything is written. Each returns the broken
invariants as sentences, so a torture run can list all of them instead of stopping at one.
The database is read from a copy (`read_record`): opening the real file after a crash would
let this process replay and checkpoint the WAL, and the runner's own recovery is under test.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = "batch.sqlite"
STATES_BEFORE_SUBMIT = {"planned"}
UNFINISHED = {"planned", "submitting", "running"}


@dataclass(frozen=True)
class AttemptRow:
    cell_key: str
    attempt: int
    state: str
    workflow_id: str | None
    reserved_buzz: int
    charged_buzz: int
    quantity: int


@dataclass(frozen=True)
class ImageRow:
    attempt_id: int
    idx: int
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Record:
    """What the batch database says, read from a consistent copy."""

    cap_buzz: int
    committed_buzz: int
    attempts: dict[str, AttemptRow]  # by externalId
    images_by_attempt: dict[int, int]  # attempt id -> image rows
    attempt_ids: dict[str, int]  # externalId -> attempt id
    image_states: dict[str, int]
    downloaded: list[ImageRow]
    cells: int
    cells_resolved: int  # succeeded, blocked, rejected, or out of attempts
    cells_planned: int  # cells with a planned attempt (not submitted yet)


@dataclass(frozen=True)
class Observation:
    """The figures of one check, for the report."""

    duplicates: int
    net_buzz: int
    committed_buzz: int


def account_of(token: str) -> str:
    """The emulator's account name for a token (runner/emulator/ledger.py's `account_id`)."""
    return "acct-" + hashlib.sha256(token.encode()).hexdigest()[:12]


# a request's quantity, as each database reads its JSON
_QUANTITY = {
    "sqlite": "json_extract(c.request, '$.quantity')",
    "postgresql": "(c.request::json ->> 'quantity')::int",
}


def read_record(out: Path, *, scratch: Path, store: str | None = None) -> Record | None:
    """The batch record under `out`, read from a copy of the database and its WAL; or, with
    `store` (a PostgreSQL URL, `zbatch run --store`), read from that database."""
    if store is not None:
        return _read_postgresql(store)
    db_path = out / DB_NAME
    if not db_path.exists():
        return None
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for suffix in ("", "-wal"):  # not -shm: SQLite rebuilds the index from the WAL
        source = out / (DB_NAME + suffix)
        if source.exists():
            shutil.copyfile(source, scratch / (DB_NAME + suffix))
    db = sqlite3.connect(scratch / DB_NAME)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "batch" not in tables or db.execute("SELECT COUNT(*) FROM batch").fetchone()[0] == 0:
            return None
        return _read(db)
    finally:
        db.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _read_postgresql(url: str) -> Record | None:
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute("SELECT to_regclass('batch') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return None
        count = db.execute("SELECT COUNT(*) FROM batch").fetchone()
        if count is None or count[0] == 0:
            return None
        return _read(db, "postgresql")


def _read(db: Any, backend: str = "sqlite") -> Record:
    cap, committed = db.execute("SELECT cap_buzz, committed_buzz FROM batch").fetchone()
    attempts: dict[str, AttemptRow] = {}
    ids: dict[str, int] = {}
    for row in db.execute(
        "SELECT a.id, a.external_id, a.cell_key, a.attempt, a.state, a.workflow_id,"
        f" a.reserved_buzz, a.charged_buzz, {_QUANTITY[backend]}"
        " FROM attempts a JOIN cells c ON c.key = a.cell_key"
    ):
        ids[row[1]] = row[0]
        attempts[row[1]] = AttemptRow(*row[2:])
    per_attempt = dict(db.execute("SELECT attempt_id, COUNT(*) FROM images GROUP BY attempt_id"))
    states = dict(db.execute("SELECT state, COUNT(*) FROM images GROUP BY state"))
    downloaded = [
        ImageRow(*r)
        for r in db.execute(
            "SELECT attempt_id, idx, path, sha256, size_bytes FROM images"
            " WHERE state = 'downloaded'"
        )
    ]
    (cells,) = db.execute("SELECT COUNT(*) FROM cells").fetchone()
    (resolved,) = db.execute(
        "SELECT COUNT(*) FROM cells c WHERE EXISTS (SELECT 1 FROM attempts a"
        " WHERE a.cell_key = c.key AND (a.state IN ('succeeded', 'blocked', 'rejected')"
        " OR (a.state IN ('failed', 'expired', 'canceled') AND a.attempt = c.max_attempts)))"
    ).fetchone()
    (planned,) = db.execute(
        "SELECT COUNT(DISTINCT cell_key) FROM attempts WHERE state = 'planned'"
    ).fetchone()
    return Record(
        cap_buzz=cap,
        committed_buzz=committed,
        attempts=attempts,
        images_by_attempt=per_attempt,
        attempt_ids=ids,
        image_states=states,
        downloaded=downloaded,
        cells=cells,
        cells_resolved=resolved,
        cells_planned=planned,
    )


def check_any_instant(
    state: Mapping[str, Any], record: Record | None, out: Path, account: str, cap_buzz: int
) -> tuple[Observation, list[str]]:
    """What must hold right after a SIGKILL, whatever instant it hit."""
    problems: list[str] = []
    workflows: Mapping[str, Any] = state["workflows"]
    duplicates = 0
    for key, entry in workflows.items():
        if len(entry["ids"]) > 1:
            duplicates += len(entry["ids"]) - 1
            problems.append(f"externalId {key} has {len(entry['ids'])} workflows {entry['ids']}")
        if entry["whatif_preview"]:
            problems.append(f"externalId {key} was sent as a whatif")
    net = int(state["accounts"].get(account, {}).get("net_buzz", 0))
    if net > cap_buzz:
        problems.append(f"the emulator charged {net} Buzz net, over the cap of {cap_buzz}")
    if record is None:
        if state["submit_attempts"]:
            problems.append("the service saw submits but the batch has no database")
        return Observation(duplicates, net, 0), problems
    if record.committed_buzz > record.cap_buzz:
        problems.append(f"ledger committed {record.committed_buzz} > cap {record.cap_buzz}")
    if net > record.committed_buzz:
        problems.append(
            f"the service charged {net} Buzz, the ledger counts {record.committed_buzz}"
        )
    ledger = sum(a.reserved_buzz + a.charged_buzz for a in record.attempts.values())
    if ledger != record.committed_buzz:
        problems.append(f"attempts hold {ledger} Buzz, the batch row {record.committed_buzz}")
    problems += _intents_before_calls(state, record)
    problems += _downloaded_on_disk(record, out)
    return Observation(duplicates, net, record.committed_buzz), problems


def _intents_before_calls(state: Mapping[str, Any], record: Record) -> list[str]:
    """Every externalId the service saw was recorded as an intent first."""
    problems: list[str] = []
    for key in set(state["submit_attempts"]) | set(state["workflows"]):
        row = record.attempts.get(key)
        if row is None:
            problems.append(f"the service saw externalId {key}, unknown to the batch")
        elif row.state in STATES_BEFORE_SUBMIT:
            problems.append(f"the service saw externalId {key}, still {row.state} in the batch")
    for key, row in record.attempts.items():
        ids = state["workflows"].get(key, {}).get("ids", [])
        if row.workflow_id is not None and row.workflow_id not in ids:
            problems.append(f"{key} records workflow {row.workflow_id}, the service has {ids}")
    return problems


def _downloaded_on_disk(record: Record, out: Path) -> list[str]:
    problems: list[str] = []
    for image in record.downloaded:
        path = out / image.path
        if not path.is_file():
            problems.append(f"image {image.path} is recorded downloaded but missing")
            continue
        data = path.read_bytes()
        if len(data) != image.size_bytes or hashlib.sha256(data).hexdigest() != image.sha256:
            problems.append(f"image {image.path} does not match its recorded size and sha256")
    return problems


def check_final(
    state: Mapping[str, Any], record: Record, out: Path, account: str, *, binding: bool
) -> list[str]:
    """What must hold once the final run has exited."""
    problems: list[str] = []
    states = Counter(a.state for a in record.attempts.values())
    for name in ("submitting", "running"):
        if states[name]:
            problems.append(f"{states[name]} attempts left {name}")
    if states["planned"] and not binding:
        problems.append(f"{states['planned']} attempts left planned without a binding cap")
    if binding and not record.cells_planned:
        problems.append("the cap was meant to bind but no cell was left unsubmitted")
    if record.cells_resolved + record.cells_planned != record.cells:
        unresolved = record.cells - record.cells_resolved - record.cells_planned
        problems.append(f"{unresolved} of {record.cells} cells neither resolved nor planned")
    charged = sum(a.charged_buzz for a in record.attempts.values())
    reserved = sum(a.reserved_buzz for a in record.attempts.values())
    net = int(state["accounts"].get(account, {}).get("net_buzz", 0))
    if charged != net or reserved or record.committed_buzz != charged:
        problems.append(
            f"ledger charged {charged} reserved {reserved} committed {record.committed_buzz};"
            f" the service's net is {net}"
        )
    for key, row in record.attempts.items():
        ids = state["workflows"].get(key, {}).get("ids", [])
        if row.state not in ("planned", "rejected") and len(ids) != 1:
            problems.append(f"{key} ended {row.state} with {len(ids)} workflows at the service")
        if row.state == "succeeded":
            got = record.images_by_attempt.get(record.attempt_ids[key], 0)
            if got != row.quantity:
                problems.append(f"{key} succeeded with {got} image rows, asked {row.quantity}")
    if record.image_states.get("pending"):
        problems.append(f"{record.image_states['pending']} images left pending")
    on_disk = sorted(
        p.relative_to(out).as_posix()
        for p in (out / "images").rglob("*")
        if p.is_file() and p.suffix != ".tmp"
    )
    recorded = sorted(i.path for i in record.downloaded)
    if on_disk != recorded:
        extra = sorted(set(on_disk) - set(recorded))
        missing = sorted(set(recorded) - set(on_disk))
        problems.append(f"files on disk differ from the record: extra {extra}, missing {missing}")
    temps = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp"))
    if temps:
        problems.append(f"temporary files left: {temps}")
    return problems


def check_token(token: str, out: Path, logs: Iterable[Path]) -> list[str]:
    """The token appears in no file under `out` and in none of the captured output."""
    needle = token.encode()
    files = [p for p in out.rglob("*") if p.is_file()] + [p for p in logs if p.exists()]
    return [f"the token appears in {p}" for p in files if needle in p.read_bytes()]
