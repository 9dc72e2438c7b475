"""The packaged OpenAPI subset, its flattening, and the ``assert_schema`` test helper."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runner.contract import _schema as schema
from runner.emulator.validation import normalized_input
from tests.openapi_check import assert_schema, schema_errors

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SOURCE = REPO_ROOT.parent / "shared" / "civitai-orchestration-openapi.json"


def _trim_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "trim_openapi", REPO_ROOT / "scripts" / "trim_openapi.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed_text() -> str:
    return resources.files("runner.contract").joinpath("openapi-subset.json").read_text("utf-8")


def test_committed_subset_is_what_the_trim_script_produces():
    """openapi-subset.json is regenerated, not hand-edited: trimming ../shared reproduces it."""
    if not SHARED_SOURCE.exists():
        pytest.skip(f"{SHARED_SOURCE} is absent (CI has it); cannot re-trim")
    committed = _committed_text()
    trimmed_on = dt.date.fromisoformat(json.loads(committed)["info"]["trimmedOn"])
    assert _trim_script().trim_file(SHARED_SOURCE, trimmed_on=trimmed_on) == committed


def test_subset_names_its_source():
    """The subset's info says which document, version and date it was trimmed from."""
    info = schema.document()["info"]
    assert info["source"] == "civitai-orchestration-openapi.json"
    assert info["sourceVersion"] == "v2"
    dt.date.fromisoformat(info["trimmedOn"])
    assert re.fullmatch(r"[0-9a-f]{64}", info["sourceSha256"])


def test_subset_holds_every_root_and_nothing_dangling():
    """Every schema the trim script roots is present, and every $ref resolves inside."""
    roots = _trim_script().ROOTS
    assert set(roots) <= set(schema.names())
    text = _committed_text()
    for ref in re.findall(r'"#/components/schemas/([^"]+)"', text):
        assert ref in schema.names()


@pytest.mark.parametrize(
    ("base", "kept"),
    [
        ("WorkflowStep", ("imageGen",)),
        ("WorkflowStepTemplate", ("imageGen",)),
        ("ImageGenInput", ("sdcpp",)),
        ("SdCppImageGenInput", ("zImage",)),
        ("ZImageImageGenInput", ("base", "turbo")),
        ("ZImageTurboImageGenInput", ("createImage",)),
        ("ZImageBaseImageGenInput", ("createImage",)),
        ("Blob", ("image",)),
    ],
)
def test_discriminator_mappings_are_pruned_to_what_zbatch_uses(base, kept):
    """Each discriminator maps only the members zbatch sends or receives."""
    assert schema.discriminator_values(base) == kept


@pytest.mark.parametrize("name", schema.names())
def test_flattened_schema_is_self_contained(name):
    """No $ref, allOf-inheritance or discriminator survives, and every pattern compiles."""
    for node in schema.walk(schema.flatten(name)):
        assert "$ref" not in node
        assert "discriminator" not in node
        for part in node.get("allOf", []):
            assert set(part) == {"if", "then"}
        if isinstance(node.get("pattern"), str):
            re.compile(node["pattern"])


@pytest.mark.parametrize("model", schema.models())
def test_concrete_input_pins_every_discriminator(model):
    """A one-member dispatch collapses to the member, so the member must pin the value."""
    props = schema.input_properties(model)
    assert props["engine"]["enum"] == ["sdcpp"]
    assert props["ecosystem"]["enum"] == ["zImage"]
    assert props["model"]["enum"] == [model]
    assert props["operation"]["enum"] == ["createImage"]
    assert schema.properties("ImageGenStepTemplate")["$type"]["enum"] == ["imageGen"]
    assert schema.flatten("Blob")["properties"]["type"]["enum"] == ["image"]


def test_turbo_and_base_accept_the_same_fields():
    """Validation checks a wrong model's fields as turbo's; that relies on equal field sets."""
    assert set(schema.input_properties("turbo")) == set(schema.input_properties("base"))


