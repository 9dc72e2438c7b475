"""The Z-Image contract: defaults, checks, request body, price, runtime and advice."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.contract import _schema as schema
from runner.contract import _zimage as zimage
from runner.emulator import pricing
from runner.emulator.validation import normalized_input, validate_template

PROPERTIES = settings(derandomize=True, max_examples=200, deadline=None)


def _request(model: str = "turbo", **fields: object) -> dict[str, object]:
    return {**zimage.MODEL_DEFAULTS[model], "model": model, "prompt": "p", "seed": 1} | fields


def test_model_defaults_are_the_seed_pages_and_the_schemas():
    """turbo cfgScale 1/steps 9, base 4/20; the rest shared; the schema agrees."""
    assert zimage.MODELS == ("turbo", "base")
    assert set(zimage.MODELS) == set(schema.models())
    for model, (cfg, steps) in {"turbo": (1, 9), "base": (4, 20)}.items():
        defaults = dict(zimage.MODEL_DEFAULTS[model])
        assert defaults == {
            "width": 1024,
            "height": 1024,
            "cfgScale": cfg,
            "steps": steps,
            "sampleMethod": "euler",
            "schedule": "simple",
            "quantity": 1,
            "loras": {},
            "outputFormat": "jpeg",
        }
        assert schema.defaults_for(model).items() <= defaults.items()


def test_fields_are_createimage_input_properties():
    """Every field a manifest may set is an input property of both models' schemas."""
    for model in zimage.MODELS:
        assert set(zimage.FIELDS) <= set(schema.input_properties(model))
    assert zimage.FIELDS[0] == "model"


def test_ranges_are_the_same_for_both_models():
    """check_field reads turbo's schema; base's declares the same bounds and enums."""
    turbo, base = schema.input_properties("turbo"), schema.input_properties("base")
    for name in ("width", "height", "cfgScale", "steps", "quantity", "prompt"):
        assert schema.bounds(schema.input_schema_name("turbo"), name) == schema.bounds(
            schema.input_schema_name("base"), name
        )
    for name in ("sampleMethod", "schedule", "outputFormat"):
        assert turbo[name]["enum"] == base[name]["enum"]
    assert zimage.enum("sampleMethod") == schema.enum_values("SdCppSampleMethod")
    assert zimage.enum("schedule") == schema.enum_values("SdCppSchedule")


@pytest.mark.parametrize(
    ("shape", "buzz"),
    [
        ({"model": "turbo", "width": 1024, "height": 1024, "steps": 9, "quantity": 1}, 8),
        ({"model": "turbo", "width": 1024, "height": 1024, "steps": 9, "quantity": 4}, 32),
        ({"model": "turbo", "width": 1536, "height": 1024, "steps": 12, "quantity": 1}, 16),
        ({"model": "base", "width": 1024, "height": 1024, "steps": 20, "quantity": 1}, 20),
        ({"model": "base", "width": 1024, "height": 1024, "steps": 30, "quantity": 1}, 30),
    ],
)
def test_price_holds_the_seed_pages_worked_examples(shape, buzz):
    """turbo defaults 8, ×4 32, 1536×1024@12 16; base defaults 20, 30 steps 30."""
    assert zimage.price_buzz(**shape) == buzz


def test_price_rounds_up_and_is_at_least_one():
    """10 turbo steps: 80/9 -> 9; a 64² one-step image still costs 1."""
    shape = {"width": 1024, "height": 1024, "quantity": 1}
    assert zimage.exact_buzz(model="turbo", steps=10, **shape) == Fraction(80, 9)
    assert zimage.price_buzz(model="turbo", steps=10, **shape) == 9
    assert zimage.price_buzz(model="turbo", width=64, height=64, steps=1, quantity=1) == 1


shapes = st.fixed_dictionaries(
    {
        "model": st.sampled_from(zimage.MODELS),
        "width": st.integers(4, 128).map(lambda n: n * 16),
        "height": st.integers(4, 128).map(lambda n: n * 16),
        "steps": st.integers(1, 150),
        "quantity": st.integers(1, 12),
    }
)


@PROPERTIES
@given(shapes)
def test_price_equals_the_emulators_charge(shape):
    """The runner's estimate is exactly what the emulator charges for the same input."""
    body = {"engine": "sdcpp", "ecosystem": "zImage", "operation": "createImage", "prompt": "p"}
    charged = pricing.price_buzz(normalized_input(body | shape))
    rate = zimage.RATES[shape["model"]]
    exact = (
        rate.base_buzz
        * Fraction(shape["width"] * shape["height"], 1024**2)
        * Fraction(shape["steps"], rate.reference_steps)
        * shape["quantity"]
    )
    assert zimage.price_buzz(**shape) == charged == max(1, math.ceil(exact))


