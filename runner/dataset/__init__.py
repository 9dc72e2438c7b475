"""What a batch leaves for people and trainers: `metadata.jsonl` and captions, exports
(JSONL, CSV, Parquet, WebDataset), the gallery, the report and the status.

Lazy: `zbatch run` needs `refresh_dataset` and `failure_lines` only; the exports, the
gallery, the report and the status are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runner.dataset._failures import failure_line, failure_lines
from runner.dataset._metadata import HERE, RecordAt, open_record, refresh_dataset

if TYPE_CHECKING:
    from runner.dataset._batches import (
        batches_json,
        find_batches,
        list_batches,
        list_store,
        render_batches,
    )
    from runner.dataset._export import DEFAULT_FORMAT, describe, export
    from runner.dataset._gallery import make_gallery, render_result
    from runner.dataset._report import read_report, render_report, report_json
    from runner.dataset._status import read_status, render_status, status_json

_HOME = {
    "batches_json": "_batches",
    "find_batches": "_batches",
    "list_batches": "_batches",
    "list_store": "_batches",
    "render_batches": "_batches",
    "DEFAULT_FORMAT": "_export",
    "describe": "_export",
    "export": "_export",
    "make_gallery": "_gallery",
    "render_result": "_gallery",
    "read_report": "_report",
    "render_report": "_report",
    "report_json": "_report",
    "read_status": "_status",
    "render_status": "_status",
    "status_json": "_status",
}

__all__ = [
    "HERE",
    "RecordAt",
    "batches_json",
    "DEFAULT_FORMAT",
    "describe",
    "export",
    "failure_line",
    "failure_lines",
    "find_batches",
    "list_batches",
    "list_store",
    "make_gallery",
    "open_record",
    "read_report",
    "read_status",
    "refresh_dataset",
    "render_batches",
    "render_report",
    "render_result",
    "render_status",
    "report_json",
    "status_json",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