def test_merged_object_is_closed_once_with_the_union_of_levels():
    """allOf merging keeps every level's properties and required names, closed once."""
    merged = schema.merged("ZImageTurboCreateImageGenInput")
    assert merged["additionalProperties"] is False
    assert {"engine", "outputFormat", "imageMetadata", "diffuserModel", "prompt", "width"} <= set(
        merged["properties"]
    )
    assert schema.required("ZImageTurboCreateImageGenInput") == (
        "engine",
        "ecosystem",
        "model",
        "operation",
        "prompt",
    )


def test_defaults_per_model_come_from_schema_and_seed_page():
    """turbo 1/9 and base 4/20, 1024², quantity 1, euler/simple and no LoRAs."""
    common = {"width": 1024, "height": 1024, "quantity": 1, "sampleMethod": "euler"}
    common |= {"schedule": "simple", "loras": {}}
    assert schema.defaults_for("turbo") == common | {"cfgScale": 1, "steps": 9}
    assert schema.defaults_for("base") == common | {"cfgScale": 4, "steps": 20}


def test_enum_values_and_bounds():
    """Enums and ranges are read from the schema, in schema order."""
    assert schema.enum_values("ImageGenOutputFormat") == ("jpeg", "png", "webP")
    assert schema.enum_values("SdCppSampleMethod")[0] == "euler"
    assert "simple" in schema.enum_values("SdCppSchedule")
    name = schema.input_schema_name("turbo")
    assert schema.bounds(name, "width") == schema.Bounds(64, 2048)
    assert schema.bounds(name, "cfgScale") == schema.Bounds(0, 30)
    assert schema.bounds(name, "steps") == schema.Bounds(1, 150)
    assert schema.bounds(name, "quantity") == schema.Bounds(1, 12)
    assert schema.bounds(name, "prompt") == schema.Bounds(0, 10000)


@pytest.mark.parametrize(
    ("text", "is_air"),
    [
        ("urn:air:zImage:lora:civitai:123456@789012", True),
        ("urn:air:zImage:lora:civitai:123456@789012.safetensors", True),
        ("civitai:123456", True),
        ("not an air", False),
        ("urn:air:zImage:lora:civitai:", False),
    ],
)
def test_air_pattern_is_the_servers(text, is_air):
    """LoRA keys are checked with the server's AIR pattern, made Python-compatible."""
    assert (schema.air_pattern().match(text) is not None) == is_air


def test_unknown_component_names_the_known_ones():
    """Asking for a schema outside the subset says what the subset has."""
    with pytest.raises(schema.SchemaError, match="the subset has: Blob"):
        schema.flatten("VideoGenInput")


def realistic_workflow() -> dict[str, Any]:
    """A succeeded one-step Z-Image workflow as the service returns it."""
    request: dict[str, object] = {"engine": "sdcpp", "ecosystem": "zImage", "model": "turbo"}
    request |= {"operation": "createImage", "prompt": "a fox", "quantity": 2}
    echoed = normalized_input(request) | {"seed": 42}
    images = [
        {
            "type": "image",
            "id": f"E8S6FBPH50ENNVF2PD5XRBPX{index}0.jpeg",
            "available": True,
            "url": f"https://emulator.invalid/v2/consumer/blobs/B{index}.jpeg?sig=abc",
            "urlExpiresAt": "2026-12-01T00:00:00Z",
            "jobId": f"job-{index}",
            "nsfwLevel": "pg",
            "width": 1024,
            "height": 1024,
        }
        for index in range(2)
    ]
    jobs = [
        {
            "id": f"job-{index}",
            "status": "succeeded",
            "cost": 1.0,
            "startedAt": "2026-11-25T10:00:01Z",
            "completedAt": "2026-11-25T10:00:05Z",
            "estimatedProgressRate": None,
            "queuePosition": {"support": "available", "precedingJobs": 0},
        }
        for index in range(2)
    ]
    step = {
        "$type": "imageGen",
        "name": "$0",
        "priority": "normal",
        "timeout": "00:20:00",
        "status": "succeeded",
        "metadata": {},
        "jobs": jobs,
        "input": echoed,
        "output": {"images": images, "errors": None},
        "startedAt": "2026-11-25T10:00:01Z",
        "completedAt": "2026-11-25T10:00:05Z",
    }
    return {
        "id": "100-20261125100000000",
        "createdAt": "2026-11-25T10:00:00Z",
        "status": "succeeded",
        "startedAt": "2026-11-25T10:00:01Z",
        "completedAt": "2026-11-25T10:00:05Z",
        "metadata": {},
        "tags": ["zbatch:demo"],
        "arguments": {},
        "steps": [step],
        "callbacks": [],
        "tips": {"civitai": 0, "creators": 0},
        "cost": {
            "base": 0,
            "factors": {"base": 8, "quantity": 2},
            "tips": {"civitai": 0, "creators": 0},
            "total": 16,
        },
        "transactions": {
            "list": [{"type": "debit", "amount": 16, "id": "tx-1", "accountType": "blue"}]
        },
        "upgradeMode": "manual",
        "currencies": ["blue", "green", "yellow"],
        "forceRefunded": False,
        "externalId": "demo-c000001",
    }


