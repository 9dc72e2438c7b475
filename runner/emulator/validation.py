"""Service-side validation of a SubmitWorkflow body, and the input as the service echoes it.

``validate_template(body)`` returns the ``errors`` member of a ValidationProblemDetails:
``{field path: [messages]}``, empty when the body is acceptable. Every error is collected,
not just the first.

**Paths** are camelCase JSON paths from the body's root: ``externalId``, ``tags``,
``tags[3]``, ``steps``, ``steps[0].$type``, ``steps[0].input.width``,
``steps[0].input.loras['urn:air:zImage:lora:civitai:1@2']``. ``$`` is the body itself (not
a JSON object). An unknown property is reported under its own path.

**Messages** say what is wrong and what is allowed. Where .NET's DataAnnotations have a
wording the service is likely to share, it is used verbatim (``The field width must be
between 64 and 2048.``, ``The prompt field is required.``, ``The field externalId must
match the regular expression '^[A-Za-z0-9_-]+$'.``). The Z-Image discriminator messages
start with the seed page's phrases: ``ecosystem must be zImage (got 'z-image').``,
``operation must be createImage (got 'editImage').``

**Ranges, enums, patterns and lengths come from the schema** (``schema.py``). Rules the
schema does not carry are constants here, each with its source: width/height divisible by
16 (seed page), tags at most 200 characters (the schema's description only), LoRA keys are
AIR URNs (the server's AIR pattern), step ``timeout`` is a .NET TimeSpan.

Choices where the sources are silent (see docs/emulator.md):

* ``currencies`` is ``required`` in the schema, yet every documented example omits it and
  the docs define its absence (blue, then green, then yellow): absent is accepted.
* An integer field rejects ``9.5`` and also ``9.0`` and ``true``: System.Text.Json does not
  convert a JSON number with a fraction part, or a boolean, to an ``int``.
* String lengths count UTF-16 code units, as .NET does.
* Non-nullable enums (``priority``, ``nsfwLevel``, ``upgradeMode``) reject ``null``.
* A wrong ``engine`` or ``ecosystem`` stops the input's checks there (the service would not
  know which schema applies); a wrong ``model`` or ``operation`` does not, because turbo and
  base accept the same fields, so the remaining fields are still checked.
* ``controlNets`` is validated against its schema (ImageJobControlNet) and echoed.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner import contract
from runner.contract import schema

Errors = dict[str, list[str]]

ROOT_PATH = "$"
STEP_TYPE = "imageGen"
SIZE_MULTIPLE_PX = 16  # seed page: "width / height … Divisible by 16"; not in the schema
MAX_TAG_CHARS = 200  # WorkflowTemplate.tags description: "Each tag can be at most 200 characters"
OPTIONAL_DESPITE_SCHEMA = frozenset({"currencies"})  # the docs' examples omit it
DEFAULT_OUTPUT_FORMAT = "jpeg"  # unknown upstream; real blob ids end in .jpeg
AIR_EXAMPLE = "urn:air:zImage:lora:civitai:123456@789012"
DISCRIMINATORS = ("engine", "ecosystem", "model", "operation")
# The order the emulator echoes input fields in: the request shape first, then the rest.
# (The contract's fields, the model among the discriminators; outputFormat in schema order.)
ECHO_ORDER = (
    *DISCRIMINATORS,
    *(name for name in contract.FIELDS if name not in ("model", "outputFormat")),
)
# JSON Schema's "uri" is an absolute URI (RFC 3986): a scheme, ":", then no spaces.
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+\Z")
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
TIMESPAN = re.compile(
    r"^(?:(?P<days>\d{1,8})\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{2}):(?P<seconds>\d{2})"
    r"(?:\.(?P<fraction>\d{1,7}))?$"
)


@dataclass(frozen=True)
class At:
    """Where a value sits: its error key (``path``) and the name messages use (``label``)."""

    path: str
    label: str

    def prop(self, name: str) -> At:
        return At(f"{self.path}.{name}" if self.path else name, name)

    def item(self, index: int) -> At:
        return At(f"{self.path}[{index}]", f"{self.label}[{index}]")

    def key(self, key: str) -> At:
        quoted = "'" + key.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return At(f"{self.path}[{quoted}]", f"{self.label}[{quoted}]")


ROOT = At("", "")


def _add(errors: Errors, at: At, message: str) -> None:
    errors.setdefault(at.path or ROOT_PATH, []).append(message)


def _shown(value: object) -> str:
    """A short rendering of a JSON value for a message."""
    if isinstance(value, str):
        text = "'" + value + "'"
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _json_types(value: object) -> set[str]:
    """The JSON Schema type names ``value`` satisfies (strictly, as .NET binds them)."""
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"} if math.isfinite(value) else set()
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    if isinstance(value, dict):
        return {"object"}
    return set()


ARTICLES = {"integer": "an integer", "array": "an array", "object": "an object", "null": "null"}


def _type_ok(node: Mapping[str, Any], value: object, at: At, errors: Errors) -> bool:
    wanted = node.get("type")
    if wanted is None:
        return True
    allowed = [wanted] if isinstance(wanted, str) else list(wanted)
    if _json_types(value) & set(allowed):
        return True
    spoken = [ARTICLES.get(name, f"a {name}") for name in sorted(allowed, key="null".__eq__)]
    if "enum" in node:
        spoken = ["one of " + ", ".join(str(item) for item in node["enum"])]
    _add(errors, at, f"The field {at.label} must be {' or '.join(spoken)} (got {_shown(value)}).")
    return False


def _check_number(node: Mapping[str, Any], value: float, at: At, errors: Errors) -> None:
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None and not low <= value <= high:
        _add(errors, at, f"The field {at.label} must be between {low} and {high}.")
    elif low is not None and value < low:
        _add(errors, at, f"The field {at.label} must be at least {low}.")
    elif high is not None and value > high:
        _add(errors, at, f"The field {at.label} must be at most {high}.")
    fmt = node.get("format")
    if isinstance(value, int) and fmt in INT_RANGES and (low, high) == (None, None):
        first, last = INT_RANGES[fmt]
        if not first <= value <= last:
            bits = fmt.removeprefix("int")
            _add(errors, at, f"The field {at.label} must be a {bits}-bit integer (got {value}).")


def _whole_match(pattern: str, value: str) -> bool:
    """.NET's RegularExpressionAttribute: the first match must cover the whole value (so a
    ``$`` that Python lets match before a final newline does not let ``"abc\n"`` through)."""
    match = re.search(pattern, value)
    return match is not None and match.start() == 0 and match.end() == len(value)


def _check_string(node: Mapping[str, Any], value: str, at: At, errors: Errors) -> None:
    length = _utf16_len(value)
    low, high = node.get("minLength"), node.get("maxLength")
    if high is not None and length > high:
        message = f"The field {at.label} must be at most {high} characters long (got {length})."
        _add(errors, at, message)
    if low is not None and length < low:
        unit = "character" if low == 1 else "characters"
        _add(errors, at, f"The field {at.label} must be at least {low} {unit} long.")
    pattern = node.get("pattern")
    if pattern is not None and not _whole_match(pattern, value):
        _add(errors, at, f"The field {at.label} must match the regular expression '{pattern}'.")
    if node.get("format") == "uri" and ABSOLUTE_URI.match(value) is None:
        message = f"The field {at.label} must be an absolute URI such as https://host/path"
        _add(errors, at, f"{message} (got {_shown(value)}).")


def _check_array(node: Mapping[str, Any], value: list[Any], at: At, errors: Errors) -> None:
    low, high = node.get("minItems"), node.get("maxItems")
    if low is not None and len(value) < low:
        unit = "item" if low == 1 else "items"
        _add(errors, at, f"The field {at.label} must contain at least {low} {unit}.")
    if high is not None and len(value) > high:
        message = f"The field {at.label} must contain at most {high} items (got {len(value)})."
        _add(errors, at, message)
    if node.get("uniqueItems"):
        seen: set[str] = set()
        for item in value:
            canonical = json.dumps(item, sort_keys=True, default=str)
            if canonical in seen:
                message = f"The field {at.label} must not repeat a value; {_shown(item)} repeats."
                _add(errors, at, message)
                break
            seen.add(canonical)
    if "items" in node:
        for index, item in enumerate(value):
            check_value(node["items"], item, at.item(index), errors)


def _check_unknown(
    allowed: Mapping[str, Any], value: Mapping[str, Any], at: At, errors: Errors
) -> None:
    names = ", ".join(sorted(allowed))
    for key in value:
        if key not in allowed:
            _add(errors, at.prop(key), f"Unknown property '{key}'; allowed: {names}.")


def _check_object(node: Mapping[str, Any], value: dict[str, Any], at: At, errors: Errors) -> None:
    props: Mapping[str, Any] = node.get("properties", {})
    for name in node.get("required", []):
        if name not in value:
            _add(errors, at.prop(name), f"The {name} field is required.")
    extra = node.get("additionalProperties")
    if extra is False:
        _check_unknown(props, value, at, errors)
    for key, item in value.items():
        if key in props:
            check_value(props[key], item, at.prop(key), errors)
        elif isinstance(extra, dict):
            check_value(extra, item, at.key(key), errors)


def check_value(node: Mapping[str, Any], value: object, at: At, errors: Errors) -> None:
    """Check ``value`` against a flattened schema ``node``, adding messages to ``errors``."""
    if not _type_ok(node, value, at, errors) or value is None:
        return
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(str(item) for item in node["enum"])
        _add(
            errors, at, f"{_shown(value)} is not a valid value for {at.label}; allowed: {allowed}."
        )
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(node, value, at, errors)
    elif isinstance(value, str):
        _check_string(node, value, at, errors)
    elif isinstance(value, list):
        _check_array(node, value, at, errors)
    elif isinstance(value, dict):
        _check_object(node, value, at, errors)


def parse_timespan(text: str) -> dt.timedelta | None:
    """A .NET TimeSpan ``hh:mm:ss[.fffffff]`` or ``d.hh:mm:ss[.fffffff]``; None if malformed."""
    match = TIMESPAN.match(text)
    if match is None:
        return None
    hours, minutes, seconds = (int(match[name]) for name in ("hours", "minutes", "seconds"))
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    fraction = (match["fraction"] or "0").ljust(7, "0")
    return dt.timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=int(fraction) // 10,
    )


def validate_template(body: object) -> Errors:
    """The ValidationProblemDetails ``errors`` for a SubmitWorkflow body; empty when valid."""
    errors: Errors = {}
    if not isinstance(body, dict):
        message = (
            f"The request body must be a JSON object (a WorkflowTemplate), not {_shown(body)}."
        )
        _add(errors, ROOT, message)
        return errors
    props = schema.read_properties("WorkflowTemplate")
    _check_unknown(props, body, ROOT, errors)
    for name in schema.required("WorkflowTemplate"):
        if name not in body and name not in OPTIONAL_DESPITE_SCHEMA:
            _add(errors, ROOT.prop(name), f"The {name} field is required.")
    for name, node in props.items():
        if name in body and name != "steps":
            check_value(node, body[name], ROOT.prop(name), errors)
    _check_tags(body.get("tags"), errors)
    if "steps" in body:
        _check_steps(props["steps"], body["steps"], ROOT.prop("steps"), errors)
    return errors


def validate_update(body: object) -> Errors:
    """The ValidationProblemDetails ``errors`` for an UpdateWorkflow (PUT) body; empty if valid.

    Every field is checked against the document's ``UpdateWorkflowRequest`` (``status`` is
    the non-nullable enum ``canceled``; ``metadata`` an object or null; ``tags`` an array of
    strings or null; ``allowMatureContent`` a boolean or null; nothing else), and ``tags``
    also against the rules the service states for a workflow's tags (``WorkflowTemplate``:
    at most 10, unique, each at most 200 characters): PUT replaces them.
    """
    errors: Errors = {}
    if not isinstance(body, dict):
        wanted = "a JSON object (an UpdateWorkflowRequest)"
        _add(errors, ROOT, f"The request body must be {wanted}, not {_shown(body)}.")
        return errors
    props = schema.read_properties("UpdateWorkflowRequest")
    _check_unknown(props, body, ROOT, errors)
    for name, node in props.items():
        if name in body:
            check_value(node, body[name], ROOT.prop(name), errors)
    tags = body.get("tags")
    if isinstance(tags, list) and all(isinstance(tag, str) for tag in tags):
        rules = schema.read_properties("WorkflowTemplate")["tags"]
        check_value(rules, tags, ROOT.prop("tags"), errors)
        _check_tags(tags, errors)
    return errors


def _check_tags(tags: object, errors: Errors) -> None:
    if not isinstance(tags, list):
        return
    at = ROOT.prop("tags")
    for index, tag in enumerate(tags):
        if isinstance(tag, str) and _utf16_len(tag) > MAX_TAG_CHARS:
            item = at.item(index)
            limit = f"at most {MAX_TAG_CHARS} characters long (got {_utf16_len(tag)})"
            _add(errors, item, f"The field {item.label} must be {limit}.")


def _check_steps(node: Mapping[str, Any], steps: object, at: At, errors: Errors) -> None:
    shape = {key: value for key, value in node.items() if key != "items"}
    check_value(shape, steps, at, errors)
    if isinstance(steps, list):
        for index, step in enumerate(steps):
            _check_step(step, at.item(index), errors)


def _check_step(step: object, at: At, errors: Errors) -> None:
    if not isinstance(step, dict):
        _add(errors, at, f"The field {at.label} must be an object (got {_shown(step)}).")
        return
    step_type = step.get("$type")
    if step_type is None:
        message = f"The $type field is required; this emulator serves only {STEP_TYPE} steps."
        _add(errors, at.prop("$type"), message)
        return
    if step_type != STEP_TYPE:
        message = (
            f"Step type {_shown(step_type)} is not supported by this emulator;"
            f" it serves only {STEP_TYPE} steps."
        )
        _add(errors, at.prop("$type"), message)
        return
    props = schema.read_properties("ImageGenStepTemplate")
    _check_unknown(props, step, at, errors)
    for name, prop_node in props.items():
        if name in step and name not in ("$type", "input"):
            check_value(prop_node, step[name], at.prop(name), errors)
    timeout = step.get("timeout")
    if isinstance(timeout, str) and parse_timespan(timeout) is None:
        message = (
            f"The field timeout must be a TimeSpan 'hh:mm:ss' or 'd.hh:mm:ss'"
            f" (got {_shown(timeout)})."
        )
        _add(errors, at.prop("timeout"), message)
    if "input" not in step:
        _add(errors, at.prop("input"), "The input field is required.")
    else:
        _check_input(step["input"], at.prop("input"), errors)


def _must_be(prop: str, allowed: tuple[str, ...]) -> str:
    return f"{prop} must be {' or '.join(allowed)}"


def _check_discriminator(
    value: Mapping[str, Any], prop: str, allowed: tuple[str, ...], at: At, errors: Errors
) -> bool:
    """Whether ``value[prop]`` is one of ``allowed``; adds the seed page's message if not."""
    if prop not in value:
        _add(errors, at.prop(prop), f"The {prop} field is required; {_must_be(prop, allowed)}.")
        return False
    if value[prop] not in allowed:
        message = f"{_must_be(prop, allowed)} (got {_shown(value[prop])})."
        _add(errors, at.prop(prop), message)
        return False
    return True


