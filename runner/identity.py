"""A cell's identity: how every layer names a cell, an attempt at it and its batch, written once.

A cell is named by its key: the hex BLAKE2b of its canonical request, its replica and its
batch's name at `KEY_VERSION` (`grid.cell_key`). An attempt at a cell is named on the
service by its externalId, `zb-<cell key>-a<attempt>`, the idempotency key the service
deduplicates submits by, and by the workflow metadata `{"zbatch": {"cell": <key>,
"attempt": <n>}}`; every workflow of a batch carries the tag `zbatch:<batch name>`
(docs/operations.md, "the tag scheme"). `external_id` builds an externalId and
`parse_external_id` reads one back (`zbatch run --adopt`: the service alone says which cell
and attempt a workflow was for); the record derives the same text in SQL (`attempts.
external_id`, a generated column since schema 7). tests/test_identity.py checks that the
three agree.

A planned cell travels from the grid to the store as a `PlanRow`, its JSON columns spelled
by `record_json`: the grid (`grid.store_rows`) makes them, the store (`Store.plan_rows`)
records them, and the tests make theirs the same way.

Pure, and it imports nothing of runner: the grid (below the store) and the store (which
must not load the manifest parser) both build on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

KEY_VERSION = 1  # in every cell key's hash: a new version renames every cell
EXTERNAL_ID_PREFIX = "zb"
ATTEMPT_MARK = "a"
MAX_ATTEMPT = 999_999  # six digits: an externalId stays short (at most 75 characters)
_KEY = "[0-9a-f]{8,64}"  # keys are 32 digits (BLAKE2b-128); tests use 8 and more
_ATTEMPT = "[1-9][0-9]{0,5}"
_KEY_RE = re.compile(_KEY)
_EXTERNAL_ID_RE = re.compile(f"{EXTERNAL_ID_PREFIX}-({_KEY})-{ATTEMPT_MARK}({_ATTEMPT})")
METADATA_KEY = "zbatch"  # the workflow metadata's entry: {"cell": key, "attempt": n}


def external_id(cell_key: str, attempt: int) -> str:
    """The externalId of attempt `attempt` of cell `cell_key`: `[A-Za-z0-9_-]`, <= 75 chars.

    Raises ValueError for a key that is not 8-64 lowercase hex digits or an attempt outside
    1..MAX_ATTEMPT: `parse_external_id` could not read such an id back.
    """
    if not 1 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt must be between 1 and {MAX_ATTEMPT}, not {attempt}")
    if not _KEY_RE.fullmatch(cell_key):
        raise ValueError(f"a cell key is 8 to 64 lowercase hex digits, not {cell_key!r}")
    return f"{EXTERNAL_ID_PREFIX}-{cell_key}-{ATTEMPT_MARK}{attempt}"


def parse_external_id(text: str) -> tuple[str, int] | None:
    """The (cell key, attempt) `external_id` made `text` from, or None if it did not."""
    match = _EXTERNAL_ID_RE.fullmatch(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def workflow_metadata(cell_key: str, attempt: int) -> dict[str, Any]:
    """The metadata a workflow is submitted with: its cell and attempt, for adoption."""
    return {METADATA_KEY: {"cell": cell_key, "attempt": attempt}}


def parse_workflow_metadata(metadata: object) -> tuple[str, int] | None:
    """The (cell key, attempt) of a workflow's metadata, or None if it carries none."""
    mark = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    if not isinstance(mark, Mapping):
        return None
    key, attempt = mark.get("cell"), mark.get("attempt")
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        return None
    if type(attempt) is not int or not 1 <= attempt <= MAX_ATTEMPT:
        return None
    return key, attempt


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
encode_text = json.encoder.encode_basestring  # what the encoder writes for a str (C)


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, non-ASCII kept: the one spelling hashed for keys and seeds."""
    return _CANONICAL.encode(value)


def value_json(value: object) -> str:
    """``canonical_json(value)``, quicker for the two commonest types (str and int)."""
    if type(value) is str:
        return encode_text(value)
    if type(value) is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _CANONICAL.encode(value)


def cell_key(batch: str, replica: int, request: Mapping[str, object]) -> str:
    """The hex key of one replica of ``request`` in batch ``batch``."""
    return key_hex(canonical_json(batch), replica, canonical_json(request))


def key_hex(batch_json: str, replica: int, request_json: str) -> str:
    """`cell_key` from the parts' canonical JSON (the grid writes them once per batch)."""
    return key_digest(batch_json, replica, request_json).hex()


def key_digest(batch_json: str, replica: int, request_json: str) -> bytes:
    """The 16-byte BLAKE2b digest whose hex is the key."""
    text = (
        f'{{"batch":{batch_json},"replica":{replica},"request":{request_json},"v":{KEY_VERSION}}}'
    )
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_KEY_TAIL = f',"v":{KEY_VERSION}}}'.encode()


def key_prefix(batch_json: str, replica: int) -> hashlib.blake2b:
    """The BLAKE2b state of a key's text up to its request, for one batch and replica:
    `key_from(prefix, request_json)` is `key_digest(batch_json, replica, request_json)`,
    the shared part hashed once (a `.copy()` per key, not the whole text)."""
    head = f'{{"batch":{batch_json},"replica":{replica},"request":'
    return hashlib.blake2b(head.encode(), digest_size=16)


def key_from(prefix: hashlib.blake2b, request_json: str) -> bytes:
    """`key_digest` from a `key_prefix` state (left as it was) and the request's JSON."""
    state = prefix.copy()
    state.update(request_json.encode())
    state.update(_KEY_TAIL)
    return state.digest()


def batch_tag(name: str) -> str:
    """The API tag of every workflow of batch `name`."""
    return f"zbatch:{name}"


_RECORD_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def record_json(value: object) -> str:
    """How the record spells a request or a cell's variables: sorted keys, no spaces, ASCII
    (the grid's canonical JSON, whenever that is ASCII)."""
    return _RECORD_JSON.encode(value)


class PlanRow(NamedTuple):
    """One planned cell as `Store.plan_rows` records it; `grid.store_rows` makes them.

    A NamedTuple, not a dataclass: the plan hands the rows to SQLite's `executemany` as
    they are, a million at a time (`make bench`, "plan into a new batch.sqlite").
    """

    key: str  # 32 hex digits
    replica: int
    model: str
    request_json: str  # `record_json` of the request, seed pinned
    vars_json: str  # `record_json` of the template variables
    estimate_buzz: int  # the price formula's