def test_realistic_workflow_passes():
    """A faithful Workflow body (input echo, images, jobs, cost, transactions) is valid."""
    assert_schema("Workflow", realistic_workflow())
    page = {"next": "", "items": [realistic_workflow(), realistic_workflow()]}
    assert_schema("CursedArrayOfTelemetryCursorAndWorkflow", page)


def _without(path: list[Any]) -> Any:
    def mutate(body: dict[str, Any]) -> None:
        node = body
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def _setting(path: list[Any], value: object) -> Any:
    def mutate(body: dict[str, Any]) -> None:
        node = body
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_without(["status"]), "$: 'status' is a required property"),
        (_without(["steps", 0, "jobs", 0, "cost"]), "steps[0].jobs[0]: 'cost'"),
        (_setting(["steps", 0, "output", "images", 0, "blobId"], "x"), "images[0]: Additional"),
        (_setting(["cost", "surcharge"], 1), "cost: Additional properties"),
        (_setting(["status"], "pending"), "status: 'pending' is not one of"),
        (_setting(["steps", 0, "input", "model"], "xl"), "steps[0].input.model: 'xl'"),
        (_setting(["steps", 0, "input", "guidanceScale"], 3), "'guidanceScale' was unexpected"),
        (_setting(["steps", 0, "output", "images", 0, "type"], "video"), "type: 'video'"),
        (_setting(["transactions", "list", 0, "amount"], -1), "amount: -1 is less than"),
        (_setting(["steps", 0, "$type"], "comfy"), "steps[0].$type: 'comfy' is not one of"),
    ],
)
def test_broken_workflow_fails_with_its_path(mutate, where):
    """A missing field, an unknown nested property or a wrong enum fails, naming where."""
    body = copy.deepcopy(realistic_workflow())
    mutate(body)
    with pytest.raises(AssertionError, match="not a valid Workflow") as failure:
        assert_schema("Workflow", body)
    assert where in str(failure.value)


def test_problem_bodies_and_blobs_pass():
    """The error bodies and a refreshed blob have the shapes other tests check."""
    problem = {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.1", "status": 400}
    assert_schema("ProblemDetails", problem | {"title": "Bad Request", "traceId": "t"})
    errors = {"steps[0].input.width": ["The field width must be between 64 and 2048."]}
    assert_schema("ValidationProblemDetails", problem | {"errors": errors})
    assert schema_errors("ValidationProblemDetails", problem) == [
        "$: 'errors' is a required property"
    ]
    assert_schema("Blob", realistic_workflow()["steps"][0]["output"]["images"][0])
    assert schema_errors("Blob", {"type": "image", "id": "b"}) == [
        "$: 'available' is a required property"
    ]
