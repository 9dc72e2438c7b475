"""More of the operations' entry points to the record, as functions of an open `Store`.

`Store` (`_store.py`) is at the size a module may have, so the operations' later transitions
and reads enter here, each through the store's own transaction (`Store._tx`) or read
(`Store._read`), exactly as its methods do: `retry_preview` (what `zbatch retry` would
choose, without choosing it) and `mark_image_refetched` (`zbatch verify --repair`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from runner.store import _ops as ops
from runner.store._rows import RetryPlan
from runner.store._store import Store


async def retry_preview(
    store: Store, *, states: Collection[str], cells: Sequence[str] = ()
) -> tuple[int, RetryPlan]:
    """How many cells `Store.retry_cells` would give a new attempt, and a plan holding none
    but the named cells it would leave alone and why. Reads only (a read-only store will do)."""
    rows, skipped = await store._read(ops.retry_candidates, states, cells)
    return len(rows), RetryPlan(chosen=[], skipped=skipped)


async def mark_image_refetched(
    store: Store, attempt_id: int, index: int, sha256: str, size_bytes: int
) -> None:
    """image downloaded -> downloaded with new bytes and their sha256 and size: the recorded
    sha256 was of bytes that do not decode, and the service's fresh ones do."""
    await store._tx(ops.mark_image_refetched, attempt_id, index, sha256, size_bytes)
