"""Issue 16: the emulator at the API's edges. What the service refuses, it refuses, before
anything is stored or charged; nothing a request sends can make a later read fail.

Items: 1 lone surrogates; 2 JSON depth; 3 PUT typed by the document; 4 the lenient cases
(decided in docs/emulator.md, "Edges"); 5 ``startedAt`` at time_scale 0 and
``imageMetadata``; 6 the error bodies' media type.
"""

from __future__ import annotations

import io
import json
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from runner.emulator.images import stored_metadata
from tests.emulator.conftest import WORKFLOWS, Harness, HarnessFactory, template
from tests.openapi_check import assert_schema

JSON = {"Content-Type": "application/json"}


async def _post_raw(harness: Harness, raw: bytes, **params: Any) -> httpx.Response:
    return await harness.client.post(WORKFLOWS, content=raw, headers=JSON, params=params)


async def _put_raw(harness: Harness, wf_id: str, raw: bytes) -> httpx.Response:
    return await harness.client.put(f"{WORKFLOWS}/{wf_id}", content=raw, headers=JSON)


def _with(**fields: Any) -> dict[str, Any]:
    """A valid SubmitWorkflow body with top-level ``fields`` set."""
    return {**template(), **fields}


def _body_text(body: dict[str, Any], placeholder: str, raw: str) -> bytes:
    """``body`` as JSON with the string ``placeholder`` replaced by the raw JSON text ``raw``."""
    return json.dumps(body).replace(json.dumps(placeholder), raw).encode("ascii")


async def _nothing_stored(harness: Harness) -> None:
    state = await harness.state()
    assert state["workflow_count"] == 0
    assert state["buzz"]["charged_buzz"] == 0


# -- 1: lone surrogates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "raw"),
    [
        ("prompt", '"a \\ud800 b"'),
        ("prompt", '"\\udc00"'),
        ("prompt", '"\\ude00\\ud83d"'),  # a pair written backwards
        ("metadata", '{"\\ud800": 1}'),
        ("metadata", '{"k": "\\ud800"}'),
        ("tags", '["\\udc00"]'),
        ("negativePrompt", '"\\ud83d"'),
    ],
)
async def test_a_lone_surrogate_is_refused_before_anything_is_stored_or_charged(
    harness: Harness, where: str, raw: str
) -> None:
    """Item 1: a POST holding a lone surrogate escape anywhere is a 400, nothing created or
    charged, and the account's reads keep working."""
    body = template()
    if where in ("prompt", "negativePrompt"):
        body["steps"][0]["input"][where] = "PLACEHOLDER"
    else:
        body[where] = "PLACEHOLDER"
    with anyio.fail_after(5):
        response = await _post_raw(harness, _body_text(body, "PLACEHOLDER", raw))
        listing = await harness.client.get(WORKFLOWS)
    assert response.status_code == 400
    problem = response.json()
    assert_schema("ValidationProblemDetails", problem)
    assert "lone UTF-16 surrogate" in json.dumps(problem["errors"])
    await _nothing_stored(harness)
    assert listing.status_code == 200


async def test_utf8_encoded_surrogates_and_invalid_utf8_are_refused(harness: Harness) -> None:
    """Item 1: the same character sent as UTF-8 bytes (ED A0 80), or bytes that are not UTF-8
    at all, are a 400 too: the body is read as strict UTF-8."""
    body = json.dumps(_with(metadata={"k": "PLACEHOLDER"})).encode()
    for damaged in (b"\xed\xa0\x80", b"\xff"):
        with anyio.fail_after(5):
            response = await _post_raw(harness, body.replace(b"PLACEHOLDER", damaged))
        assert response.status_code == 400
        assert "UTF-8" in json.dumps(response.json()["errors"])
    await _nothing_stored(harness)


