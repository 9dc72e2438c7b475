"""Hypothesis strategies drawn from Civitai's OpenAPI document: values, bodies, query strings.

``values(node)`` turns a flattened schema (``runner.contract._schema.flatten``: allOf merged,
discriminators resolved into ``if``/``then`` branches) into a strategy of JSON values that
satisfy it: enums, types (``["null", "string"]`` lists included), numeric ranges and int32
/ int64 formats, string lengths, patterns (through ``st.from_regex``), ``uri``,
``date-time`` and ``date-span`` formats, arrays with their sizes and uniqueness, objects with
their required and optional properties and ``additionalProperties``, and a discriminator's
branches (each branch pins its own discriminator value). Sizes are capped (``MAX_TEXT``,
``MAX_ITEMS``) so a request stays small, with the schema's own bounds drawn now and then.

``hostile_body(body)`` damages a valid body the way the issue's probes did: a lone surrogate
in a value or a key, nesting just under, at and past 64 levels, NaN and overflowing numbers,
invalid UTF-8 and UTF-8-encoded surrogates, values of the wrong type. It returns raw bytes,
since most of these cannot be written by ``json.dumps`` at all.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

MAX_TEXT = 24
MAX_ITEMS = 3
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
AIR = "urn:air:zImage:lora:civitai:{}@{}"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=MAX_TEXT),
)
any_json = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=MAX_ITEMS),
        st.dictionaries(st.text(max_size=8), children, max_size=MAX_ITEMS),
    ),
    max_leaves=8,
)


def _text(node: Mapping[str, Any]) -> st.SearchStrategy[str]:
    low = int(node.get("minLength", 0))
    high = node.get("maxLength")
    fmt = node.get("format")
    if "pattern" in node:
        found: st.SearchStrategy[str] = st.from_regex(node["pattern"], fullmatch=True)
        if high is not None:
            found = found.filter(lambda text: low <= len(text) <= int(high))
        return found
    if fmt == "uri":
        host = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(?:invalid|example)", fullmatch=True)
        return st.builds(
            lambda s, h, p: f"{s}://{h}/{p}",
            st.sampled_from(["https", "http"]),
            host,
            st.from_regex(r"[a-z0-9/_-]{0,12}", fullmatch=True),
        )
    if fmt == "date-time":
        return _date_times()
    if fmt == "date-span":
        return _timespans()
    cap = max(low, min(int(high) if high is not None else MAX_TEXT, MAX_TEXT))
    drawn = st.text(min_size=low, max_size=cap)
    if high is not None and int(high) > cap:
        drawn = st.one_of(drawn, st.just("x" * int(high)))  # the longest the schema allows
    return drawn


def _date_times() -> st.SearchStrategy[str]:
    moments = st.datetimes(
        min_value=dt.datetime(2020, 1, 1),
        max_value=dt.datetime(2030, 1, 1),
        timezones=st.just(dt.UTC),
    )
    return moments.map(lambda moment: moment.isoformat().replace("+00:00", "Z"))


def _timespans() -> st.SearchStrategy[str]:
    days = st.one_of(st.just(""), st.integers(0, 30).map(lambda d: f"{d}."))
    clock = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
    return st.builds(lambda d, c: f"{d}{c[0]:02d}:{c[1]:02d}:{c[2]:02d}", days, clock)


def _integers(node: Mapping[str, Any]) -> st.SearchStrategy[int]:
    first, last = INT_RANGES.get(str(node.get("format")), INT_RANGES["int64"])
    low = int(node.get("minimum", first))
    high = int(node.get("maximum", last))
    return st.one_of(st.integers(low, high), st.sampled_from([low, high]))


def _numbers(node: Mapping[str, Any]) -> st.SearchStrategy[float | int]:
    low, high = node.get("minimum"), node.get("maximum")
    floats = st.floats(
        min_value=low, max_value=high, allow_nan=False, allow_infinity=False, width=64
    )
    ints = st.integers(
        int(low) if low is not None else -(2**31), int(high) if high is not None else 2**31
    )
    return st.one_of(floats, ints)


def _arrays(node: Mapping[str, Any]) -> st.SearchStrategy[list[Any]]:
    low = int(node.get("minItems", 0))
    high = min(int(node.get("maxItems", low + MAX_ITEMS)), low + MAX_ITEMS)
    items = values(node.get("items", {}))
    unique = (lambda item: json.dumps(item, sort_keys=True)) if node.get("uniqueItems") else None
    return st.lists(items, min_size=low, max_size=high, unique_by=unique)


@st.composite
def _objects(draw: st.DrawFn, node: Mapping[str, Any]) -> dict[str, Any]:
    props: Mapping[str, Any] = node.get("properties", {})
    required = set(node.get("required", []))
    out: dict[str, Any] = {}
    for name, prop in props.items():
        if name in required or draw(st.booleans()):
            out[name] = draw(values(prop))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and not props:
        keys = st.text(max_size=12)
        if extra.get("type") == "number":  # loras: the emulator wants AIR keys; draw some
            keys = st.one_of(keys, st.builds(AIR.format, st.integers(1, 9999), st.integers(1, 9)))
        out.update(draw(st.dictionaries(keys, values(extra), max_size=MAX_ITEMS)))
    return out


_BUILT: dict[str, st.SearchStrategy[Any]] = {}


def values(node: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """JSON values valid for the flattened schema ``node`` (built once per distinct node)."""
    key = json.dumps(node, sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = _build(node)
    return _BUILT[key]


def _build(node: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    kinds = node.get("type")
    allowed = [kinds] if isinstance(kinds, str) else list(kinds or [])
    nullable = st.none() if "null" in allowed else st.nothing()
    if "enum" in node:
        return st.one_of(nullable, st.sampled_from(list(node["enum"])))
    branches = [part["then"] for part in node.get("allOf", []) if "then" in part]
    if branches:
        return st.one_of(*[values(branch) for branch in branches])
    if not allowed:
        return _objects(node) if "properties" in node else any_json
    makers: dict[str, Any] = {
        "string": lambda: _text(node),
        "integer": lambda: _integers(node),
        "number": lambda: _numbers(node),
        "boolean": st.booleans,
        "array": lambda: _arrays(node),
        "object": lambda: (
            _objects(node)
            if "properties" in node or "additionalProperties" in node
            else st.dictionaries(st.text(max_size=8), any_json, max_size=MAX_ITEMS)
        ),
    }
    return st.one_of(nullable, *[makers[kind]() for kind in allowed if kind in makers])


# -- damage ---------------------------------------------------------------------------------

LONE = ["\ud800", "a\udc00b", "\udbff", "tail\ud83d", "\udc00\ud800"]
RAW_TOKENS = {
    "NaN": b"NaN",
    "Infinity": b"-Infinity",
    "overflow": b"1e400",
    "bad-utf8": b'"\xff\xfe"',
    "utf8-surrogate": b'"\xed\xa0\x80"',
    "cut": b'"unterminated',
}
WRONG_TYPES: list[object] = [
    None,
    True,
    -1,
    2**31,
    2**63,
    1.5,
    "AAA",
    "",
    [],
    {},
    [None],
    {"a": {}},
]


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: object) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def hostile_body(draw: st.DrawFn, body: object) -> tuple[str, bytes]:
    """``(what was done, the damaged body's bytes)``: one defect at one place of ``body``."""
    path = draw(st.sampled_from(_paths(body)))
    kind = draw(st.sampled_from(["lone", "lone-key", "deep", "raw", "wrong-type"]))
    sentinel = "\x00zbatch-sentinel\x00"
    if kind == "lone":
        damaged: object = _replace(body, path, draw(st.sampled_from(LONE)))
        return f"lone surrogate at {path}", json.dumps(damaged).encode("ascii")
    if kind == "lone-key":
        key = draw(st.sampled_from(LONE))
        damaged = _replace(body, path, {key: 1})
        return f"lone surrogate key at {path}", json.dumps(damaged).encode("ascii")
    if kind == "wrong-type":
        damaged = _replace(body, path, draw(st.sampled_from(WRONG_TYPES)))
        return f"wrong type at {path}", json.dumps(damaged).encode("ascii")
    damaged = _replace(body, path, sentinel)
    text = json.dumps(damaged).encode("ascii")
    marker = json.dumps(sentinel).encode("ascii")
    if kind == "deep":
        levels = draw(st.sampled_from([62, 63, 64, 65, 66, 200, 5000]))
        return f"{levels} levels at {path}", text.replace(marker, _deep(levels).encode(), 1)
    name = draw(st.sampled_from(sorted(RAW_TOKENS)))
    return f"{name} at {path}", text.replace(marker, RAW_TOKENS[name], 1)


def depth_of(raw: bytes) -> int:
    """The deepest container nesting in a JSON text (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
