"""The Z-Image Buzz price: the seed page's formula, exact, rounded up, at least 1."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.contract import _schema as schema
from runner.emulator.pricing import RATES, exact_buzz, price_buzz, workflow_cost
from runner.emulator.validation import normalized_input
from tests.openapi_check import assert_schema

PROPERTIES = settings(derandomize=True, max_examples=200, deadline=None)


def _priced(model: str = "turbo", **fields: object) -> dict[str, object]:
    request = {"engine": "sdcpp", "ecosystem": "zImage", "model": model}
    return normalized_input(request | {"operation": "createImage", "prompt": "p"} | fields)


@pytest.mark.parametrize(
    ("input", "buzz"),
    [
        (_priced("turbo"), 8),
        (_priced("turbo", quantity=4), 32),
        (_priced("turbo", width=1536, height=1024, steps=12), 16),
        (_priced("base"), 20),
        (_priced("base", steps=30), 30),
    ],
)
def test_seed_page_examples(input, buzz):
    """Every worked example on the seed page holds exactly."""
    assert price_buzz(input) == buzz


def test_rates_are_the_seed_pages():
    """turbo: base 8 at 9 reference steps; base: base 20 at 20."""
    assert (RATES["turbo"].base_buzz, RATES["turbo"].reference_steps) == (8, 9)
    assert (RATES["base"].base_buzz, RATES["base"].reference_steps) == (20, 20)
    assert set(RATES) == set(schema.models())


def test_fractions_round_up_and_tiny_jobs_cost_one():
    """10 turbo steps cost 80/9 = 8.9 -> 9; a 64² single step still costs 1."""
    assert exact_buzz(_priced("turbo", steps=10)) == Fraction(80, 9)
    assert price_buzz(_priced("turbo", steps=10)) == 9
    assert price_buzz(_priced("turbo", width=64, height=64, steps=1)) == 1


shapes = st.fixed_dictionaries(
    {
        "model": st.sampled_from(schema.models()),
        "width": st.integers(4, 128).map(lambda n: n * 16),
        "height": st.integers(4, 128).map(lambda n: n * 16),
        "steps": st.integers(1, 150),
        "quantity": st.integers(1, 12),
    }
)


@PROPERTIES
@given(shapes)
def test_price_is_the_ceiling_of_the_exact_fraction(shape):
    """price = max(1, ceil(base × w·h/1024² × steps/ref × quantity)), an int."""
    rate = RATES[shape["model"]]
    exact = (
        rate.base_buzz
        * Fraction(shape["width"] * shape["height"], 1024**2)
        * Fraction(shape["steps"], rate.reference_steps)
        * shape["quantity"]
    )
    price = price_buzz(_priced(**shape))
    assert type(price) is int
    assert price == max(1, math.ceil(exact)) >= 1


@PROPERTIES
@given(shapes, st.sampled_from(["width", "height", "steps", "quantity"]), st.integers(1, 64))
def test_price_never_falls_when_a_dimension_grows(shape, field, growth):
    """Monotone in area, steps and quantity: more work never costs less."""
    limit = {"width": 2048, "height": 2048, "steps": 150, "quantity": 12}[field]
    step = 16 if field in ("width", "height") else 1
    bigger = dict(shape) | {field: min(limit, shape[field] + growth * step)}
    assert price_buzz(_priced(**bigger)) >= price_buzz(_priced(**shape))


def test_workflow_cost_has_the_observed_shape():
    """base 0, factors {base, quantity}, zero tips, total = the price; valid WorkflowCost."""
    cost = workflow_cost([_priced("turbo", quantity=4)])
    assert cost == {
        "base": 0,
        "factors": {"base": 8, "quantity": 4},
        "tips": {"civitai": 0, "creators": 0},
        "total": 32,
    }
    assert_schema("WorkflowCost", cost)


def test_workflow_cost_sums_steps_each_rounded():
    """Several steps: each step is rounded up on its own, then summed."""
    steps = [_priced("turbo", steps=10), _priced("base", quantity=2)]
    cost = workflow_cost(steps)
    assert cost["total"] == 9 + 40
    assert cost["factors"]["quantity"] == 3
    assert cost["factors"]["base"] == pytest.approx(float((Fraction(80, 9) + 40) / 3))
    assert_schema("WorkflowCost", cost)