async def test_a_surrogate_pair_is_one_character_and_accepted(harness: Harness) -> None:
    """Item 1: a high surrogate escape followed by a low one is a valid character (U+1F600)."""
    body = template(tags=["PLACEHOLDER"])
    with anyio.fail_after(5):
        response = await _post_raw(harness, _body_text(body, "PLACEHOLDER", '"\\ud83d\\ude00"'))
    assert response.status_code == 202
    assert response.json()["tags"] == ["\U0001f600"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"metadata": {"k": "\\ud800"}}',
        b'{"metadata": {"\\ud800": 1}}',
        b'{"tags": ["\\udc00"]}',
        b'{"metadata": {"n": NaN}}',
        b'{"metadata": {"n": 1e400}}',
    ],
)
async def test_put_cannot_store_what_a_read_cannot_write(harness: Harness, raw: bytes) -> None:
    """Item 1: a PUT with a lone surrogate (or a number JSON cannot carry) is a 400; the
    workflow is unchanged and every later read of it answers 200."""
    with anyio.fail_after(5):
        wf_id = (await harness.submit(_with(tags=["t"], metadata={"m": 1}))).json()["id"]
        before = await harness.get(wf_id)
        response = await _put_raw(harness, wf_id, raw)
        after = await harness.get(wf_id)
        listing = await harness.client.get(WORKFLOWS)
    assert response.status_code == 400
    assert after.status_code == before.status_code == 202
    assert (after.json()["metadata"], after.json()["tags"]) == ({"m": 1}, ["t"])
    assert listing.status_code == 200


# -- 2: depth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("levels", "status"), [(64, 202), (65, 400), (100_000, 400)])
async def test_json_deeper_than_64_levels_is_refused(
    harness: Harness, levels: int, status: int
) -> None:
    """Item 2: System.Text.Json's MaxDepth is 64: a body nested 64 deep is read, 65 is a 400
    (and so is 100,000, which would exhaust Python's recursion, not the emulator)."""
    inner = levels - 2  # the body object and its metadata object are two levels
    body = _with(metadata={"deep": "PLACEHOLDER"})
    raw = _body_text(body, "PLACEHOLDER", "[" * inner + "]" * inner)
    with anyio.fail_after(5):
        response = await _post_raw(harness, raw)
    assert response.status_code == status
    if status == 400:
        assert "maximum configured depth of 64" in json.dumps(response.json()["errors"])
        await _nothing_stored(harness)


# -- 3: PUT is typed by the document -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allowMatureContent": "AAA"}, "allowMatureContent"),
        ({"allowMatureContent": -2582}, "allowMatureContent"),
        ({"status": None}, "status"),
        ({"status": "succeeded"}, "status"),
        ({"metadata": [1]}, "metadata"),
        ({"tags": "x"}, "tags"),
        ({"tags": [1]}, "tags[0]"),
        ({"tags": ["a", "a"]}, "tags"),
        ({"tags": [str(i) for i in range(11)]}, "tags"),
        ({"name": "x"}, "name"),
    ],
)
async def test_put_checks_every_field_against_update_workflow_request(
    harness: Harness, body: dict[str, Any], field: str
) -> None:
    """Items 3 and 4: each field PUT accepts is checked against UpdateWorkflowRequest (status
    is a non-nullable enum, so `null` is refused); nothing changes on a refusal."""
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template())).json()["id"]
        before = (await harness.get(wf_id)).json()
        response = await harness.client.put(f"{WORKFLOWS}/{wf_id}", json=body)
        after = (await harness.get(wf_id)).json()
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert after == before
    assert_schema("Workflow", after)


async def test_put_stores_what_the_document_allows(harness: Harness) -> None:
    """Item 3: a valid PUT answers 204 and a later GET shows it, still a valid Workflow."""
    update = {"allowMatureContent": True, "metadata": {"a": [1, None]}, "tags": ["x", "y"]}
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template())).json()["id"]
        response = await harness.client.put(f"{WORKFLOWS}/{wf_id}", json=update)
        after = (await harness.get(wf_id)).json()
    assert response.status_code == 204
    assert {key: after[key] for key in update} == update
    assert_schema("Workflow", after)


