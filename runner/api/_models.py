"""Typed results of the orchestration API, parsed defensively from its JSON (no I/O).

camelCase comes in, snake_case goes out, and every result keeps `raw` (the JSON object it was
built from) for the record. Optional or unexpected-but-harmless fields become None; a body
that cannot be a result at all (not an object, no `status`, a field of the wrong type) raises
`ShapeError`, which `api.py` turns into an `ApiError`. Error bodies (`parse_problem`) and
`Retry-After` headers (`parse_retry_after`) never raise: whatever came is made readable.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ShapeError(ValueError):
    """A JSON body does not have the shape of the expected result."""


class WorkflowStatus(StrEnum):
    """Status of a workflow, step or job (civitai-api.md §5).

    `UNKNOWN` stands for any status string this client does not know yet (the original
    string stays in `raw`); like the documented non-final states it is not terminal.
    """

    UNASSIGNED = "unassigned"
    PREPARING = "preparing"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, failed, expired and canceled: the status never changes again."""
        return self in _TERMINAL

    @classmethod
    def parse(cls, text: str) -> WorkflowStatus:
        """The member for `text`, or `UNKNOWN` for a status the service added later."""
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


_TERMINAL = frozenset(
    {
        WorkflowStatus.SUCCEEDED,
        WorkflowStatus.FAILED,
        WorkflowStatus.EXPIRED,
        WorkflowStatus.CANCELED,
    }
)


@dataclass(frozen=True)
class ImageResult:
    """One output image of a workflow (an `ImageBlob`), numbered in output order from 0."""

    index: int
    blob_id: str
    available: bool
    url: str | None
    url_expires_at: datetime | None
    blocked_reason: str | None
    nsfw_level: str | None
    width: int | None
    height: int | None
    job_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def deliverable(self) -> bool:
        """Rendered and not blocked by moderation: worth downloading."""
        return self.available and not self.blocked_reason


@dataclass(frozen=True)
class Blob:
    """A blob as `POST /v2/consumer/blobs/{id}/refresh` returns it: a fresh signed URL."""

    id: str
    available: bool
    url: str | None
    url_expires_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Workflow:
    """A workflow as the service reported it, with its images, errors and Buzz movements.

    `id` is None for a whatif preview. `cost_total` is the service's price (`cost.total`);
    `charged_buzz` is what the account actually lost so far: debits minus credits over
    `transactions.list` (0 for a refunded failure). `insufficient_buzz` is set by a whatif.
    """

    id: str | None
    status: WorkflowStatus
    external_id: str | None
    tags: tuple[str, ...]
    created_at: datetime | None
    completed_at: datetime | None
    cost_total: int | None
    debited_buzz: int
    credited_buzz: int
    insufficient_buzz: bool | None
    images: tuple[ImageResult, ...]
    errors: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def charged_buzz(self) -> int:
        """Debits minus credits: the net Buzz this workflow cost."""
        return self.debited_buzz - self.credited_buzz

    @property
    def is_terminal(self) -> bool:
        """The workflow reached succeeded, failed, expired or canceled."""
        return self.status.is_terminal


@dataclass(frozen=True)
class WorkflowPage:
    """One page of `GET /v2/consumer/workflows`; `next` is None on the last page."""

    items: tuple[Workflow, ...]
    next: str | None


def parse_workflow(data: object) -> Workflow:
    """Build a `Workflow` from a decoded JSON body; raise `ShapeError` if it cannot be one."""
    obj = _object(data, "workflow")
    status = obj.get("status")
    if not isinstance(status, str):
        raise ShapeError(f"workflow has no string 'status' (got {type(status).__name__})")
    transactions = _object(obj.get("transactions") or {}, "workflow.transactions")
    debited = credited = 0
    for entry in _list(transactions.get("list"), "workflow.transactions.list"):
        item = _object(entry, "workflow.transactions.list[]")
        amount = _int(item.get("amount"), "transaction amount") or 0
        if item.get("type") == "debit":
            debited += amount
        elif item.get("type") == "credit":
            credited += amount
    images: list[ImageResult] = []
    errors: list[str] = []
    for step in _list(obj.get("steps"), "workflow.steps"):
        output = _object(step, "workflow.steps[]").get("output")
        if not isinstance(output, Mapping):
            continue
        for blob in _list(output.get("images"), "step.output.images"):
            images.append(_parse_image(len(images), blob))
        errors.extend(str(e) for e in _list(output.get("errors"), "step.output.errors"))
    cost = obj.get("cost")
    insufficient = transactions.get("insufficientBuzz")
    return Workflow(
        id=_str(obj.get("id"), "workflow.id"),
        status=WorkflowStatus.parse(status),
        external_id=_str(obj.get("externalId"), "workflow.externalId"),
        tags=tuple(str(t) for t in _list(obj.get("tags"), "workflow.tags")),
        created_at=_time(obj.get("createdAt")),
        completed_at=_time(obj.get("completedAt")),
        cost_total=_int(cost.get("total"), "cost.total") if isinstance(cost, Mapping) else None,
        debited_buzz=debited,
        credited_buzz=credited,
        insufficient_buzz=insufficient if isinstance(insufficient, bool) else None,
        images=tuple(images),
        errors=tuple(errors),
        raw=obj,
    )


