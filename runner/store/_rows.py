"""The records of a batch: attempt and image states, and every row the store hands out.

Pure data (no SQL, no I/O): the store (`_transitions.py`, `_ops.py`, `_reads.py`) makes
them, the engine, the operations and the dataset act on them. A planned cell, what the
store takes rather than gives, is `runner.identity.PlanRow`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
FINAL_WORKFLOW_STATES = ("succeeded", "failed", "expired", "canceled", "blocked")


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
class Comparison:
    """A manifest's cells against the batch a folder already holds (`Store.compare`).

    `new`: cells the batch does not know (`new_buzz`: their estimated price); `known`: cells
    it knows, kept as they are; `left_behind`: cells the last manifest listed that this one
    does not (a run must be told `--replace` or `--keep`); `set_aside`: cells an earlier
    `--replace` or `--keep` already left out of the manifest, still not listed."""

    name: str  # the batch's recorded name
    revision: int  # the manifest revision the batch is at
    new: int
    new_buzz: int
    known: int
    left_behind: int
    set_aside: int


@dataclass(frozen=True)
class Budget:
    """The batch's Buzz: cap, committed (charged + reserved), and its two parts."""

    cap_buzz: int
    committed_buzz: int
    charged_buzz: int
    reserved_buzz: int


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


@dataclass(frozen=True)
class DatasetImage:
    """One image joined with the attempt and cell that made it: a dataset or export row."""

    attempt_id: int
    index: int
    state: str  # the image's: downloaded, pending or lost
    path: str | None  # relative to OUT, once downloaded
    sha256: str | None
    size_bytes: int | None
    width: int | None  # measured on the downloaded file
    height: int | None
    reason: str | None  # why it was lost
    cell_key: str
    attempt: int
    workflow_id: str | None
    model: str
    request_json: str  # the cell's request, parsed on first use (`request`)
    vars_json: str  # its template variables (`vars`)
    charged_buzz: int  # the whole attempt's charge (every image of it)
    created_at: str | None  # when the service answered with the workflow id
    finished_at: str  # the attempt's last transition: its outcome
    revision: int = 1  # the manifest revision that last listed the cell

    @functools.cached_property
    def request(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.request_json)
        return parsed

    @functools.cached_property
    def vars(self) -> dict[str, str]:
        parsed: dict[str, str] = json.loads(self.vars_json)
        return parsed


@dataclass(frozen=True)
class Activity:
    """What the events table says about a batch's Buzz refunds and its time span."""

    refunded_buzz: int  # charged when running, given back by the final charge
    refunded_attempts: int
    first_event_at: str | None
    last_event_at: str | None


@dataclass(frozen=True)
class GalleryImage:
    """One image of a cell's attempt, as the store records it (`path` is relative to OUT)."""

    index: int
    state: str
    path: str | None
    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    attempt: int
    workflow_id: str | None


@dataclass(frozen=True)
class GalleryCell:
    """One cell of the batch with its inputs, what it cost and the images it produced."""

    key: str
    seq: int
    replica: int
    model: str
    request: Mapping[str, Any]
    vars: Mapping[str, str]
    estimate_buzz: int
    charged_buzz: int  # all attempts, refunds deducted
    state: str  # the state of its latest attempt
    workflow_id: str | None  # of its latest attempt
    images: tuple[GalleryImage, ...]


@dataclass(frozen=True)
class StoredImage:
    """A downloaded image as recorded: where it is and what its bytes must hash to."""

    attempt_id: int
    index: int
    cell_key: str
    path: str
    sha256: str
    size_bytes: int
    blob_id: str | None
    workflow_id: str | None
    request: dict[str, Any]


@dataclass(frozen=True)
class RetryChoice:
    """A cell `retry_cells` gave a new attempt: its key, the new number, what it was."""

    cell_key: str
    attempt: int
    was: str  # failed, expired, lost, canceled, blocked, rejected


@dataclass(frozen=True)
class RetryPlan:
    """What `retry_cells` did: the cells retried and the named cells it would not touch."""

    chosen: list[RetryChoice]
    skipped: dict[str, str] = field(default_factory=dict)  # cell key -> why not
    canceled_lifted: bool = False


@dataclass(frozen=True)
class Adoption:
    """What `adopt_workflow` did with one workflow found on the service.

    `status`: `adopted` (recorded now, running), `known` (already recorded with this
    workflow id), `conflict` (the attempt is recorded otherwise; nothing changed), `unknown`
    (no such cell in the batch; nothing changed).
    """

    status: str
    attempt_id: int | None = None
    detail: str | None = None