@PROPERTIES
@given(shapes, st.sampled_from(["width", "height", "steps", "quantity"]), st.integers(1, 64))
def test_price_and_runtime_never_fall_when_a_dimension_grows(shape, field, growth):
    """More pixels, steps or images never cost less or take less time."""
    limit = {"width": 2048, "height": 2048, "steps": 150, "quantity": 12}[field]
    unit = 16 if field in ("width", "height") else 1
    bigger = dict(shape) | {field: min(limit, shape[field] + growth * unit)}
    assert zimage.price_buzz(**bigger) >= zimage.price_buzz(**shape)
    assert zimage.runtime_s(**bigger) >= zimage.runtime_s(**shape)


def test_runtime_is_the_seed_table_scaled_by_work():
    """turbo 3-8 s, base 8-20 s per default image; ×pixels, ×steps/default, ×quantity."""
    square = {"width": 1024, "height": 1024, "quantity": 1}
    assert zimage.runtime_s(model="turbo", steps=9, **square) == (3.0, 8.0)
    assert zimage.runtime_s(model="base", steps=20, **square) == (8.0, 20.0)
    assert zimage.runtime_s(model="base", width=2048, height=1024, steps=40, quantity=3) == (
        96.0,
        240.0,
    )


def test_step_input_is_a_body_the_service_accepts():
    """Discriminators first, then the fields in order; null fields dropped; loras a dict."""
    air = "urn:air:zImage:lora:civitai:123456@789012"
    request = _request("base", negativePrompt=None, loras=((air, 0.8),))
    body = zimage.step_input(request)
    assert list(body)[:4] == ["engine", "ecosystem", "model", "operation"]
    assert body["loras"] == {air: 0.8}
    assert "negativePrompt" not in body
    assert validate_template({"steps": [{"$type": "imageGen", "input": body}]}) == {}


