"""SubmitWorkflow validation: what the emulator accepts, and the paths and messages of refusals."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.contract import _schema as schema
from runner.emulator.validation import (
    normalized_input,
    output_format,
    parse_timespan,
    validate_template,
)
from tests.openapi_check import assert_schema

PROPERTIES = settings(derandomize=True, max_examples=150, deadline=None)
INPUT = "steps[0].input"
TURBO = schema.input_schema_name("turbo")
LORA = "urn:air:zImage:lora:civitai:123456@789012"


def _int_range(prop: str) -> tuple[int, int]:
    bounds = schema.bounds(TURBO, prop)
    assert isinstance(bounds.minimum, int)
    assert isinstance(bounds.maximum, int)
    return bounds.minimum, bounds.maximum


def _floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def _input(**fields: object) -> dict[str, Any]:
    base = {"engine": "sdcpp", "ecosystem": "zImage", "model": "turbo"}
    return base | {"operation": "createImage", "prompt": "a fox"} | fields


def _body(input: object = None, **top: object) -> dict[str, Any]:
    step = {"$type": "imageGen", "input": _input() if input is None else input}
    return {"steps": [step]} | top


# ---- strategies: every value drawn inside the schema's own ranges -------------------------

airs = st.builds(
    "urn:air:zImage:lora:civitai:{}@{}".format,
    st.integers(1, 10**7),
    st.integers(1, 10**7),
)
SIZE_MIN_PX, SIZE_MAX_PX = _int_range("width")
sizes_px = st.integers(-(-SIZE_MIN_PX // 16), SIZE_MAX_PX // 16).map(lambda n: n * 16)
control_nets = st.fixed_dictionaries(
    {
        "preprocessor": st.sampled_from(schema.enum_values("ImageTransformer")),
        "weight": _floats(0, 2),
        "startStep": _floats(0, 1),
        "endStep": _floats(0, 1),
    },
    optional={"image": st.none() | st.just(LORA)},
)
OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "negativePrompt": st.none() | st.text(max_size=50),
    "width": sizes_px,
    "height": sizes_px,
    "cfgScale": _floats(*_int_range("cfgScale")) | st.integers(*_int_range("cfgScale")),
    "steps": st.integers(*_int_range("steps")),
    "quantity": st.integers(*_int_range("quantity")),
    "seed": st.none() | st.integers(-(2**63), 2**63 - 1),
    "sampleMethod": st.sampled_from(schema.enum_values("SdCppSampleMethod")),
    "schedule": st.sampled_from(schema.enum_values("SdCppSchedule")),
    "outputFormat": st.sampled_from(schema.enum_values("ImageGenOutputFormat")),
    "imageMetadata": st.none() | st.text(max_size=50),
    "loras": st.dictionaries(airs, _floats(-2, 2) | st.integers(0, 2), max_size=3),
    "diffuserModel": airs,
    "controlNets": st.lists(control_nets, max_size=2),
}
valid_inputs = st.fixed_dictionaries(
    {
        "engine": st.just("sdcpp"),
        "ecosystem": st.just("zImage"),
        "model": st.sampled_from(schema.models()),
        "operation": st.just("createImage"),
        "prompt": st.text(max_size=100),
    },
    optional=OPTIONAL_FIELDS,
)


@PROPERTIES
@given(valid_inputs)
def test_every_valid_zimage_input_is_accepted(input):
    """Any combination of optional fields within the schema's ranges passes validation."""
    assert validate_template(_body(input)) == {}


@PROPERTIES
@given(valid_inputs)
def test_accepted_input_and_its_echo_match_the_openapi_schema(input):
    """What validation accepts, jsonschema accepts too, and so it does the normalized echo."""
    assert_schema("WorkflowTemplate", _body(input, currencies=["blue"]))
    echoed = normalized_input(input)
    assert_schema("ImageGenInput", echoed)
    assert set(schema.defaults_for(input["model"])) <= set(echoed)


def _long_text(prop: str) -> st.SearchStrategy[str]:
    limit = _int_range(prop)[1]
    return st.integers(limit + 1, limit + 50).map(lambda n: "p" * n)


def _outside(prop: str) -> st.SearchStrategy[int]:
    low, high = _int_range(prop)
    return st.integers(low - 1000, low - 1) | st.integers(high + 1, high + 1000)


