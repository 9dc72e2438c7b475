"""The batch's record (`OUT/batch.sqlite`): one `Store` owns the connection and runs every
state transition and read as a function of it; the rows it hands out; its migrations.
docs/states.md draws the state machine and names where each transition lives.
"""

from runner.store._more import mark_image_refetched, retry_preview
from runner.store._ops import RETRY_STATES
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

__all__ = [
    "Attempt",
    "EndedCell",
    "AttemptState",
    "BatchInfo",
    "Budget",
    "Comparison",
    "DatasetImage",
    "FailureReason",
    "GalleryCell",
    "GalleryImage",
    "ImageOutcome",
    "ImageState",
    "PendingImage",
    "PlanResult",
    "RETRY_STATES",
    "RetryPlan",
    "RunSettings",
    "Store",
    "StoredImage",
    "Tally",
    "ended_cells",
    "fetch_again",
    "mark_image_refetched",
    "recorded_files",
    "retry_preview",
    "tally",
]
