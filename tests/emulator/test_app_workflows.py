"""SubmitWorkflow and GetWorkflow over HTTP: shapes, lifecycle, idempotency, whatif, billing."""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest

from runner.emulator.pricing import price_buzz
from runner.emulator.validation import normalized_input
from tests.emulator.conftest import WORKFLOWS, Harness, HarnessFactory, template, zimage_input
from tests.openapi_check import assert_schema

ID_PATTERN = re.compile(r"^\d+-\d{17}$")
BLOB_PATTERN = re.compile(r"^[A-Z2-7]{26}\.jpeg$")


def debits(workflow: dict[str, Any]) -> int:
    return sum(t["amount"] for t in workflow["transactions"]["list"] if t["type"] == "debit")


def credits(workflow: dict[str, Any]) -> int:
    return sum(t["amount"] for t in workflow["transactions"]["list"] if t["type"] == "credit")


async def test_submit_returns_202_with_images_allocated_up_front(harness: Harness) -> None:
    """A fresh submit answers 202 with a Workflow whose blobs exist but are not available."""
    with anyio.fail_after(5):
        response = await harness.submit(template("cell-1", tags=["b"], quantity=3))
    assert response.status_code == 202
    workflow = response.json()
    assert_schema("Workflow", workflow)
    assert ID_PATTERN.match(workflow["id"])
    assert workflow["status"] == "unassigned"
    assert workflow["externalId"] == "cell-1"
    step = workflow["steps"][0]
    assert (step["name"], step["timeout"], step["status"]) == ("$0", "00:20:00", "unassigned")
    assert isinstance(step["input"]["seed"], int)
    assert step["input"]["cfgScale"] == 1
    assert step["input"]["steps"] == 9
    assert len(step["jobs"]) == 3
    images = step["output"]["images"]
    assert [i["available"] for i in images] == [False, False, False]
    assert all(BLOB_PATTERN.match(i["id"]) and i["url"] and i["urlExpiresAt"] for i in images)
    assert [i["jobId"] for i in images] == [j["id"] for j in step["jobs"]]
    assert step["output"]["errors"] is None
    expected = price_buzz(normalized_input(zimage_input(quantity=3)))
    assert workflow["cost"]["total"] == expected == debits(workflow)


async def test_status_moves_through_phases_as_the_clock_advances(harness: Harness) -> None:
    """Statuses are computed from the clock: unassigned, preparing, scheduled, processing, done."""
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template(quantity=2))).json()["id"]
        seen: list[str] = []
        for _ in range(400):
            response = await harness.get(wf_id)
            body = response.json()
            assert_schema("Workflow", body)
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if body["status"] == "succeeded":
                break
            harness.clock.advance(0.05)
    assert seen == ["unassigned", "preparing", "scheduled", "processing", "succeeded"]
    assert response.status_code == 200
    step = body["steps"][0]
    assert body["startedAt"]
    assert body["completedAt"]
    assert step["estimatedProgressRate"] is None
    assert all(i["available"] for i in step["output"]["images"])
    assert [j["status"] for j in step["jobs"]] == ["succeeded", "succeeded"]


async def test_time_scale_zero_is_terminal_at_once(make_harness: HarnessFactory) -> None:
    """With time_scale 0 a submit already answers 200 with a succeeded workflow."""
    harness = await make_harness(time_scale=0)
    with anyio.fail_after(5):
        response = await harness.submit(template())
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


async def test_submit_wait_long_polls_on_the_clock(harness: Harness) -> None:
    """`wait=N` on submit holds the answer until the workflow is terminal (clock time)."""
    results = []

    async def submit() -> None:
        results.append(await harness.submit(template(), wait=60))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            harness.clock.advance(60)
    assert results[0].status_code == 200
    assert results[0].json()["status"] == "succeeded"