WRONG_TYPES = st.sampled_from([True, "9", [], {}, 9.5])
BAD_INPUT_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "prompt": _long_text("prompt") | st.sampled_from([None, 5, [], True]),
    "negativePrompt": _long_text("negativePrompt") | st.just(7),
    "width": _outside("width") | st.integers(4, 127).map(lambda n: n * 16 + 8),
    "height": _outside("height") | WRONG_TYPES | st.none(),
    "cfgScale": st.floats(30.001, 1e6) | st.floats(-1e6, -0.001) | st.sampled_from([True, "1"]),
    "steps": _outside("steps") | WRONG_TYPES | st.just(9.0),
    "quantity": _outside("quantity") | WRONG_TYPES,
    "seed": st.integers(2**63, 2**70) | st.integers(-(2**70), -(2**63) - 1) | WRONG_TYPES,
    "sampleMethod": st.text(max_size=10).filter(
        lambda text: text not in schema.enum_values("SdCppSampleMethod")
    )
    | st.none(),
    "schedule": st.sampled_from(["Simple", "", "karras2", None]),
    "outputFormat": st.sampled_from(["webp", "JPEG", "gif", None, 1]),
    "imageMetadata": st.sampled_from([1, True, {}, []]),
    "loras": st.sampled_from([[], "x", None, {LORA: "strong"}, {"not an air": 1.0}]),
    "engine": st.sampled_from(["comfy", "SDCPP", None, 1]),
    "ecosystem": st.sampled_from(["z-image", "zimage", "Z-Image", None]),
    "model": st.sampled_from(["large", "Turbo", None, 0]),
    "operation": st.sampled_from(["editImage", "createVariant", None]),
}
KNOWN_INPUT_FIELDS = set(schema.input_properties("turbo"))
unknown_names = st.text("abcdefghijklmnopqrstuvwxyzA", min_size=1, max_size=12).filter(
    lambda name: name not in KNOWN_INPUT_FIELDS
)


@PROPERTIES
@given(st.data(), valid_inputs)
def test_a_bad_input_field_is_reported_under_its_own_path(data, input):
    """An out-of-range value or wrong type in one field gives errors under that path only."""
    field = data.draw(st.sampled_from(sorted(BAD_INPUT_FIELDS)), label="field")
    bad = dict(input) | {field: data.draw(BAD_INPUT_FIELDS[field], label="value")}
    errors = validate_template(_body(bad))
    assert errors, bad
    assert {re.sub(r"\['.*'\]$", "", key) for key in errors} == {f"{INPUT}.{field}"}


@PROPERTIES
@given(unknown_names, valid_inputs, st.integers() | st.text() | st.none())
def test_an_unknown_input_property_is_rejected_by_name(name, input, value):
    """A property the Z-Image schema lacks is rejected under its own path, naming it."""
    errors = validate_template(_body(dict(input) | {name: value}))
    assert list(errors) == [f"{INPUT}.{name}"]
    assert errors[f"{INPUT}.{name}"][0].startswith(f"Unknown property '{name}'; allowed: cfgScale")


BAD_TOP_FIELDS: dict[str, tuple[str, st.SearchStrategy[object]]] = {
    "externalId": (
        "externalId",
        st.sampled_from(["", "a b", "run/7", "ü", 7]) | st.just("k" * 129),
    ),
    "tags": ("tags", st.sampled_from([["a", "a"], [str(n) for n in range(11)], "t", [1]])),
    "metadata": ("metadata", st.sampled_from([[], "m", 1])),
    "arguments": ("arguments", st.sampled_from([[], "a", True])),
    "currencies": ("currencies", st.sampled_from([["red"], "blue", None, [1]])),
    "tips": ("tips", st.sampled_from([{"civitai": 3, "creators": 0}, {"civitai": 0}, 1])),
    "nsfwLevel": ("nsfwLevel", st.sampled_from(["PG", "nsfw", None])),
    "upgradeMode": ("upgradeMode", st.sampled_from(["auto", None, 1])),
    "allowMatureContent": ("allowMatureContent", st.sampled_from(["yes", 1])),
    "callbacks": ("callbacks", st.sampled_from([{}, [{"url": "https://x"}], "x"])),
}


@PROPERTIES
@given(st.data())
def test_a_bad_template_field_is_reported_under_its_own_path(data):
    """A wrong top-level value is reported under that field (or inside it), nothing else."""
    field = data.draw(st.sampled_from(sorted(BAD_TOP_FIELDS)), label="field")
    path, values = BAD_TOP_FIELDS[field]
    errors = validate_template(_body(**{field: data.draw(values, label="value")}))
    assert errors
    assert all(key == path or key.startswith((path + ".", path + "[")) for key in errors), errors


BAD_STEP_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "priority": st.sampled_from(["urgent", None, 1]),
    "timeout": st.sampled_from(["20m", "PT20M", "00:60:00", "1:2:3", "24:00:00", 5, "-00:20:00"]),
    "retries": st.sampled_from([1.5, "2", 2**31]),
    "name": st.sampled_from([1, [], True]),
    "metadata": st.sampled_from([[], "m"]),
    "guidance": st.integers(),
}