# -- 4: the lenient cases, decided -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("POST", {"hideMatureContent": "AAA"}),
        ("POST", {"wait": "2147483648"}),
        ("POST", {"wait": "-2147483649"}),
        ("POST", {"wait": "1.5"}),
        ("POST", {"whatif": "1"}),
        ("GET", {"hideMatureContent": "AAA"}),
        ("GET", {"wait": "2147483648"}),
        ("QUERY", {"hideMatureContent": "AAA"}),
        ("QUERY", {"take": "2147483648"}),
        ("QUERY", {"fromDate": "yesterday"}),
        ("BLOB", {"nsfwLevel": "AAA"}),
        ("BLOB", {"download": "maybe"}),
    ],
)
async def test_query_parameters_bind_as_the_document_types_them(
    make_harness: HarnessFactory, method: str, params: dict[str, str]
) -> None:
    """Item 4: a query value its declared type cannot hold (a bool that is not true/false,
    an int32 out of range or not an integer, a date that is not one, an enum value that is
    not one) is a 400 naming the parameter, before anything is stored."""
    harness = await make_harness(time_scale=0)
    name = next(iter(params))
    with anyio.fail_after(5):
        created = (await harness.submit(template())).json()
        blob = created["steps"][0]["output"]["images"][0]["id"]
        urls = {
            "POST": WORKFLOWS,
            "GET": f"{WORKFLOWS}/{created['id']}",
            "QUERY": WORKFLOWS,
            "BLOB": f"/v2/consumer/blobs/{blob}",
        }
        verb = "POST" if method == "POST" else "GET"
        response = await harness.client.request(
            verb, urls[method], params=params, json=template() if verb == "POST" else None
        )
        state = await harness.state()
    assert response.status_code == 400
    assert response.json()["errors"] == {
        name: [f"The value '{params[name]}' is not valid for {name}."]
    }
    assert state["workflow_count"] == 1


async def test_query_parameters_in_range_and_any_case_are_accepted(
    make_harness: HarnessFactory,
) -> None:
    """Item 4: the other side of the binding: int32's largest value, True/FALSE, spaces."""
    harness = await make_harness(time_scale=0)
    with anyio.fail_after(5):
        submitted = await harness.submit(template(), wait="2147483647", hideMatureContent="True")
        read = await harness.get(submitted.json()["id"], wait=" 3 ", hideMatureContent="FALSE")
        query = await harness.client.get(WORKFLOWS, params={"take": "-2147483648"})
        blank = await harness.client.get(WORKFLOWS, params={"cursor": " \r", "take": " "})
    assert (submitted.status_code, read.status_code, query.status_code) == (200, 200, 200)
    assert blank.status_code == 200  # a blank value is no value (ConvertEmptyStringToNull)
    assert len(blank.json()["items"]) == 1