async def test_get_wait_gives_202_when_time_runs_out(harness: Harness) -> None:
    """GET `wait=1` returns 202 after one clock second if the workflow is still running."""
    results = []
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template(model="base", width=1024, height=1024))).json()["id"]

        async def get() -> None:
            results.append(await harness.get(wf_id, wait=1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            harness.clock.advance(1)
    assert results[0].status_code == 202


async def test_wait_is_capped_at_100_seconds(harness: Harness) -> None:
    """A `wait` above 100 s is clamped: the answer comes after 100 clock seconds, not 1000."""
    results = []
    body = template(model="base", width=2048, height=2048, quantity=4, steps=150)
    with anyio.fail_after(5):

        async def submit() -> None:
            results.append(await harness.submit(body, wait=1000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await anyio.wait_all_tasks_blocked()
            harness.clock.advance(100)
    assert results[0].status_code == 202


async def test_same_external_id_returns_the_existing_workflow(harness: Harness) -> None:
    """A repeated externalId gets the first workflow back (new body ignored), charged once."""
    with anyio.fail_after(5):
        first = (await harness.submit(template("cell-7", prompt="first"))).json()
        again = await harness.submit(template("cell-7", prompt="second", quantity=4))
        assert again.status_code == 202
        assert again.json()["id"] == first["id"]
        assert again.json()["steps"][0]["input"]["prompt"] == "first"
        harness.clock.advance(60)
        done = await harness.submit(template("cell-7"))
        state = await harness.state()
    assert done.status_code == 200
    assert done.json()["id"] == first["id"]
    assert state["workflows"]["cell-7"]["ids"] == [first["id"]]
    assert state["submit_attempts"]["cell-7"] == 3
    assert state["buzz"]["charged_buzz"] == first["cost"]["total"]


async def test_external_id_is_scoped_per_account(make_harness: HarnessFactory) -> None:
    """Two tokens using the same externalId get two different workflows."""
    harness = await make_harness()
    with anyio.fail_after(5):
        mine = (await harness.submit(template("shared"))).json()["id"]
        headers = {"Authorization": "Bearer someone-else"}
        theirs = await harness.client.post(WORKFLOWS, json=template("shared"), headers=headers)
    assert theirs.json()["id"] != mine


async def test_missing_seed_is_filled_deterministically(make_harness: HarnessFactory) -> None:
    """The service picks a seed from (config seed, externalId) and echoes it in the input."""
    first, second = await make_harness(), await make_harness()
    with anyio.fail_after(5):
        a = (await first.submit(template("cell-s"))).json()
        b = (await second.submit(template("cell-s"))).json()
        c = (await first.submit(template("cell-t", seed=42))).json()
    assert a["steps"][0]["input"]["seed"] == b["steps"][0]["input"]["seed"]
    assert a == b
    assert c["steps"][0]["input"]["seed"] == 42


async def test_whatif_without_external_id_persists_nothing(harness: Harness) -> None:
    """A whatif prices the work (id null, transactions preview) and charges nothing."""
    with anyio.fail_after(5):
        before = harness.service.balance("test-token-blue")
        response = await harness.submit(template(quantity=2), whatif="true")
        state = await harness.state()
    body = response.json()
    assert response.status_code == 200
    assert_schema("Workflow", body)
    assert body["id"] is None
    assert body["transactions"]["insufficientBuzz"] is False
    assert debits(body) == body["cost"]["total"] > 0
    assert state["workflow_count"] == 0
    assert state["buzz"]["charged_buzz"] == 0
    assert harness.service.balance("test-token-blue") == before


async def test_whatif_with_external_id_burns_the_key(harness: Harness) -> None:
    """A whatif with an externalId stores the preview; a real submit with that key gets it back."""
    with anyio.fail_after(5):
        preview = (await harness.submit(template("cell-w"), whatif="true")).json()
        real = await harness.submit(template("cell-w"))
        state = await harness.state()
    assert real.status_code == 200
    assert real.json() == preview
    assert real.json()["id"] is None
    assert state["workflows"]["cell-w"] == {"ids": [], "whatif_preview": True}
    assert state["workflow_count"] == 0
    assert state["buzz"]["charged_buzz"] == 0


async def test_whatif_reports_insufficient_buzz(make_harness: HarnessFactory) -> None:
    """A whatif the account cannot pay for says so in `transactions.insufficientBuzz`."""
    harness = await make_harness(initial_balance={"blue": 1})
    with anyio.fail_after(5):
        big = template(width=1024, height=1024)
        body = (await harness.submit(big, whatif="true")).json()
    assert body["transactions"]["insufficientBuzz"] is True


async def test_insufficient_buzz_is_a_400_problem(make_harness: HarnessFactory) -> None:
    """A real submit the account cannot pay for: 400 'Insufficient Buzz', nothing created."""
    harness = await make_harness(initial_balance={"blue": 1, "yellow": 0})
    with anyio.fail_after(5):
        response = await harness.submit(template("poor", width=1024, height=1024))
        state = await harness.state()
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert_schema("ProblemDetails", problem)
    assert problem["title"] == "Insufficient Buzz"
    assert "1 Buzz available" in problem["detail"]
    assert state["workflow_count"] == 0
    assert state["workflows"] == {}


async def test_debit_splits_blue_then_green_then_yellow(make_harness: HarnessFactory) -> None:
    """With no currencies given, the price is taken from blue, then green, then yellow."""
    harness = await make_harness(initial_balance={"blue": 3, "green": 2, "yellow": 100})
    with anyio.fail_after(5):
        body = (await harness.submit(template(width=1024, height=1024))).json()
    price = body["cost"]["total"]
    split = [(t["accountType"], t["amount"]) for t in body["transactions"]["list"]]
    assert split == [("blue", 3), ("green", 2), ("yellow", price - 5)]
    assert harness.service.balance("test-token-blue")["yellow"] == 100 - (price - 5)


async def test_currencies_restrict_which_accounts_pay(make_harness: HarnessFactory) -> None:
    """`currencies: [yellow]` leaves blue untouched."""
    harness = await make_harness(initial_balance={"blue": 1000, "yellow": 1000})
    with anyio.fail_after(5):
        body = (await harness.submit({**template(), "currencies": ["yellow"]})).json()
    assert {t["accountType"] for t in body["transactions"]["list"]} == {"yellow"}


async def test_invalid_body_is_a_validation_problem(harness: Harness) -> None:
    """An unknown input field is a 400 ValidationProblemDetails naming the field path."""
    with anyio.fail_after(5):
        response = await harness.submit(template(guidanceScale=3))
        state = await harness.state()
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert_schema("ValidationProblemDetails", problem)
    assert "steps[0].input.guidanceScale" in problem["errors"]
    assert state["workflow_count"] == 0


async def test_malformed_json_is_a_validation_problem(harness: Harness) -> None:
    """A body that is not JSON is a 400 with an error under `$`."""
    with anyio.fail_after(5):
        response = await harness.client.post(
            WORKFLOWS, content=b"{nope", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert "$" in response.json()["errors"]


async def test_more_than_one_step_is_rejected(harness: Harness) -> None:
    """The emulator runs exactly one imageGen step per workflow (400 otherwise)."""
    body = template()
    body["steps"] = body["steps"] * 2
    with anyio.fail_after(5):
        response = await harness.submit(body)
    assert response.status_code == 400


async def test_unknown_or_foreign_workflow_is_404(harness: Harness) -> None:
    """GET of an unknown id, or of another token's workflow, is a 404 ProblemDetails."""
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template())).json()["id"]
        unknown = await harness.get("123-20260101000000000")
        headers = {"Authorization": "Bearer another"}
        foreign = await harness.client.get(f"{WORKFLOWS}/{wf_id}", headers=headers)
    assert unknown.status_code == foreign.status_code == 404
    assert_schema("ProblemDetails", unknown.json())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", WORKFLOWS),
        ("GET", WORKFLOWS),
        ("GET", f"{WORKFLOWS}/1-20260101000000000"),
        ("PUT", f"{WORKFLOWS}/1-20260101000000000"),
        ("DELETE", f"{WORKFLOWS}/1-20260101000000000"),
        ("GET", "/v2/consumer/blobs/ABC.jpeg"),
        ("POST", "/v2/consumer/blobs/ABC.jpeg/refresh"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer ", "Basic abc", "Token abc"])
async def test_v2_routes_need_a_bearer_token(
    harness: Harness, method: str, path: str, authorization: str | None
) -> None:
    """Every /v2 route except signed blob URLs answers 401 without a bearer token."""
    headers = {"Authorization": authorization} if authorization else {}
    harness.client.headers.pop("Authorization")
    with anyio.fail_after(5):
        response = await harness.client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert_schema("ProblemDetails", response.json())


async def test_configured_tokens_reject_others_and_never_echo(make_harness: HarnessFactory) -> None:
    """With a token allow-list an unknown token is a 401 whose body does not contain it."""
    harness = await make_harness(token="intruder-secret", tokens=frozenset({"good"}))
    with anyio.fail_after(5):
        response = await harness.submit(template())
        state = await harness.state()
    assert response.status_code == 401
    assert "intruder-secret" not in response.text
    assert "intruder-secret" not in str(state)


async def test_rate_limit_answers_429_with_retry_after(make_harness: HarnessFactory) -> None:
    """Past the burst, submits get 429 with an integer Retry-After; the bucket refills in time."""
    from runner.emulator import RateLimit

    harness = await make_harness(time_scale=0, submit_limit=RateLimit(per_s=0.5, burst=2))
    with anyio.fail_after(5):
        codes = [(await harness.submit(template())).status_code for _ in range(3)]
        limited = await harness.submit(template())
        harness.clock.advance(int(limited.headers["Retry-After"]))
        after = await harness.submit(template())
        state = await harness.state()
    assert codes == [200, 200, 429]
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert_schema("ProblemDetails", limited.json())
    assert after.status_code == 200
    assert state["rate_limited"] == 2
    assert state["requests"]["by_route_status"]["POST /v2/consumer/workflows 429"] == 2


async def test_blocked_word_fails_the_step_and_refunds(make_harness: HarnessFactory) -> None:
    """A blocked word (whole word, any case) fails the step when processing would start."""
    harness = await make_harness(blocked_words=frozenset({"forbidden"}))
    with anyio.fail_after(5):
        blocked = (await harness.submit(template(prompt="A FORBIDDEN fox", quantity=2))).json()
        fine = (await harness.submit(template(prompt="an unforbiddenly nice fox"))).json()
        harness.clock.advance(60)
        body = (await harness.get(blocked["id"])).json()
        other = (await harness.get(fine["id"])).json()
    assert_schema("Workflow", body)
    assert body["status"] == "failed"
    assert other["status"] == "succeeded"
    images = body["steps"][0]["output"]["images"]
    assert [(i["available"], i["blockedReason"]) for i in images] == [(False, "blocked")] * 2
    assert body["steps"][0]["output"]["errors"] == ["blocked"]
    assert debits(body) == credits(body) == body["cost"]["total"] > 0


async def test_step_timeout_expires_and_refunds(harness: Harness) -> None:
    """A step whose jobs outlast its `timeout` expires at the timeout and is refunded."""
    body = template(model="base", width=1024, height=1024, quantity=4)
    body["steps"][0]["timeout"] = "00:00:10"
    with anyio.fail_after(5):
        wf = (await harness.submit(body)).json()
        harness.clock.advance(9)
        running = (await harness.get(wf["id"])).json()
        harness.clock.advance(1)
        expired = (await harness.get(wf["id"])).json()
    assert running["status"] in ("scheduled", "processing")
    assert expired["status"] == "expired"
    assert expired["completedAt"] == "2026-01-01T00:00:10.000Z"
    assert debits(expired) == credits(expired) == expired["cost"]["total"]