@PROPERTIES
@given(st.data())
def test_a_bad_step_field_is_reported_under_its_own_path(data):
    """A wrong step-level value (or an unknown one) is reported under steps[0].<field>."""
    field = data.draw(st.sampled_from(sorted(BAD_STEP_FIELDS)), label="field")
    body = _body()
    body["steps"][0][field] = data.draw(BAD_STEP_FIELDS[field], label="value")
    assert list(validate_template(body)) == [f"steps[0].{field}"]


@PROPERTIES
@given(st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=20))
def test_a_tag_longer_than_200_is_reported_by_index(prefix):
    """Tag length is the schema description's 200 (UTF-16 units), reported at tags[i]."""
    tags = ["ok", prefix + "x" * (201 - len(prefix))]
    errors = validate_template(_body(tags=tags))
    message = "The field tags[1] must be at most 200 characters long (got 201)."
    assert errors == {"tags[1]": [message]}


def test_lengths_count_utf16_units_as_dotnet_does():
    """An astral character counts twice, so 100 of them fill a 200-unit tag."""
    assert validate_template(_body(tags=["\U0001f98a" * 100])) == {}
    assert list(validate_template(_body(tags=["\U0001f98a" * 100 + "x"]))) == ["tags[0]"]


ALLOWED_INPUT = ", ".join(sorted(KNOWN_INPUT_FIELDS))


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            _body(_input(engine="comfy")),
            {f"{INPUT}.engine": ["engine must be sdcpp (got 'comfy')."]},
        ),
        (
            _body(_input(ecosystem="z-image")),
            {f"{INPUT}.ecosystem": ["ecosystem must be zImage (got 'z-image')."]},
        ),
        (
            _body(_input(operation="editImage")),
            {f"{INPUT}.operation": ["operation must be createImage (got 'editImage')."]},
        ),
        (
            _body(_input(model="large")),
            {f"{INPUT}.model": ["model must be base or turbo (got 'large')."]},
        ),
        (
            _body({k: v for k, v in _input().items() if k != "engine"}),
            {f"{INPUT}.engine": ["The engine field is required; engine must be sdcpp."]},
        ),
        (
            _body({k: v for k, v in _input().items() if k != "prompt"}),
            {f"{INPUT}.prompt": ["The prompt field is required."]},
        ),
        (
            _body(_input(guidanceScale=3.5)),
            {
                f"{INPUT}.guidanceScale": [
                    f"Unknown property 'guidanceScale'; allowed: {ALLOWED_INPUT}."
                ]
            },
        ),
        (
            _body(_input(width=4096)),
            {f"{INPUT}.width": ["The field width must be between 64 and 2048."]},
        ),
        (
            _body(_input(width=1000)),
            {f"{INPUT}.width": ["width must be divisible by 16 (got 1000)."]},
        ),
        (
            _body(_input(steps=9.5)),
            {f"{INPUT}.steps": ["The field steps must be an integer (got 9.5)."]},
        ),
        (
            _body(_input(cfgScale=True)),
            {f"{INPUT}.cfgScale": ["The field cfgScale must be a number (got true)."]},
        ),
        (
            _body(_input(loras={"lora-1": 0.8})),
            {f"{INPUT}.loras['lora-1']": [f"LoRA key 'lora-1' is not an AIR URN (e.g. {LORA})."]},
        ),
        (
            _body(_input(sampleMethod="Euler")),
            {
                f"{INPUT}.sampleMethod": [
                    "'Euler' is not a valid value for sampleMethod; allowed: "
                    + ", ".join(schema.enum_values("SdCppSampleMethod"))
                    + "."
                ]
            },
        ),
        (
            _body(externalId="run 7"),
            {
                "externalId": [
                    "The field externalId must match the regular expression '^[A-Za-z0-9_-]+$'."
                ]
            },
        ),
        (
            _body(externalId="k" * 129),
            {"externalId": ["The field externalId must be at most 128 characters long (got 129)."]},
        ),
        (
            _body(tags=[f"t{n}" for n in range(11)]),
            {"tags": ["The field tags must contain at most 10 items (got 11)."]},
        ),
        (
            _body(tags=["a", "b", "a"]),
            {"tags": ["The field tags must not repeat a value; 'a' repeats."]},
        ),
        (
            {"steps": [{"$type": "comfy", "input": {}}]},
            {
                "steps[0].$type": [
                    "Step type 'comfy' is not supported by this emulator;"
                    " it serves only imageGen steps."
                ]
            },
        ),
        (
            {"steps": [{"input": _input()}]},
            {
                "steps[0].$type": [
                    "The $type field is required; this emulator serves only imageGen steps."
                ]
            },
        ),
        (
            {"steps": [{"$type": "imageGen"}]},
            {"steps[0].input": ["The input field is required."]},
        ),
        ({"steps": []}, {"steps": ["The field steps must contain at least 1 item."]}),
        ({}, {"steps": ["The steps field is required."]}),
        (
            [1],
            {"$": ["The request body must be a JSON object (a WorkflowTemplate), not [1]."]},
        ),
        (
            _body(nsfwLevel=None),
            {
                "nsfwLevel": [
                    "The field nsfwLevel must be one of pg, pg13, r, x, xxx, na (got null)."
                ]
            },
        ),
    ],
)
def test_rejections_carry_the_exact_message(body, errors):
    """Each classic mistake gets exactly one path and the message the docs promise."""
    assert validate_template(body) == errors


