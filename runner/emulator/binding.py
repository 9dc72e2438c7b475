"""Binding a request as the service binds it: the body's media type and JSON, the query string.

The service is ASP.NET Core with System.Text.Json; what it refuses before a handler runs,
the emulator refuses here, before anything is looked up, stored or charged:

* **Media type** (``require_json_media_type``): a body must come as one of the media types
  the operation's ``requestBody`` lists in the document (``application/json``,
  ``text/json``, ``application/*+json``), in UTF-8 (no ``charset`` or ``charset=utf-8``);
  anything else, a missing Content-Type included, is **415** ProblemDetails.
* **JSON text** (``parse_json``): strict UTF-8 (an invalid byte or an encoded surrogate is
  400); JSON syntax (400); no ``NaN``/``Infinity`` literals and no number that overflows a
  double (System.Text.Json reads neither); nesting at most ``MAX_DEPTH`` = 64 containers
  (System.Text.Json's default ``MaxDepth``; 400 beyond it); no string or key holding a lone
  UTF-16 surrogate (``"\\ud800"``: invalid UTF-16, which System.Text.Json refuses). Each is
  a 400 ValidationProblemDetails under ``$`` (or the value's JSON path).
* **Query** (``bind_query``): each query parameter the document declares for the
  operation is converted by its schema, as ASP.NET's model binding converts it: a boolean
  is ``true`` or ``false`` (any case, surrounding spaces ignored); an integer is decimal
  digits with an optional sign inside its ``format``'s range (int32: -2^31 .. 2^31-1); a
  ``date-time`` parses as ISO 8601; an enum names one of its values (any case); an array
  binds every repetition of the key. A value that does not convert is a 400
  ValidationProblemDetails naming the parameter ("The value 'AAA' is not valid for
  hideMatureContent."). A missing, empty or blank value is the parameter's default (or
  None), as ASP.NET turns a blank string into null; parameters the document does not
  declare are ignored, as the service ignores them.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from runner.contract import schema
from runner.emulator.clock import parse_iso
from runner.emulator.problems import Problem, validation_problem

MAX_DEPTH = 64  # System.Text.Json's JsonSerializerOptions.MaxDepth default
ROOT = "$"
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
INTEGER = re.compile(r"[+-]?[0-9]+")
SURROGATE = re.compile("[\ud800-\udfff]")
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})


class _Refused(Exception):
    """A JSON text System.Text.Json would not read: where and why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def operation(path: str, method: str) -> Mapping[str, Any]:
    """The document's operation object for ``method`` on the path template ``path``."""
    found: Mapping[str, Any] = schema.document()["paths"][path][method.lower()]
    return found


# -- the body -----------------------------------------------------------------------------


def _media_matches(media_type: str, documented: str) -> bool:
    if "*" not in documented:
        return media_type == documented
    head, _, tail = documented.partition("*")
    return (
        media_type.startswith(head)
        and media_type.endswith(tail)
        and len(media_type) > len(head + tail)
    )


def require_json_media_type(request: Request, path: str) -> None:
    """415 unless the request's Content-Type is one the operation's requestBody lists."""
    documented = list(operation(path, request.method)["requestBody"]["content"])
    header = request.headers.get("content-type", "")
    media_type, _, params = header.partition(";")
    media_type = media_type.strip().lower()
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if any(_media_matches(media_type, d) for d in documented) and (
        not charset or charset in UTF8_CHARSETS
    ):
        return
    shown = repr(header) if header else "none"
    detail = (
        f"The request body's Content-Type is {shown}; allowed: {', '.join(sorted(documented))}"
        " (UTF-8)."
    )
    raise Problem(415, detail)


def _constant(name: str) -> float:
    raise _Refused(ROOT, f"'{name}' is not a JSON value (allowed: a finite number).")


def _check_tree(value: object) -> None:
    """Walk the parsed JSON: depth, lone surrogates, non-finite numbers (raises _Refused)."""
    stack: list[tuple[object, str, int]] = [(value, ROOT, 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, path)
        elif isinstance(node, float) and not math.isfinite(node):
            raise _Refused(path, "The JSON number is out of range for a double.")
        elif isinstance(node, dict | list):
            if depth + 1 > MAX_DEPTH:
                message = f"The maximum configured depth of {MAX_DEPTH} has been exceeded."
                raise _Refused(path, message)
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key, path, key=True)
                    stack.append((item, f"{path}.{key}", depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node))


