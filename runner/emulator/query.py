"""QueryWorkflows: tag filters, date and status filters, ordering and opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.emulator.clock import parse_iso
from runner.emulator.problems import Problem
from runner.emulator.workflows import WorkflowRecord

if TYPE_CHECKING:
    from runner.emulator.service import Emulator

DEFAULT_TAKE = 100
FAILED_LIKE = frozenset({"failed", "expired", "canceled"})


@dataclass(frozen=True)
class QueryParams:
    """The query string of GET /v2/consumer/workflows, already split into values."""

    tags: tuple[str, ...] = ()
    cursor: str | None = None
    take: int | None = None
    ascending: bool = False
    exclude_failed: bool = False
    from_date: str | None = None
    to_date: str | None = None
    query: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def encode_cursor(seq: int) -> str:
    """An opaque cursor: base64 of the position after which the next page starts."""
    raw = json.dumps({"after": seq}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position inside a cursor; 400 when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise Problem(
            400, f"The cursor {cursor!r} is not valid; pass back a `next` value."
        ) from None
    if not isinstance(after, int):
        raise Problem(400, f"The cursor {cursor!r} is not valid; pass back a `next` value.")
    return after


def _date(text: str | None, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise Problem(400, f"{name} {text!r} is not an ISO-8601 date-time.") from None


def _matches(record: WorkflowRecord, params: QueryParams, now_s: float, epoch_s: float) -> bool:
    if not all(tag in record.tags for tag in params.tags):
        return False
    if params.exclude_failed and record.status(now_s) in FAILED_LIKE:
        return False
    created_unix_s = epoch_s + record.created_s
    from_s, to_s = _date(params.from_date, "fromDate"), _date(params.to_date, "toDate")
    if from_s is not None and created_unix_s < from_s:
        return False
    if to_s is not None and created_unix_s > to_s:
        return False
    return not params.query or params.query.lower() in json.dumps(record.metadata).lower()


def query_workflows(
    emulator: Emulator, account: str, params: QueryParams, *, base_url: str
) -> dict[str, Any]:
    """One page `{next, items}`; `next` is "" on the last page (the schema requires a string)."""
    emulator.settle()
    take = params.take if params.take is not None else DEFAULT_TAKE
    take = max(1, min(take, emulator.config.max_take))
    after = decode_cursor(params.cursor) if params.cursor else None
    now_s, epoch_s = emulator.clock.now(), emulator.config.epoch_unix_s
    records = emulator.account_records(account)
    if not params.ascending:
        records.reverse()
    if after is not None:
        records = [r for r in records if (r.seq > after if params.ascending else r.seq < after)]
    page: list[WorkflowRecord] = []
    more = False
    for record in records:
        if not _matches(record, params, now_s, epoch_s):
            continue
        if len(page) == take:
            more = True
            break
        page.append(record)
    items = [emulator.render_for(record, base_url, now_s) for record in page]
    return {"next": encode_cursor(page[-1].seq) if more else "", "items": items}