@pytest.mark.parametrize(
    ("url", "status"),
    [("", 400), ("hooks/done", 400), ("https://example.invalid/hook", 202)],
)
async def test_a_callback_url_must_be_an_absolute_uri(
    harness: Harness, url: str, status: int
) -> None:
    """Item 4: WorkflowCallback.url is `format: uri`: an empty or relative one is a 400."""
    body = template()
    body["callbacks"] = [{"url": url, "type": ["workflow:succeeded"]}]
    with anyio.fail_after(5):
        response = await harness.submit(body)
    assert response.status_code == status
    if status == 400:
        assert "callbacks[0].url" in response.json()["errors"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        (None, 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=utf-16", 415),
        ("application/json", 202),
        ("application/json; charset=UTF-8", 202),
        ("text/json", 202),
        ("application/vnd.zbatch+json", 202),
    ],
)
async def test_a_body_must_come_in_a_documented_media_type(
    harness: Harness, content_type: str | None, status: int
) -> None:
    """Item 4: POST and PUT take the requestBody's media types (application/json, text/json,
    application/*+json) in UTF-8; anything else is a 415 ProblemDetails, nothing stored."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    raw = json.dumps(template()).encode()
    with anyio.fail_after(5):
        response = await harness.client.post(WORKFLOWS, content=raw, headers=headers)
        state = await harness.state()
    assert response.status_code == status
    assert state["workflow_count"] == (1 if status == 202 else 0)
    if status == 415:
        assert response.headers["content-type"] == "application/problem+json"
        assert_schema("ProblemDetails", response.json())
        assert response.json()["title"] == "Unsupported Media Type"


async def test_put_with_a_text_body_is_415(harness: Harness) -> None:
    """Item 4: the same media types rule on PUT."""
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template())).json()["id"]
        response = await harness.client.put(
            f"{WORKFLOWS}/{wf_id}",
            content=b'{"status": "canceled"}',
            headers={"Content-Type": "text/plain"},
        )
        after = await harness.get(wf_id)
    assert response.status_code == 415
    assert after.json()["status"] != "canceled"


# -- 5: startedAt at time_scale 0, imageMetadata ----------------------------------------------


async def test_succeeded_jobs_have_started_at_time_scale_0(make_harness: HarnessFactory) -> None:
    """Item 5: a workflow terminal at creation still reports when its jobs started."""
    harness = await make_harness(time_scale=0)
    with anyio.fail_after(5):
        workflow = (await harness.submit(template(quantity=3))).json()
    assert workflow["status"] == "succeeded"
    step = workflow["steps"][0]
    for job in step["jobs"]:
        assert job["status"] == "succeeded"
        assert job["startedAt"] is not None
        assert job["startedAt"] <= job["completedAt"]
    assert workflow["startedAt"] is not None
    assert step["startedAt"] is not None


async def _image_bytes(harness: Harness, **overrides: Any) -> bytes:
    workflow = (await harness.submit(template(**overrides))).json()
    blob = workflow["steps"][0]["output"]["images"][0]["id"]
    response = await harness.client.get(f"/v2/consumer/blobs/{blob}", follow_redirects=True)
    assert response.status_code == 200
    return response.content


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webP"])
async def test_image_metadata_is_stored_with_the_image_not_drawn(
    make_harness: HarnessFactory, fmt: str
) -> None:
    """Item 5: imageMetadata ("stored with the image") is in the file's EXIF UserComment and
    leaves the pixels as they are without it."""
    harness = await make_harness(time_scale=0)
    with anyio.fail_after(10):
        plain = await _image_bytes(harness, outputFormat=fmt, seed=5)
        tagged = await _image_bytes(harness, outputFormat=fmt, seed=5, imageMetadata="cell é 🌲")
    assert stored_metadata(tagged) == "cell é 🌲"
    assert stored_metadata(plain) is None
    with Image.open(io.BytesIO(plain)) as a, Image.open(io.BytesIO(tagged)) as b:
        assert a.tobytes() == b.tobytes()


# -- 6: error bodies ---------------------------------------------------------------------------


async def test_errors_are_problem_json_with_a_problem_details_body(harness: Harness) -> None:
    """Item 6: every error answer is `application/problem+json` (what ASP.NET Core writes for a
    ProblemDetails; the document labels them application/json) with a ProblemDetails body."""
    with anyio.fail_after(5):
        answers = [
            await harness.submit({"steps": []}),
            await harness.client.get(WORKFLOWS, headers={"Authorization": "Basic x"}),
            await harness.get("1-20260101000000000"),
            await harness.client.post(
                WORKFLOWS, content=b"{}", headers={"Content-Type": "text/plain"}
            ),
        ]
    assert [a.status_code for a in answers] == [400, 401, 404, 415]
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        assert_schema("ProblemDetails", answer.json())


# -- found on the way ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (template("cell-1\n"), "externalId"),
        (template(loras={"urn:air:zImage:lora:civitai:1@2\n": 1.0}), "steps[0].input.loras"),
    ],
)
async def test_a_pattern_must_match_the_whole_value(
    harness: Harness, body: dict[str, Any], field: str
) -> None:
    """A trailing newline does not slip past a `...$` pattern (Python's `$` matches before a
    final newline; .NET's RegularExpressionAttribute wants the match to be the whole value)."""
    with anyio.fail_after(5):
        response = await harness.submit(body)
    assert response.status_code == 400
    assert any(key.startswith(field) for key in response.json()["errors"])
    await _nothing_stored(harness)
