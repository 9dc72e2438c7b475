"""The engine that drives one batch: the submitter, the poller and the downloaders in one
task group, paced by `_pacing` (rate limit, backoff); images checked by `_images`.
"""

from runner.engine._downloader import FetchedImage, ImageFetcher
from runner.engine._engine import (
    Engine,
    EngineConfig,
    RunStats,
    charge_of,
    image_outcomes,
    outcome_of,
    reason_of,
)
from runner.engine._images import InvalidImage, check_image
from runner.engine._pacing import DEFAULT_GIVE_UP_AFTER_S, Backoff, retrying

__all__ = [
    "DEFAULT_GIVE_UP_AFTER_S",
    "Backoff",
    "Engine",
    "EngineConfig",
    "FetchedImage",
    "ImageFetcher",
    "InvalidImage",
    "RunStats",
    "charge_of",
    "check_image",
    "image_outcomes",
    "outcome_of",
    "reason_of",
    "retrying",
]
