"""The emulator's Buzz price of a Z-Image step and the WorkflowCost object it reports.

The seed page (recipes/contract.md) gives the shape of the price:

    total = base × (width × height / 1024²) × (steps / referenceSteps) × quantity

with turbo ``base`` 8, ``referenceSteps`` 9 and base ``base`` 20, ``referenceSteps`` 20.
It is computed exactly with ``fractions.Fraction`` by ``runner.contract._zimage`` (``exact_buzz``,
``price_buzz``): the runner estimates and the emulator charges with the same code, so the
two can never disagree. This module only reads a normalized input's fields for it.

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

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from runner import contract
from runner.contract import MINIMUM_BUZZ, RATES, REFERENCE_PIXELS, ModelRate, schema

__all__ = [
    "MINIMUM_BUZZ",
    "RATES",
    "REFERENCE_PIXELS",
    "ModelRate",
    "exact_buzz",
    "exact_image_buzz",
    "price_buzz",
    "workflow_cost",
]


def _field(input: Mapping[str, Any], defaults: Mapping[str, object], name: str) -> int:
    value = input.get(name, defaults[name])
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"input {name} must be an integer to be priced, not {value!r}")
    return value


def _shape(input: Mapping[str, Any]) -> dict[str, Any]:
    """The priced fields of ``input`` (defaults filled in) as ``zimage`` keyword arguments."""
    model = str(input["model"])
    if model not in RATES:
        raise KeyError(f"no price for model {model!r}; priced: {', '.join(RATES)}")
    defaults = schema.read_defaults(model)
    fields = ("width", "height", "steps", "quantity")
    return {"model": model} | {name: _field(input, defaults, name) for name in fields}


def exact_image_buzz(input: Mapping[str, Any]) -> Fraction:
    """The exact, unrounded price of one image of ``input`` (a normalized Z-Image input)."""
    return contract.exact_buzz(**(_shape(input) | {"quantity": 1}))


def exact_buzz(input: Mapping[str, Any]) -> Fraction:
    """The exact, unrounded price of the whole step (all ``quantity`` images)."""
    return contract.exact_buzz(**_shape(input))


def price_buzz(input: Mapping[str, Any]) -> int:
    """The step's price in whole Buzz: ``contract.price_buzz``, the runner's own estimate."""
    return contract.price_buzz(**_shape(input))


def _json_number(value: Fraction) -> int | float:
    """An integral Fraction as an int (JSON ``60``, as observed), any other as a double."""
    return value.numerator if value.denominator == 1 else float(value)


def workflow_cost(inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The WorkflowCost JSON object for a workflow whose steps have these inputs."""
    quantity = sum(_shape(i)["quantity"] for i in inputs)
    exact_total = sum((exact_buzz(i) for i in inputs), Fraction(0))
    per_image = exact_total / quantity if quantity else Fraction(0)
    return {
        "base": 0,
        "factors": {"base": _json_number(per_image), "quantity": quantity},
        "tips": {"civitai": 0, "creators": 0},
        "total": sum(price_buzz(i) for i in inputs),
    }