def _check_text(text: str, path: str, *, key: bool = False) -> None:
    bad = SURROGATE.search(text)
    if bad is None:
        return
    what = "property name" if key else "string"
    escape = f"\\u{ord(bad[0]):04x}"
    message = (
        f"The JSON {what} holds a lone UTF-16 surrogate ({escape}) at character"
        f" {bad.start() + 1}: it is not valid Unicode (allowed: Unicode text; a character"
        " outside the BMP is a high surrogate escape followed by a low one)."
    )
    raise _Refused(path, message)


def parse_json(raw: bytes) -> object:
    """The JSON body as System.Text.Json would read it; None when empty; 400 otherwise."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"The request body is not valid UTF-8 (byte {exc.start})."
        raise validation_problem({ROOT: [message]}) from None
    try:
        value: object = json.loads(text, parse_constant=_constant)
        _check_tree(value)
    except _Refused as exc:
        raise validation_problem({exc.path: [exc.message]}) from None
    except RecursionError:
        message = f"The maximum configured depth of {MAX_DEPTH} has been exceeded."
        raise validation_problem({ROOT: [message]}) from None
    except ValueError as exc:
        raise validation_problem({ROOT: [f"The request body is not valid JSON: {exc}."]}) from None
    return value


async def json_body(request: Request, path: str) -> object:
    """The request's JSON body, after its media type and text are checked (415 / 400)."""
    require_json_media_type(request, path)
    return parse_json(await request.body())


# -- the query string ---------------------------------------------------------------------


@functools.cache
def _query_parameters(path: str, method: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    """The operation's query parameters and their flattened schemas."""
    found = []
    for param in operation(path, method).get("parameters", []):
        if param["in"] != "query":
            continue
        node = param["schema"]
        if "$ref" in node:
            node = schema.flatten(node["$ref"].removeprefix(schema.REF_PREFIX))
        found.append((str(param["name"]), node))
    return tuple(found)


def _invalid(raw: str, name: str) -> str:
    return f"The value '{raw}' is not valid for {name}."


def _convert(node: Mapping[str, Any], raw: str, name: str) -> object:
    """``raw`` converted by the parameter schema ``node``; ValueError with the message."""
    text = raw.strip()
    if "enum" in node:
        for value in node["enum"]:
            if str(value).lower() == text.lower():
                return value
        raise ValueError(_invalid(raw, name))
    kind = node.get("type")
    if kind == "boolean":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(_invalid(raw, name))
    if kind == "integer":
        low, high = INT_RANGES.get(str(node.get("format")), INT_RANGES["int64"])
        if INTEGER.fullmatch(text) is None or not low <= int(text) <= high:
            raise ValueError(_invalid(raw, name))
        return int(text)
    if kind == "string" and node.get("format") == "date-time":
        try:
            parse_iso(text)
        except ValueError:
            raise ValueError(_invalid(raw, name)) from None
        return text
    return raw


def bind_query(request: Request, path: str) -> dict[str, Any]:
    """Every documented query parameter of the operation, converted; 400 if one does not."""
    bound: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, node in _query_parameters(path, request.method):
        if node.get("type") == "array":
            raws = [raw for raw in request.query_params.getlist(name) if raw.strip()]
            items = node.get("items", {})
            values = []
            for raw in raws:
                try:
                    values.append(_convert(items, raw, name))
                except ValueError as exc:
                    errors.setdefault(name, []).append(str(exc))
            bound[name] = tuple(values)
            continue
        raws = request.query_params.getlist(name)
        raw = raws[0] if raws else ""  # ASP.NET binds a scalar from the first value
        if raw.strip() == "":  # ConvertEmptyStringToNull: blank is no value
            bound[name] = node.get("default")
            continue
        try:
            bound[name] = _convert(node, raw, name)
        except ValueError as exc:
            errors.setdefault(name, []).append(str(exc))
    if errors:
        raise validation_problem(errors)
    return bound