def _check_input(value: object, at: At, errors: Errors) -> None:
    if not isinstance(value, dict):
        _add(errors, at, f"The field {at.label} must be an object (got {_shown(value)}).")
        return
    for base, prop in schema.INPUT_CHAIN[:2]:
        if not _check_discriminator(value, prop, schema.discriminator_values(base), at, errors):
            return
    models = schema.models()
    model_ok = _check_discriminator(value, "model", models, at, errors)
    model = value["model"] if model_ok else models[-1]
    _check_discriminator(value, "operation", schema.operations(model), at, errors)
    _check_input_fields(value, model, at, errors)


def _check_input_fields(value: Mapping[str, Any], model: str, at: At, errors: Errors) -> None:
    name = schema.input_schema_name(model)
    props = schema.read_properties(name)
    _check_unknown(props, value, at, errors)
    for field in schema.required(name):
        if field not in value and field not in DISCRIMINATORS:
            _add(errors, at.prop(field), f"The {field} field is required.")
    for field, node in props.items():
        if field in value and field not in DISCRIMINATORS:
            check_value(node, value[field], at.prop(field), errors)
    for field in ("width", "height"):
        size = value.get(field)
        if isinstance(size, int) and not isinstance(size, bool) and size % SIZE_MULTIPLE_PX:
            message = f"{field} must be divisible by {SIZE_MULTIPLE_PX} (got {size})."
            _add(errors, at.prop(field), message)
    loras = value.get("loras")
    if isinstance(loras, dict):
        for key in loras:
            if not _whole_match(schema.air_pattern().pattern, key):
                message = f"LoRA key {_shown(key)} is not an AIR URN (e.g. {AIR_EXAMPLE})."
                _add(errors, at.prop("loras").key(key), message)


def normalized_input(input: Mapping[str, Any]) -> dict[str, Any]:
    """The accepted input as the service echoes it in ``steps[].input``.

    Defaults are filled in (``schema.defaults_for``: width/height 1024, the model's cfgScale
    and steps, quantity 1, sampleMethod ``euler``, schedule ``simple``, loras ``{}``); null
    optional fields are left out. ``seed`` is not invented here (the service draws it), and
    ``outputFormat`` is echoed only when sent (its default is unknown; see
    ``output_format``). Fields come in ``ECHO_ORDER``, then the rest in schema order.
    """
    model = str(input["model"])
    given = {key: value for key, value in input.items() if value is not None}
    merged = {**schema.read_defaults(model), **given}
    order = [*ECHO_ORDER, *schema.read_properties(schema.input_schema_name(model)), *merged]
    return {key: copy.deepcopy(merged[key]) for key in dict.fromkeys(order) if key in merged}


def output_format(input: Mapping[str, Any]) -> str:
    """The image format to render: the input's ``outputFormat``, else ``DEFAULT_OUTPUT_FORMAT``."""
    chosen = input.get("outputFormat")
    return chosen if isinstance(chosen, str) else DEFAULT_OUTPUT_FORMAT
