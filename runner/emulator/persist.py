"""The emulator's state on disk: a snapshot a later emulator starts from (docs/emulator.md).

`zbatch run --emulator` keeps it in the batch folder (`OUT/.emulator/state.json`), so that
`zbatch retry`, `cancel` and `verify --repair` with `--emulator` meet the same service the
run met: its workflows (each with its whole planned life, so statuses, outputs and blob ids
come back as they were), the idempotency of each externalId, the Buzz ledger. Image bytes
are not stored: they are drawn again from each workflow's input and seed, byte for byte.
Request counters and fired faults are the one run's and are not kept.

The file is JSON, written atomically (a private temp file, fsync, rename, folder fsync) and
readable by its owner only (0600, as the batch's other files). `keep_saved` writes it every
`every_s` seconds while something changed, and once more when the emulator stops, so a
killed run leaves a state at most `every_s` old. Times are the emulator clock's seconds: a
restored emulator's clock starts where the saved one stood (`saved_now_s`).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from runner.emulator.ledger import Account
from runner.emulator.workflows import JobPlan, WorkflowRecord

if TYPE_CHECKING:
    from runner.emulator.service import Emulator

VERSION = 1
STATE_FILE = "state.json"


class StateError(ValueError):
    """A state file that cannot be read back: not JSON, or not an emulator's state."""


def snapshot(emulator: Emulator) -> dict[str, Any]:
    """The emulator's durable state as plain JSON values (a deep copy: safe to write later
    from another thread while the emulator goes on)."""
    emulator.settle()
    ledger = emulator.ledger
    return {
        "version": VERSION,
        "seed": emulator.config.seed,
        "now_s": emulator.clock.now(),
        "records": [dataclasses.asdict(r) for r in emulator.records.values()],
        "by_key": [
            [account, external_id, known if isinstance(known, str) else dict(known)]
            for (account, external_id), known in emulator._by_key.items()
        ],
        "accounts": {acct: dataclasses.asdict(a) for acct, a in ledger.accounts.items()},
        "next_tx": ledger._next_tx,
        "submit_attempts": dict(emulator.submit_attempts),
    }


def restore(emulator: Emulator, state: dict[str, Any]) -> None:
    """Load `state` (from `snapshot`) into a fresh `emulator`; StateError if it is not one."""
    try:
        records = [_record(r) for r in state["records"]]
        by_key = {(str(a), str(e)): known for a, e, known in state["by_key"]}
        accounts = {acct: Account(**a) for acct, a in state["accounts"].items()}
        next_tx = int(state["next_tx"])
        attempts = Counter({str(k): int(v) for k, v in state["submit_attempts"].items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"not an emulator state ({type(exc).__name__}: {exc})") from None
    for record in sorted(records, key=lambda r: r.seq):
        emulator.records[record.id] = record
        emulator._by_account.setdefault(record.account, []).append(record.id)
        for index, blob_id in enumerate(record.blob_ids):
            emulator._blobs[blob_id] = (record.id, index)
        if not record.refunded and record.refund_due():
            heapq.heappush(emulator._refunds, (record.terminal_s, record.seq, record.id))
    emulator._by_key.update(by_key)
    emulator.ledger.accounts.update(accounts)
    emulator.ledger._next_tx = next_tx
    emulator.submit_attempts.update(attempts)
    emulator._seq = itertools.count(max((r.seq for r in records), default=0) + 1)


def _record(data: dict[str, Any]) -> WorkflowRecord:
    fields = dict(data)
    fields["jobs"] = [JobPlan(**job) for job in fields["jobs"]]
    return WorkflowRecord(**fields)


def load(path: Path) -> dict[str, Any] | None:
    """The state saved at `path`, None when there is none; StateError when it is unusable.
    Temp files a save killed midway left beside it are removed (only `save` writes there)."""
    if path.parent.is_dir():
        for stray in path.parent.glob(f".{path.name}.*.tmp"):
            stray.unlink(missing_ok=True)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: cannot be read ({exc})") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path}: not JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        found = state.get("version") if isinstance(state, dict) else None
        raise StateError(f"{path}: not an emulator state of version {VERSION} (found {found!r})")
    if not isinstance(state.get("now_s"), int | float):
        raise StateError(f"{path}: not an emulator state (no now_s)")
    return state


def saved_now_s(state: dict[str, Any] | None) -> float:
    """The clock second the saved emulator stood at (0 for no state)."""
    return float(state["now_s"]) if state is not None else 0.0


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically, private (0600); its folder is made 0700. Blocking."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(state, separators=(",", ":"), sort_keys=True).encode("utf-8")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Saver:
    """Writes an emulator's state to `path` when it changed since the last write (or load)."""

    def __init__(self, emulator: Emulator, path: Path) -> None:
        self.emulator = emulator
        self.path = path
        self.saved_revision = emulator.revision
        self.saves = 0

    async def checkpoint(self) -> bool:
        """Save now if anything changed; whether it saved. The snapshot is taken on the
        event loop (the emulator's), the file written in a worker thread."""
        if self.emulator.revision == self.saved_revision:
            return False
        state = snapshot(self.emulator)  # may post refunds due: taken with them
        revision = self.emulator.revision
        await anyio.to_thread.run_sync(save, self.path, state)
        self.saved_revision = revision
        self.saves += 1
        return True

    async def keep_saved(self, every_s: float) -> None:
        """Checkpoint every `every_s` seconds (real time), until cancelled."""
        while True:
            await anyio.sleep(every_s)
            await self.checkpoint()
