"""The records of a batch: attempt and image states, and the rows the store hands out.

Pure data: the store (`store.py`) reads and writes them, the engine acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class AttemptState(StrEnum):
    """The states of one attempt at a cell; the values are the strings in SQL, logs and docs."""

    PLANNED = "planned"  # waiting for a submit slot and budget
    SUBMITTING = "submitting"  # intent recorded, Buzz reserved; the API may or may not know it
    RUNNING = "running"  # the API answered with a workflow id
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"
    REJECTED = "rejected"  # the API refused the input (4xx): nothing spent, never retried
    BLOCKED = "blocked"  # moderation: never retried

    @property
    def is_final(self) -> bool:
        return self not in (AttemptState.PLANNED, AttemptState.SUBMITTING, AttemptState.RUNNING)


class ImageState(StrEnum):
    """The states of one image of a finished attempt."""

    PENDING = "pending"  # delivered by the service, not yet on disk
    DOWNLOADED = "downloaded"  # on disk, verified, sha256 recorded
    LOST = "lost"  # the service no longer has it, or it was never deliverable


RETRYABLE_OUTCOMES = frozenset({AttemptState.FAILED, AttemptState.EXPIRED})


@dataclass(frozen=True)
class CellRow:
    """One grid cell as the store keeps it: its key, request and estimated price."""

    key: str
    replica: int
    model: str
    request: dict[str, Any]
    vars: dict[str, str]
    estimate_buzz: int


@dataclass(frozen=True)
class Attempt:
    """One attempt at a cell, with what a submitter or poller needs to act on it."""

    id: int
    cell_key: str
    attempt: int
    external_id: str
    state: AttemptState
    reserved_buzz: int
    charged_buzz: int
    workflow_id: str | None
    model: str
    request: dict[str, Any]
    estimate_buzz: int


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a terminal workflow, as the poller hands it to the store."""

    index: int
    blob_id: str | None
    deliverable: bool
    reason: str | None = None


@dataclass(frozen=True)
class PendingImage:
    """An image to download: which attempt and index, and the request that made it."""

    attempt_id: int
    index: int
    blob_id: str | None
    cell_key: str
    workflow_id: str | None
    request: dict[str, Any]


@dataclass(frozen=True)
class PlanResult:
    """What `plan` changed: new cells, cells already known, cells no longer in the manifest."""

    added: int
    kept: int
    removed: int


@dataclass(frozen=True)
class Budget:
    """The batch's Buzz: cap, committed (charged + reserved), and its two parts."""

    cap_buzz: int
    committed_buzz: int
    charged_buzz: int
    reserved_buzz: int


def external_id_for(cell_key: str, attempt: int) -> str:
    """The idempotency key of an attempt: `[A-Za-z0-9_-]`, at most 128 characters."""
    return f"zb-{cell_key[:48]}-a{attempt}"


@dataclass(frozen=True)
class BatchInfo:
    """The batch row, as `zbatch status` shows it."""

    name: str
    tag: str
    cap_buzz: int
    created_at: str


@dataclass(frozen=True)
class FailureReason:
    """How many attempts (or lost images, kind `image:lost`) ended for one reason."""

    kind: str
    reason: str
    count: int