def parse_blob(data: object) -> Blob:
    """Build a `Blob` from a decoded JSON body; raise `ShapeError` if it cannot be one."""
    obj = _object(data, "blob")
    blob_id = _str(obj.get("id"), "blob.id")
    if not blob_id:
        raise ShapeError("blob has no 'id'")
    return Blob(
        id=blob_id,
        available=obj.get("available") is True,
        url=_str(obj.get("url"), "blob.url"),
        url_expires_at=_time(obj.get("urlExpiresAt")),
        raw=obj,
    )


def parse_page(data: object) -> tuple[tuple[Workflow, ...], str | None]:
    """The items and raw `next` cursor of a query page (an empty cursor becomes None)."""
    obj = _object(data, "workflow page")
    items = tuple(parse_workflow(item) for item in _list(obj.get("items"), "page.items"))
    cursor = _str(obj.get("next"), "page.next")
    return items, cursor or None


@dataclass(frozen=True)
class Problem:
    """The service's words in an error body: `text` (title and detail) and the errors map."""

    text: str
    errors: dict[str, list[str]]


def parse_problem(body: bytes) -> Problem:
    """Read a ProblemDetails / ValidationProblemDetails, a bare JSON string (a 403 on submit)
    or any other text (a gateway's HTML page, collapsed to one line)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = " ".join(body.decode("utf-8", "replace").split())
    if isinstance(data, str):
        return Problem(text=data, errors={})
    if not isinstance(data, dict):
        return Problem(text=json.dumps(data), errors={})
    text = " - ".join(str(data[key]) for key in ("title", "detail") if data.get(key))
    errors: dict[str, list[str]] = {}
    raw_errors = data.get("errors")
    if isinstance(raw_errors, dict):
        for name, messages in raw_errors.items():
            items = messages if isinstance(messages, list) else [messages]
            errors[str(name)] = [str(message) for message in items]
    return Problem(text=text, errors=errors)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date after `now`.

    A date in the past gives 0.0; an absent or unreadable value gives None.
    """
    text = (value or "").strip()
    if text.isdigit():
        return float(text)
    when = parse_http_date(text)
    return None if when is None else max(0.0, (when - now).total_seconds())


def parse_http_date(value: str | None) -> datetime | None:
    """An RFC 9110 HTTP date (`Date`, `Retry-After`) as an aware datetime, or None."""
    try:
        when = email.utils.parsedate_to_datetime(value or "")
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_image(index: int, data: object) -> ImageResult:
    obj = _object(data, "image")
    blob_id = _str(obj.get("id"), "image.id")
    if not blob_id:
        raise ShapeError(f"image {index} has no 'id'")
    return ImageResult(
        index=index,
        blob_id=blob_id,
        available=obj.get("available") is True,
        url=_str(obj.get("url"), "image.url"),
        url_expires_at=_time(obj.get("urlExpiresAt")),
        blocked_reason=_str(obj.get("blockedReason"), "image.blockedReason") or None,
        nsfw_level=_str(obj.get("nsfwLevel"), "image.nsfwLevel"),
        width=_int(obj.get("width"), "image.width"),
        height=_int(obj.get("height"), "image.height"),
        job_id=_str(obj.get("jobId"), "image.jobId"),
        raw=obj,
    )


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShapeError(f"{what} is not a JSON object (got {type(value).__name__})")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ShapeError(f"{what} is not a JSON array (got {type(value).__name__})")
    return value


def _str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ShapeError(f"{what} is not a string (got {type(value).__name__})")


def _int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ShapeError(f"{what} is not an integer (got {value!r})")


def _time(value: object) -> datetime | None:
    """ISO-8601 (with `Z` and .NET's 7 fractional digits) or None; unreadable text is None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
