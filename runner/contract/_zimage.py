"""The Z-Image contract in one place: defaults, ranges, the request body, cost and runtime.

Everything here is pure: no I/O, no clock, no randomness. The numbers come from the seed
page (recipes/zimage.md) and the API's OpenAPI document (``runner.contract._schema``):

* ``MODEL_DEFAULTS``: what the service assumes for an omitted field, per model;
* ``check_field(name, value)``: the API's ranges and enums (read from the schema), plus the
  rules the schema does not carry: width/height divisible by 16, LoRA keys are AIR URNs;
* ``price_buzz``: ``base × (w·h / 1024²) × (steps / referenceSteps) × quantity``, exact
  (``Fraction``), rounded **up** to a whole Buzz, at least 1. The emulator charges with this
  very function (``runner/emulator/pricing.py``), so an estimate and a charge never differ;
* ``runtime_s``: the seed page's runtime table scaled by pixels, steps and quantity;
* ``advice``: the seed page's tuning advice, as warning texts;
* ``step_input``: the imageGen ``input`` object for one request.

The schema is imported lazily: the emulator package imports this module for its prices, so a
top-level import the other way would be a cycle.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from runner.contract import _schema as schema

MODELS: tuple[str, ...] = ("turbo", "base")

# The createImage input fields a manifest may set, in canonical order (the order of
# Cell.request and of the step input). `size` is the manifest's shorthand for width+height.
FIELDS: tuple[str, ...] = (
    "model",
    "prompt",
    "negativePrompt",
    "width",
    "height",
    "cfgScale",
    "steps",
    "sampleMethod",
    "schedule",
    "seed",
    "quantity",
    "loras",
    "outputFormat",
)

_SHARED_DEFAULTS: Mapping[str, object] = {
    "width": 1024,
    "height": 1024,
    "sampleMethod": "euler",
    "schedule": "simple",
    "quantity": 1,
    "loras": MappingProxyType({}),
    "outputFormat": "jpeg",
}
MODEL_DEFAULTS: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {
        "turbo": MappingProxyType({**_SHARED_DEFAULTS, "cfgScale": 1, "steps": 9}),
        "base": MappingProxyType({**_SHARED_DEFAULTS, "cfgScale": 4, "steps": 20}),
    }
)

ENGINE = "sdcpp"
ECOSYSTEM = "zImage"
OPERATION = "createImage"
SIZE_MULTIPLE_PX = 16  # seed page: "Divisible by 16"; the schema does not carry it
REFERENCE_PIXELS = 1024 * 1024
MINIMUM_BUZZ = 1
INT64 = (-(2**63), 2**63 - 1)
AIR_EXAMPLE = "urn:air:zImage:lora:civitai:123456@789012"
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
SHOWN_CHARS = 60


@dataclass(frozen=True)
class ModelRate:
    """One model's pricing constants from the seed page."""

    base_buzz: int  # the price of one 1024² image at reference_steps
    reference_steps: int


RATES: Mapping[str, ModelRate] = MappingProxyType(
    {
        "turbo": ModelRate(base_buzz=8, reference_steps=9),
        "base": ModelRate(base_buzz=20, reference_steps=20),
    }
)

# Seed page "Runtime": typical wall time of one 1024² image at the model's default steps.
RUNTIME_S: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"turbo": (3.0, 8.0), "base": (8.0, 20.0)}
)


@dataclass(frozen=True)
class Range:
    """An inclusive range the seed page advises, per model and field."""

    low: float
    high: float


# Seed page "Turbo tuning" and "Common parameters": the sweet spots.
ADVISED: Mapping[str, Mapping[str, Range]] = MappingProxyType(
    {
        "turbo": {"cfgScale": Range(1, 1), "steps": Range(8, 12)},
        "base": {"cfgScale": Range(3, 5), "steps": Range(20, 30)},
    }
)
ADVISED_MAX_QUANTITY = 4  # above it, >= 1024² requests tend to hit the 100 s request timeout


def _rate(model: str) -> ModelRate:
    if model not in RATES:
        raise KeyError(f"no price for model {model!r}; priced: {', '.join(RATES)}")
    return RATES[model]


@functools.lru_cache(maxsize=4096)  # a grid has few shapes; Fraction math is per cell otherwise
def exact_buzz(*, model: str, width: int, height: int, steps: int, quantity: int) -> Fraction:
    """The exact, unrounded seed-page price of one request (all ``quantity`` images)."""
    rate = _rate(model)
    area = Fraction(width * height, REFERENCE_PIXELS)
    return rate.base_buzz * area * Fraction(steps, rate.reference_steps) * quantity


def price_buzz(*, model: str, width: int, height: int, steps: int, quantity: int) -> int:
    """The request's price in whole Buzz: the exact price rounded up, at least 1."""
    exact = exact_buzz(model=model, width=width, height=height, steps=steps, quantity=quantity)
    return max(MINIMUM_BUZZ, math.ceil(exact))


