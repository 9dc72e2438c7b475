"""Civitai's OpenAPI schemas (the packaged subset) as plain, checkable JSON Schemas.

The OpenAPI document cannot be handed to a JSON Schema validator as it is:

* every ``allOf`` level says ``additionalProperties: false``, so an object valid for the
  merged type fails each level that does not know the other levels' properties;
* a ``$ref`` to a base type with a ``discriminator`` means "the mapped subtype named by the
  data's discriminator value", which JSON Schema has no word for;
* patterns use .NET/ECMAScript named groups ``(?<name>…)``, which Python's ``re`` rejects.

``flatten(name)`` fixes all three and returns a self-contained Draft 2020-12 schema:

* **allOf is merged**: the union of ``properties`` (a later level's definition of a
  property replaces an earlier one; in this API subtypes only ever narrow a property, e.g.
  ``engine: string`` becomes ``engine: enum [sdcpp]``) and of ``required``, with
  ``additionalProperties: false`` applied once, to the merged object.
* **$refs are inlined** recursively (the subset has no cycles; one would raise
  ``SchemaError``).
* **A discriminated $ref** with one mapped member becomes that member's flattened schema
  (every concrete subtype pins its discriminator properties with an ``enum``). With several
  members it becomes ``{"required": [p], "properties": {p: {"enum": [keys]}}, "allOf": [
  {"if": {"required": [p], "properties": {p: {"const": key}}}, "then": <member>}, …]}``:
  a resolution by the data's value, so a validator reports the errors of the one member
  the data chose, never a wall of ``oneOf`` failures.
* **Patterns** are rewritten to Python syntax (``(?<g>`` becomes ``(?P<g>``).

``flatten(name)`` of a base type with a discriminator (``Blob``, ``WorkflowStep``,
``ImageGenInput``, ``WorkflowStepTemplate``) dispatches the same way: a value declared as
that type is checked as the subtype it names. ``component(name)`` gives the raw schema.

The module reads the packaged JSON once (cached) and does no other I/O.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

SUBSET_RESOURCE = "openapi-subset.json"
REF_PREFIX = "#/components/schemas/"

# Defaults the seed page (recipes/zimage.md) states but the schema does not carry.
SEED_PAGE_DEFAULTS: Mapping[str, object] = {
    "sampleMethod": "euler",
    "schedule": "simple",
    "loras": {},
}

# The Z-Image discriminator chain: each base schema and the property it dispatches on.
INPUT_CHAIN: tuple[tuple[str, str], ...] = (
    ("ImageGenInput", "engine"),
    ("SdCppImageGenInput", "ecosystem"),
    ("ZImageImageGenInput", "model"),
)

Schema = dict[str, Any]


class SchemaError(Exception):
    """The packaged subset lacks a schema, or a schema cannot be flattened."""


@dataclass(frozen=True)
class Bounds:
    """Inclusive numeric or length bounds of one property, as the schema states them."""

    minimum: int | float | None
    maximum: int | float | None


@functools.cache
def document() -> Mapping[str, Any]:
    """The packaged OpenAPI subset, read once."""
    text = resources.files(__package__).joinpath(SUBSET_RESOURCE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def names() -> tuple[str, ...]:
    """The component schema names in the subset, sorted."""
    return tuple(sorted(document()["components"]["schemas"]))


def component(name: str) -> Schema:
    """A deep copy of the raw component schema ``name`` (allOf and $refs untouched)."""
    return copy.deepcopy(dict(_raw(name)))


def _raw(name: str) -> Mapping[str, Any]:
    schemas: Mapping[str, Any] = document()["components"]["schemas"]
    if name not in schemas:
        raise SchemaError(f"no component schema {name!r}; the subset has: {', '.join(names())}")
    found: Mapping[str, Any] = schemas[name]
    return found


def _ref_name(ref: str) -> str:
    if not ref.startswith(REF_PREFIX):
        raise SchemaError(f"unsupported $ref {ref!r}; only {REF_PREFIX}<name> is resolved")
    return ref.removeprefix(REF_PREFIX)


def python_pattern(pattern: str) -> str:
    """``pattern`` with .NET/ECMAScript named groups ``(?<g>…)`` rewritten for ``re``."""
    return re.sub(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>", r"(?P<\1>", pattern)


def _own_discriminator(name: str) -> Mapping[str, Any] | None:
    """The discriminator declared by ``name`` itself (top level or an inline allOf part)."""
    raw = _raw(name)
    levels: list[Mapping[str, Any]] = [raw]
    levels += [part for part in raw.get("allOf", []) if "$ref" not in part]
    for level in levels:
        if "discriminator" in level:
            found: Mapping[str, Any] = level["discriminator"]
            return found
    return None


def discriminator_values(name: str) -> tuple[str, ...]:
    """The discriminator values the subset maps for base schema ``name``, sorted."""
    disc = _own_discriminator(name)
    if disc is None:
        raise SchemaError(f"{name} has no discriminator")
    return tuple(sorted(disc.get("mapping", {})))


def discriminator_target(name: str, value: str) -> str:
    """The schema name base ``name`` maps discriminator ``value`` to."""
    disc = _own_discriminator(name)
    mapping: Mapping[str, str] = {} if disc is None else disc.get("mapping", {})
    if value not in mapping:
        raise SchemaError(f"{name} maps no {value!r}; allowed: {', '.join(sorted(mapping))}")
    return _ref_name(mapping[value])


def _merged(name: str) -> Schema:
    """``name`` with its allOf levels merged; its own discriminator is dropped."""
    raw = _raw(name)
    skip = {"allOf", "discriminator"}
    out: Schema = {key: value for key, value in raw.items() if key not in skip}
    if "allOf" not in raw:
        return copy.deepcopy(out)
    properties: Schema = {}
    required: list[str] = []
    closed = False
    for part in raw["allOf"]:
        level = _merged(_ref_name(part["$ref"])) if "$ref" in part else part
        properties.update(copy.deepcopy(level.get("properties", {})))
        required += [field for field in level.get("required", []) if field not in required]
        closed = closed or level.get("additionalProperties") is False
        out.setdefault("type", level.get("type"))
    out["properties"] = properties
    out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _resolve(node: Any, stack: tuple[str, ...]) -> Any:
    """``node`` with every $ref inlined, discriminators dropped and patterns made Pythonic."""
    if isinstance(node, list):
        return [_resolve(item, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        resolved = _resolve_ref(_ref_name(node["$ref"]), stack)
        siblings = {k: _resolve(v, stack) for k, v in node.items() if k != "$ref"}
        return {**resolved, **siblings} if siblings else resolved
    out: Schema = {}
    for key, value in node.items():
        if key == "discriminator":
            continue
        if key == "pattern" and isinstance(value, str):
            out[key] = python_pattern(value)
        elif key in ("enum", "const", "default", "example", "examples"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _resolve(value, stack)
    return out


def _resolve_ref(name: str, stack: tuple[str, ...]) -> Schema:
    """The flattened schema for a value declared as ``name`` (dispatching discriminators)."""
    if name in stack:
        raise SchemaError(f"$ref cycle: {' -> '.join((*stack, name))}")
    stack = (*stack, name)
    disc = _own_discriminator(name)
    if disc is None or not disc.get("mapping"):
        resolved: Schema = _resolve(_merged(name), stack)
        return resolved
    prop: str = disc["propertyName"]
    keys = sorted(disc["mapping"])
    members = {key: _resolve_ref(discriminator_target(name, key), stack) for key in keys}
    if len(members) == 1:
        return members[keys[0]]
    branches = [
        {"if": {"required": [prop], "properties": {prop: {"const": key}}}, "then": member}
        for key, member in members.items()
    ]
    return {
        "type": "object",
        "required": [prop],
        "properties": {prop: {"enum": keys}},
        "allOf": branches,
    }


@functools.cache
def _flattened(name: str) -> Schema:
    return _resolve_ref(name, ())


def flatten(name: str) -> Schema:
    """A self-contained JSON Schema (Draft 2020-12) for a value declared as ``name``."""
    return copy.deepcopy(_flattened(name))


@functools.cache
def _merged_resolved(name: str) -> Schema:
    resolved: Schema = _resolve(_merged(name), (name,))
    return resolved


def merged(name: str) -> Schema:
    """``name`` itself as a flat object schema: allOf merged, $refs inlined, no dispatch.

    For a base type this is the base's own shape (``ZImageImageGenInput`` without the
    turbo/base members' properties); ``flatten`` is what checks a value of that type.
    """
    return copy.deepcopy(_merged_resolved(name))


def properties(name: str) -> Schema:
    """The flattened ``properties`` of object schema ``name`` (see ``merged``)."""
    node = _merged_resolved(name)
    if "properties" not in node:
        raise SchemaError(f"{name} is not an object schema")
    return copy.deepcopy(node["properties"])


@functools.cache
def read_properties(name: str) -> Mapping[str, Any]:
    """``properties(name)`` without the copy, for the request path: one shared mapping per
    schema, built once. Read it, never change it (the nodes inside are plain dicts)."""
    return MappingProxyType(properties(name))


@functools.cache
def read_defaults(model: str) -> Mapping[str, object]:
    """``defaults_for(model)`` without the copy, shared and built once; read, never change."""
    return MappingProxyType(defaults_for(model))


def required(name: str) -> tuple[str, ...]:
    """The required property names of object schema ``name``, in schema order."""
    return tuple(_merged_resolved(name).get("required", []))


def enum_values(name: str) -> tuple[str, ...]:
    """The allowed values of enum component ``name``, in schema order."""
    values = _raw(name).get("enum")
    if values is None:
        raise SchemaError(f"{name} is not an enum schema")
    return tuple(str(value) for value in values)


def models() -> tuple[str, ...]:
    """The Z-Image models the subset maps (``base``, ``turbo``)."""
    return discriminator_values("ZImageImageGenInput")


def input_schema_name(model: str) -> str:
    """The concrete createImage input schema for ``model``, e.g. ZImageTurboCreateImageGenInput."""
    model_schema = discriminator_target("ZImageImageGenInput", model)
    return discriminator_target(model_schema, "createImage")


def operations(model: str) -> tuple[str, ...]:
    """The operations the subset maps for ``model`` (only ``createImage``)."""
    return discriminator_values(discriminator_target("ZImageImageGenInput", model))


def input_properties(model: str) -> Schema:
    """The flattened properties of the createImage input for ``model``."""
    return properties(input_schema_name(model))


def bounds(name: str, prop: str) -> Bounds:
    """The ``minimum``/``maximum`` (or, for strings, length) bounds of ``name.prop``."""
    node = properties(name)[prop]
    if "minimum" in node or "maximum" in node:
        return Bounds(node.get("minimum"), node.get("maximum"))
    return Bounds(node.get("minLength"), node.get("maxLength"))


def defaults_for(model: str) -> dict[str, object]:
    """The values the service assumes for omitted inputs of ``model``.

    The schema's ``default``s (width, height, cfgScale, steps, quantity) plus the seed page's
    (``SEED_PAGE_DEFAULTS``: sampleMethod ``euler``, schedule ``simple``, loras ``{}``).
    """
    found: dict[str, object] = {
        prop: copy.deepcopy(node["default"])
        for prop, node in input_properties(model).items()
        if "default" in node
    }
    for prop, value in SEED_PAGE_DEFAULTS.items():
        found.setdefault(prop, copy.deepcopy(value))
    return found


@functools.cache
def air_pattern() -> re.Pattern[str]:
    """The server's AIR URN pattern (from ``ZImageImageGenInput.diffuserModel``), compiled."""
    node = properties("ZImageImageGenInput")["diffuserModel"]
    return re.compile(node["pattern"])


def walk(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every schema object inside a flattened schema, ``node`` first (for tests and checks)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("enum", "const", "default", "example", "examples"):
                yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)
