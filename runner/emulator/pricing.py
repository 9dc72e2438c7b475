"""The emulator's Buzz price of a Z-Image step and the WorkflowCost object it reports.

The seed page (recipes/zimage.md) gives the shape of the price:

    total = base × (width × height / 1024²) × (steps / referenceSteps) × quantity

with turbo ``base`` 8, ``referenceSteps`` 9 and base ``base`` 20, ``referenceSteps`` 20.
It is computed exactly with ``fractions.Fraction``.

**Rounding.** No source says how the service rounds (civitai-api.md §0, §14.8). The price
is rounded **up** to a whole Buzz, and is at least 1: ceiling never undercharges, so a
client that budgets with the emulator's figures cannot overspend a cap on the real service
for want of a fraction. Every example on the seed page is an exact integer, so they hold
under any rounding rule (turbo defaults 8, turbo ×4 32, turbo 1536×1024 at 12 steps 16,
base defaults 20, base at 30 steps 30).

**A workflow's price** is the sum of its steps' prices, each rounded on its own (a step is
what the service schedules and refunds).

**WorkflowCost.** A real (failed, refunded) workflow showed ``{"base": 0, "factors":
{"base": 60, "quantity": 1}, "tips": {"civitai": 0, "creators": 0}, "total": 0}``
(civitai/cli testdata). The emulator reports the same keys: ``base`` 0, ``factors.base`` the
exact per-image price (as a double), ``factors.quantity`` the number of images, zero tips,
and ``total`` the price. With several steps, ``factors.base`` is the exact unrounded sum
divided by the total quantity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from runner.emulator import schema

REFERENCE_PIXELS = 1024 * 1024
MINIMUM_BUZZ = 1


@dataclass(frozen=True)
class ModelRate:
    """One model's pricing constants from the seed page."""

    base_buzz: int  # the price of one 1024² image at reference_steps
    reference_steps: int


RATES: Mapping[str, ModelRate] = {
    "turbo": ModelRate(base_buzz=8, reference_steps=9),
    "base": ModelRate(base_buzz=20, reference_steps=20),
}


def _field(input: Mapping[str, Any], defaults: Mapping[str, object], name: str) -> int:
    value = input.get(name, defaults[name])
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"input {name} must be an integer to be priced, not {value!r}")
    return value


def exact_image_buzz(input: Mapping[str, Any]) -> Fraction:
    """The exact, unrounded price of one image of ``input`` (a normalized Z-Image input)."""
    model = str(input["model"])
    if model not in RATES:
        raise KeyError(f"no price for model {model!r}; priced: {', '.join(RATES)}")
    rate = RATES[model]
    defaults = schema.defaults_for(model)
    area_px = _field(input, defaults, "width") * _field(input, defaults, "height")
    steps = _field(input, defaults, "steps")
    return (
        rate.base_buzz * Fraction(area_px, REFERENCE_PIXELS) * Fraction(steps, rate.reference_steps)
    )


def exact_buzz(input: Mapping[str, Any]) -> Fraction:
    """The exact, unrounded price of the whole step (all ``quantity`` images)."""
    quantity = _field(input, schema.defaults_for(str(input["model"])), "quantity")
    return exact_image_buzz(input) * quantity


def price_buzz(input: Mapping[str, Any]) -> int:
    """The step's price in whole Buzz: the exact price rounded up, at least ``MINIMUM_BUZZ``."""
    return max(MINIMUM_BUZZ, math.ceil(exact_buzz(input)))


def _json_number(value: Fraction) -> int | float:
    """An integral Fraction as an int (JSON ``60``, as observed), any other as a double."""
    return value.numerator if value.denominator == 1 else float(value)


def workflow_cost(inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The WorkflowCost JSON object for a workflow whose steps have these inputs."""
    quantity = sum(_field(i, schema.defaults_for(str(i["model"])), "quantity") for i in inputs)
    exact_total = sum((exact_buzz(i) for i in inputs), Fraction(0))
    per_image = exact_total / quantity if quantity else Fraction(0)
    return {
        "base": 0,
        "factors": {"base": _json_number(per_image), "quantity": quantity},
        "tips": {"civitai": 0, "creators": 0},
        "total": sum(price_buzz(i) for i in inputs),
    }
