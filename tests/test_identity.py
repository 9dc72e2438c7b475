"""A cell's identity: the externalId, its inverse, the record's derived column and the workflow
metadata agree."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from runner.api._models import parse_workflow
from runner.identity import (
    MAX_ATTEMPT,
    batch_tag,
    cell_key,
    external_id,
    key_digest,
    key_from,
    key_prefix,
    parse_workflow_metadata,
    workflow_metadata,
)
from runner.ops._adopt import identity_of
from runner.store._migrations import MIGRATIONS

# every key length alike (a regex strategy draws mostly short ones), and the bounds always
KEYS = st.integers(8, 64).flatmap(lambda n: st.text("0123456789abcdef", min_size=n, max_size=n))
ATTEMPTS = st.integers(1, MAX_ATTEMPT)
API_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what the service accepts
KEY = "64e2e08a9c7287c7d160b88ea97cded8"


@pytest.fixture(scope="module")
def record() -> Iterator[sqlite3.Connection]:
    """An empty batch.sqlite schema, every migration applied, in memory."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    for script in MIGRATIONS:
        db.executescript(script)
    yield db
    db.close()


@given(key=KEYS, attempt=ATTEMPTS)
@example(key="0" * 8, attempt=1)
@example(key="f" * 64, attempt=MAX_ATTEMPT)
def test_the_records_derived_column_spells_the_same_external_id(
    record: sqlite3.Connection, key: str, attempt: int
) -> None:
    """`attempts.external_id` is computed by the schema (migration 7): it and the function
    give the same text, so a resumed run looks its workflows up under the ids it sent."""
    record.execute(
        "INSERT INTO attempts (cell_key, attempt, state, updated_at) VALUES (?, ?, 'planned', 't')",
        (key, attempt),
    )
    try:
        (found,) = record.execute(
            "SELECT external_id FROM attempts WHERE cell_key = ? AND attempt = ?", (key, attempt)
        ).fetchone()
    finally:
        record.execute("DELETE FROM attempts")
    assert found == external_id(key, attempt)


@given(key=KEYS, attempt=ATTEMPTS)
def test_workflow_metadata_reads_back(key: str, attempt: int) -> None:
    assert parse_workflow_metadata(workflow_metadata(key, attempt)) == (key, attempt)


def test_the_external_id_is_pinned() -> None:
    """Batches already on disk and on the service carry these ids: they must never move."""
    assert external_id(KEY, 1) == f"zb-{KEY}-a1"
    assert external_id(KEY, 12) == f"zb-{KEY}-a12"
    assert workflow_metadata(KEY, 2) == {"zbatch": {"cell": KEY, "attempt": 2}}
    assert batch_tag("demo") == "zbatch:demo"


@pytest.mark.parametrize(
    ("key", "attempt", "message"),
    [
        (KEY, 0, "attempt must be between 1 and 999999, not 0"),
        (KEY, MAX_ATTEMPT + 1, "attempt must be between 1 and 999999, not 1000000"),
        ("ABCDEF0123", 1, "a cell key is 8 to 64 lowercase hex digits, not 'ABCDEF0123'"),
        ("abc", 1, "a cell key is 8 to 64 lowercase hex digits, not 'abc'"),
        ("a" * 65, 1, "a cell key is 8 to 64 lowercase hex digits, not 'aaaa"),
    ],
)
def test_external_id_refuses_what_it_could_not_read_back(
    key: str, attempt: int, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        external_id(key, attempt)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "zbatch",
        {"zbatch": "x"},
        {"zbatch": {"cell": KEY}},
        {"zbatch": {"cell": KEY, "attempt": 0}},
        {"zbatch": {"cell": KEY, "attempt": True}},
        {"zbatch": {"cell": KEY, "attempt": "1"}},
        {"zbatch": {"cell": "not-hex", "attempt": 1}},
        {"other": {"cell": KEY, "attempt": 1}},
    ],
)
def test_metadata_that_is_not_ours_is_none(metadata: object) -> None:
    assert parse_workflow_metadata(metadata) is None


def _workflow(**fields: Any) -> Any:
    return parse_workflow({"id": "wf-1", "status": "succeeded", **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"externalId": f"zb-{KEY}-a2"}, (KEY, 2)),
        ({"metadata": workflow_metadata(KEY, 3)}, (KEY, 3)),
        ({"externalId": f"zb-{KEY}-a3", "metadata": workflow_metadata(KEY, 3)}, (KEY, 3)),
        ({"externalId": f"zb-{KEY}-a2", "metadata": workflow_metadata(KEY, 3)}, None),
        ({"externalId": "someone-else"}, None),
        ({"externalId": "someone-else", "metadata": workflow_metadata(KEY, 1)}, None),
        ({}, None),
    ],
)
def test_adoption_reads_a_workflows_identity_from_its_marks(
    fields: dict[str, Any], expected: tuple[str, int] | None
) -> None:
    """Metadata first, else the externalId; a workflow whose two marks disagree is not ours."""
    assert identity_of(_workflow(**fields)) == expected


@given(
    st.text(max_size=40).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.integers(0, 50),
    st.text(max_size=200),
)
def test_a_key_from_its_prefix_state_is_the_key(batch_json: str, replica: int, request: str):
    """The grid's shortcut (the batch's part hashed once per replica, copied per cell) makes
    the bytes `key_digest` makes, and leaves the prefix state as it was."""
    prefix = key_prefix(batch_json, replica)
    assert key_from(prefix, request) == key_digest(batch_json, replica, request)
    assert key_from(prefix, request) == key_digest(batch_json, replica, request)


def test_a_cell_key_is_pinned() -> None:
    """`cell_key`'s bytes name batches on disk and workflows on the service: never changed."""
    request = {"model": "turbo", "prompt": "a cat", "seed": 7}
    assert cell_key("demo", 0, request) == "30b564b6754698f9b5efe4eb52d0df26"
    assert cell_key("demo", 1, request) == "624d127791014f90e9be47c26e895e7f"