@pytest.mark.parametrize(
    ("request_fields", "texts"),
    [
        ({"model": "turbo"}, []),
        ({"model": "base"}, []),
        (
            {"model": "turbo", "cfgScale": 4.0, "steps": 20},
            [
                "turbo works best at cfgScale 1 (got 4); for more fidelity switch to base instead",
                "turbo works best at steps 8..12 (got 20);"
                " for more fidelity switch to base instead",
            ],
        ),
        (
            {"model": "turbo", "negativePrompt": "blurry"},
            [
                "turbo effectively ignores a negativePrompt at cfgScale 1;"
                " use model base if the negative prompt matters"
            ],
        ),
        ({"model": "turbo", "negativePrompt": ""}, []),
        ({"model": "base", "negativePrompt": "blurry", "cfgScale": 5, "steps": 30}, []),
        (
            {"model": "base", "cfgScale": 2.5, "steps": 40},
            [
                "base works best at cfgScale 3..5 (got 2.5)",
                "base works best at steps 20..30 (got 40)",
            ],
        ),
        (
            {"model": "turbo", "quantity": 5},
            [
                "quantity 5 at 1024x1024 often exceeds the 100-second request timeout;"
                " at most 4 is advised at 1024x1024 or larger"
            ],
        ),
        ({"model": "turbo", "quantity": 12, "width": 512, "height": 512}, []),
        ({"model": "turbo", "quantity": 4, "width": 2048, "height": 2048}, []),
    ],
)
def test_advice_follows_the_seed_page(request_fields, texts):
    """Advice is a list of warning texts; defaults never draw any."""
    assert zimage.advice(request_fields) == texts


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("steps", 9, None),
        ("steps", 0, "0 is out of range (allowed 1..150)"),
        ("steps", 151, "151 is out of range (allowed 1..150)"),
        ("steps", 9.0, "9 is not an integer (allowed 1..150)"),
        ("steps", True, "true is not an integer (allowed 1..150)"),
        ("steps", "nine", "'nine' is not an integer (allowed 1..150)"),
        ("quantity", 13, "13 is out of range (allowed 1..12)"),
        ("width", 1000, "1000 is not divisible by 16 (allowed 64..2048, divisible by 16)"),
        ("height", 4096, "4096 is out of range (allowed 64..2048, divisible by 16)"),
        ("cfgScale", 0, None),
        ("cfgScale", 4.5, None),
        ("cfgScale", 31, "31 is out of range (allowed 0..30)"),
        ("cfgScale", math.nan, "nan is not a number (allowed 0..30)"),
        ("cfgScale", "high", "'high' is not a number (allowed 0..30)"),
        ("seed", 2**63 - 1, None),
        ("seed", -(2**63), None),
        (
            "seed",
            2**63,
            "9223372036854775808 is out of range"
            " (allowed -9223372036854775808..9223372036854775807)",
        ),
        ("prompt", "", None),
        ("prompt", "x" * 10000, None),
        (
            "prompt",
            "x" * 10001,
            "'" + "x" * 56 + "... is 10001 characters long"
            " (allowed: text of at most 10000 characters)",
        ),
        ("prompt", None, "null is not text (allowed: text of at most 10000 characters)"),
        ("negativePrompt", None, None),
        (
            "negativePrompt",
            3,
            "3 is not text (allowed: text of at most 10000 characters, or null)",
        ),
        ("model", "base", None),
        (
            "model",
            "turob",
            "'turob' is not a known model; did you mean 'turbo'? (allowed: turbo, base)",
        ),
        (
            "model",
            "Base",
            "'Base' is not a known model; did you mean 'base'? (allowed: turbo, base)",
        ),
        (
            "sampleMethod",
            "eular",
            "'eular' is not a known sampleMethod; did you mean 'euler'? (allowed: euler, heun,"
            " dpm2, dpm++2s_a, dpm++2m, dpm++2mv2, ipndm, ipndm_v, ddim_trailing, euler_a, lcm,"
            " res_multistep, res_2s, tcd, er_sde)",
        ),
        ("schedule", "karras", None),
        (
            "outputFormat",
            "webp",
            "'webp' is not a known outputFormat; did you mean 'webP'? (allowed: jpeg, png, webP)",
        ),
        ("loras", {}, None),
        ("loras", {"urn:air:zImage:lora:civitai:1@2": 0.8}, None),
        ("loras", (("civitai:1@2", 1),), None),
        (
            "loras",
            {"my lora": 0.8},
            "'my lora' is not an AIR URN (e.g. urn:air:zImage:lora:civitai:123456@789012)",
        ),
        (
            "loras",
            {"civitai:1@2": "strong"},
            "'strong' is not a number (allowed: a LoRA strength, typically 0..2)",
        ),
        (
            "loras",
            "civitai:1@2",
            "'civitai:1@2' is not a mapping of AIR URN to strength"
            " (e.g. urn:air:zImage:lora:civitai:123456@789012: 0.8)",
        ),
        ("size", "1536x1024", None),
        ("size", "1536 by 1024", "'1536 by 1024' is not a size (allowed WxH, e.g. 1536x1024)"),
        (
            "size",
            "1000x1024",
            "width 1000 is not divisible by 16 (allowed 64..2048, divisible by 16)",
        ),
        (
            "stpes",
            9,
            "'stpes' is not an input field; did you mean 'steps'? (allowed: model, prompt,"
            " negativePrompt, width, height, cfgScale, steps, sampleMethod, schedule, seed,"
            " quantity, loras, outputFormat, size)",
        ),
    ],
)
def test_check_field_names_the_value_and_what_is_allowed(name, value, problem):
    """Each check returns None or one sentence: the value, what is wrong, what is allowed."""
    assert zimage.check_field(name, value) == problem


@PROPERTIES
@given(
    st.sampled_from(["width", "height", "steps", "quantity", "cfgScale"]),
    st.one_of(st.integers(-10, 2100), st.floats(-1, 40, allow_nan=False)),
)
def test_check_field_agrees_with_the_emulators_validation(name, value):
    """A value check_field accepts is one the service accepts, and the other way round."""
    body = _request("turbo") | {name: value}
    template = {"steps": [{"$type": "imageGen", "input": zimage.step_input(body)}]}
    service_ok = not validate_template(template)
    assert (zimage.check_field(name, value) is None) == service_ok


def test_shown_cuts_long_values_and_writes_numbers_plainly():
    """Strings are quoted, 4.0 reads 4, long values end in '...'."""
    assert zimage.shown("fox") == "'fox'"
    assert zimage.shown(4.0) == "4"
    assert zimage.shown(None) == "null"
    assert len(zimage.shown("y" * 500)) == zimage.SHOWN_CHARS