def runtime_s(
    *, model: str, width: int, height: int, steps: int, quantity: int
) -> tuple[float, float]:
    """(low, high) wall seconds of one request: the seed's table scaled by work done."""
    if model not in RUNTIME_S:
        raise KeyError(f"no runtime for model {model!r}; known: {', '.join(RUNTIME_S)}")
    low_s, high_s = RUNTIME_S[model]
    default_steps = MODEL_DEFAULTS[model]["steps"]
    assert isinstance(default_steps, int)
    scale = (width * height / REFERENCE_PIXELS) * (steps / default_steps) * quantity
    return (low_s * scale, high_s * scale)


def step_input(request: Mapping[str, object]) -> dict[str, object]:
    """The imageGen ``input`` for ``request``: the discriminators, then its fields in order.

    Fields that are None (no negativePrompt, an unpinned seed) are left out: the service
    treats null and absent alike. ``loras`` becomes a plain dict (from a mapping or pairs).
    """
    body: dict[str, object] = {
        "engine": ENGINE,
        "ecosystem": ECOSYSTEM,
        "model": request["model"],
        "operation": OPERATION,
    }
    for name in FIELDS:
        value = request.get(name)
        if name == "model" or value is None:
            continue
        body[name] = lora_dict(value) if name == "loras" else value
    return body


def lora_dict(value: object) -> dict[str, object]:
    """LoRAs as a plain ``{air: strength}`` dict, from a mapping or ``(air, strength)`` pairs."""
    if isinstance(value, Mapping):
        return {str(key): strength for key, strength in value.items()}
    if isinstance(value, tuple | list):
        return {str(air): strength for air, strength in value}
    raise TypeError(f"loras must be a mapping or (air, strength) pairs, not {value!r}")


# --- advice ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advice:
    """One piece of the seed page's advice about a request, and the field it is about."""

    field: str
    message: str


def _outside(value: object, allowed: Range) -> bool:
    return isinstance(value, int | float) and not allowed.low <= value <= allowed.high


def _range_text(allowed: Range) -> str:
    low, high = (number_text(allowed.low), number_text(allowed.high))
    return low if low == high else f"{low}..{high}"


def advise(request: Mapping[str, object]) -> tuple[Advice, ...]:
    """The seed page's advice for ``request`` (merged fields; missing ones are defaults)."""
    model = str(request.get("model", MODELS[0]))
    merged = {**MODEL_DEFAULTS.get(model, {}), **request}
    found: list[Advice] = []
    for field, allowed in ADVISED.get(model, {}).items():
        value = merged.get(field)
        if _outside(value, allowed):
            found.append(Advice(field, _advice_text(model, field, value, allowed)))
    if model == "turbo" and merged.get("negativePrompt"):
        text = (
            "turbo effectively ignores a negativePrompt at cfgScale 1;"
            " use model base if the negative prompt matters"
        )
        found.append(Advice("negativePrompt", text))
    found.extend(_quantity_advice(merged))
    return tuple(found)


def _advice_text(model: str, field: str, value: object, allowed: Range) -> str:
    text = f"{model} works best at {field} {_range_text(allowed)} (got {shown(value)})"
    if model == "turbo":
        text += "; for more fidelity switch to base instead"
    return text


def _quantity_advice(merged: Mapping[str, Any]) -> list[Advice]:
    quantity, width, height = merged.get("quantity"), merged.get("width"), merged.get("height")
    if not (isinstance(quantity, int) and isinstance(width, int) and isinstance(height, int)):
        return []
    if quantity > ADVISED_MAX_QUANTITY and width * height >= REFERENCE_PIXELS:
        text = (
            f"quantity {quantity} at {width}x{height} often exceeds the 100-second request"
            f" timeout; at most {ADVISED_MAX_QUANTITY} is advised at 1024x1024 or larger"
        )
        return [Advice("quantity", text)]
    return []


def advice(request: Mapping[str, object]) -> list[str]:
    """The seed page's advice about ``request`` as warning texts (empty when none applies)."""
    return [item.message for item in advise(request)]


# --- checks ------------------------------------------------------------------------------