def test_all_errors_are_collected_not_just_the_first():
    """Several mistakes across the body are all reported in one answer."""
    body = _body(_input(width=1000, steps=0, guidanceScale=1), externalId="", tags=["a", "a"])
    body["steps"].append({"$type": "comfy"})
    assert set(validate_template(body)) == {
        f"{INPUT}.width",
        f"{INPUT}.steps",
        f"{INPUT}.guidanceScale",
        "externalId",
        "tags",
        "steps[1].$type",
    }


def test_a_wrong_model_still_checks_the_other_fields():
    """turbo and base share their fields, so a bad model does not hide a bad width."""
    errors = validate_template(_body(_input(model="large", width=1000)))
    assert set(errors) == {f"{INPUT}.model", f"{INPUT}.width"}


def test_a_wrong_engine_stops_the_input_checks():
    """Another engine's fields are unknowable here, so only the engine is reported."""
    assert list(validate_template(_body(_input(engine="flux2", guidanceScale=3)))) == [
        f"{INPUT}.engine"
    ]


def test_currencies_may_be_omitted_though_the_schema_requires_it():
    """The docs' examples omit currencies; its absence means the default order."""
    assert validate_template(_body()) == {}
    assert validate_template(_body(currencies=[])) == {}


def test_a_full_template_is_accepted():
    """Every documented top-level field, well-formed, is accepted."""
    body = _body(
        tags=["zbatch:demo"],
        externalId="demo-c0001_a",
        metadata={"batch": "demo"},
        arguments=None,
        currencies=["blue", "green"],
        tips={"civitai": 0, "creators": 0.5},
        nsfwLevel="pg",
        upgradeMode="manual",
        allowMatureContent=False,
        experimental=None,
        callbacks=[{"url": "https://example.invalid/hook", "type": ["workflow:*"]}],
    )
    body["steps"][0] |= {"name": "$0", "priority": "low", "timeout": "1.00:20:00", "retries": 2}
    assert validate_template(body) == {}
    assert_schema("WorkflowTemplate", body)


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("00:20:00", dt.timedelta(minutes=20)),
        ("1.02:03:04", dt.timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("00:00:01.5", dt.timedelta(seconds=1.5)),
        ("20:00", None),
        ("00:20:60", None),
        ("PT20M", None),
    ],
)
def test_parse_timespan(text, span):
    """Step timeouts are .NET TimeSpans: [d.]hh:mm:ss[.fffffff]."""
    assert parse_timespan(text) == span


@pytest.mark.parametrize(
    ("model", "cfg_scale", "steps"),
    [("turbo", 1, 9), ("base", 4, 20)],
)
def test_normalized_input_fills_the_models_defaults(model, cfg_scale, steps):
    """The echo carries every default the service assumes, and drops null optionals."""
    echoed = normalized_input(_input(model=model, negativePrompt=None, seed=None))
    assert echoed == _input(model=model) | {
        "width": 1024,
        "height": 1024,
        "cfgScale": cfg_scale,
        "steps": steps,
        "sampleMethod": "euler",
        "schedule": "simple",
        "quantity": 1,
        "loras": {},
    }
    assert list(echoed)[:5] == ["engine", "ecosystem", "model", "operation", "prompt"]


def test_normalized_input_keeps_what_was_sent_and_does_not_alias_it():
    """Sent values win over defaults, and the echo is a copy."""
    sent = _input(width=512, steps=12, loras={LORA: 0.8}, outputFormat="png", seed=7)
    echoed = normalized_input(sent)
    assert (echoed["width"], echoed["steps"], echoed["seed"]) == (512, 12, 7)
    assert echoed["outputFormat"] == "png" == output_format(echoed)
    echoed["loras"][LORA] = 2.0
    assert sent["loras"][LORA] == 0.8


def test_output_format_defaults_to_jpeg():
    """With no outputFormat sent, images are JPEG (real blob ids end in .jpeg)."""
    assert "outputFormat" not in normalized_input(_input())
    assert output_format(normalized_input(_input())) == "jpeg"
