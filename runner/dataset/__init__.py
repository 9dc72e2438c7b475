"""What a batch leaves for people and trainers: `metadata.jsonl` and captions, exports
(JSONL, CSV, Parquet, WebDataset), the gallery, the report and the status.
"""

from runner.dataset._batches import (
    batches_json,
    find_batches,
    list_batches,
    list_store,
    render_batches,
)
from runner.dataset._export import DEFAULT_FORMAT, describe, export
from runner.dataset._failures import failure_line, failure_lines
from runner.dataset._gallery import make_gallery, render_result
from runner.dataset._metadata import HERE, RecordAt, open_record, refresh_dataset
from runner.dataset._report import read_report, render_report, report_json
from runner.dataset._status import read_status, render_status, status_json

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