def shown(value: object) -> str:
    """A short rendering of a value for a message: strings quoted, long ones cut."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float | int):
        text = number_text(value)
    else:
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def number_text(value: float) -> str:
    """``4`` for 4 and 4.0, ``4.5`` for 4.5: a number as a person writes it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def suggestion(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {choice.lower(): choice for choice in choices}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"; did you mean {close[0]!r}?" if close else ""


@functools.cache
def _properties() -> Mapping[str, Any]:
    turbo = schema.input_properties("turbo")
    return MappingProxyType(turbo)


@functools.cache
def enum(name: str) -> tuple[str, ...]:
    """The allowed values of an enum field (model, sampleMethod, schedule, outputFormat)."""
    if name == "model":
        return MODELS
    return tuple(str(value) for value in _properties()[name]["enum"])


@functools.cache
def field_range(name: str) -> tuple[int | float, int | float]:
    """The schema's inclusive (minimum, maximum) of a numeric field (seed: int64)."""
    if name == "seed":
        return INT64
    node = _properties()[name]
    low: int | float = node.get("minimum", node.get("minLength"))
    high: int | float = node.get("maximum", node.get("maxLength"))
    return (low, high)


def is_integer(value: object) -> bool:
    """Whether ``value`` is an int the API binds as one (not a bool, not ``9.0``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _check_integer(name: str, value: object) -> str | None:
    low, high = field_range(name)
    sized = name in ("width", "height")
    allowed = f"allowed {low}..{high}" + (f", divisible by {SIZE_MULTIPLE_PX}" if sized else "")
    if not is_integer(value):
        return f"{shown(value)} is not an integer ({allowed})"
    assert isinstance(value, int)
    if not low <= value <= high:
        return f"{shown(value)} is out of range ({allowed})"
    if sized and value % SIZE_MULTIPLE_PX:
        return f"{shown(value)} is not divisible by {SIZE_MULTIPLE_PX} ({allowed})"
    return None


def _check_number(name: str, value: object) -> str | None:
    low, high = field_range(name)
    if not is_number(value):
        return f"{shown(value)} is not a number (allowed {low}..{high})"
    assert isinstance(value, int | float)
    if not low <= value <= high:
        return f"{shown(value)} is out of range (allowed {low}..{high})"
    return None


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _check_text(name: str, value: object) -> str | None:
    _, high = field_range(name)
    nullable = name == "negativePrompt"
    allowed = f"allowed: text of at most {high} characters" + (", or null" if nullable else "")
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        return f"{shown(value)} is not text ({allowed})"
    length = _utf16_len(value)
    if length > high:
        return f"{shown(value)} is {length} characters long ({allowed})"
    return None


def _check_enum(name: str, value: object) -> str | None:
    allowed = enum(name)
    if isinstance(value, str) and value in allowed:
        return None
    hint = suggestion(value, allowed) if isinstance(value, str) else ""
    return f"{shown(value)} is not a known {name}{hint} (allowed: {', '.join(allowed)})"


def check_lora_key(air: object) -> str | None:
    """None if ``air`` is an AIR URN the API accepts as a LoRA key, else what is allowed."""
    if isinstance(air, str) and schema.air_pattern().match(air) is not None:
        return None
    return f"{shown(air)} is not an AIR URN (e.g. {AIR_EXAMPLE})"


def check_lora_strength(strength: object) -> str | None:
    """None if ``strength`` is a finite number (the schema sets no bounds), else why not."""
    if is_number(strength):
        return None
    return f"{shown(strength)} is not a number (allowed: a LoRA strength, typically 0..2)"


def _check_loras(value: object) -> str | None:
    if isinstance(value, tuple | list) and all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in value
    ):
        value = dict(value)
    if not isinstance(value, Mapping):
        return f"{shown(value)} is not a mapping of AIR URN to strength (e.g. {AIR_EXAMPLE}: 0.8)"
    for air, strength in value.items():
        problem = check_lora_key(air) or check_lora_strength(strength)
        if problem is not None:
            return problem
    return None


def parse_size(value: object) -> tuple[int, int] | None:
    """``(width, height)`` from ``"1536x1024"``; None if ``value`` is not ``WxH``."""
    match = SIZE_PATTERN.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    return (int(match[1]), int(match[2]))


def _check_size(value: object) -> str | None:
    size = parse_size(value)
    if size is None:
        return f"{shown(value)} is not a size (allowed WxH, e.g. 1536x1024)"
    for name, pixels in zip(("width", "height"), size, strict=True):
        problem = _check_integer(name, pixels)
        if problem is not None:
            return f"{name} {problem}"
    return None


_CHECKS = {
    "model": _check_enum,
    "sampleMethod": _check_enum,
    "schedule": _check_enum,
    "outputFormat": _check_enum,
    "width": _check_integer,
    "height": _check_integer,
    "steps": _check_integer,
    "quantity": _check_integer,
    "seed": _check_integer,
    "cfgScale": _check_number,
    "prompt": _check_text,
    "negativePrompt": _check_text,
}


def check_field(name: str, value: object) -> str | None:
    """None if ``value`` is valid for input field ``name``, else what is wrong and allowed.

    ``name`` is one of ``FIELDS`` or ``size`` (``"WxH"``). The text names the value and what
    is allowed, e.g. ``0 is out of range (allowed 1..150)``; the caller adds where.
    """
    if name == "loras":
        return _check_loras(value)
    if name == "size":
        return _check_size(value)
    check = _CHECKS.get(name)
    if check is None:
        known = (*FIELDS, "size")
        hint = suggestion(name, known)
        return f"{name!r} is not an input field{hint} (allowed: {', '.join(known)})"
    return check(name, value)
