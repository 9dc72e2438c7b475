"""The batch's record (`OUT/batch.sqlite`, or a PostgreSQL database: `PostgresStore`): one
`Store` owns the connection and runs every state transition and read as a function of it;
the rows it hands out; its migrations. `open_store` opens either by where it is.
docs/states.md draws the state machine and names where each transition lives.
"""

from runner.store._claims import Claimed
from runner.store._fence import Fenced, LeaseLost
from runner.store._more import mark_image_refetched, retry_preview
from runner.store._ops import RETRY_STATES
from runner.store._pg_store import PostgresStore, open_store
from runner.store._pg_url import is_store_url, redact
from runner.store._rows import (
    Attempt,
    AttemptState,
    BatchInfo,
    Budget,
    Comparison,
    DatasetImage,
    FailureReason,
    GalleryCell,
    GalleryImage,
    ImageOutcome,
    ImageState,
    PendingImage,
    PlanResult,
    RetryPlan,
    StoredImage,
)
from runner.store._settings import RunSettings
from runner.store._store import Store
from runner.store._tally import EndedCell, Tally, ended_cells, fetch_again, recorded_files, tally
from runner.store._workers import Worker

__all__ = [
    "Attempt",
    "EndedCell",
    "AttemptState",
    "BatchInfo",
    "Claimed",
    "Budget",
    "Comparison",
    "DatasetImage",
    "FailureReason",
    "Fenced",
    "GalleryCell",
    "GalleryImage",
    "ImageOutcome",
    "ImageState",
    "LeaseLost",
    "PendingImage",
    "PlanResult",
    "PostgresStore",
    "RETRY_STATES",
    "RetryPlan",
    "RunSettings",
    "Store",
    "StoredImage",
    "Worker",
    "Tally",
    "ended_cells",
    "fetch_again",
    "is_store_url",
    "mark_image_refetched",
    "open_store",
    "recorded_files",
    "redact",
    "retry_preview",
    "tally",
]
