"""QueryWorkflows, UpdateWorkflow (cancel, tags, metadata) and DeleteWorkflow over HTTP."""

from __future__ import annotations

from typing import Any

import anyio

from tests.emulator.conftest import WORKFLOWS, Harness, HarnessFactory, template
from tests.openapi_check import assert_schema


def net(workflow: dict[str, Any]) -> int:
    signs = {"debit": 1, "credit": -1}
    return sum(signs[t["type"]] * t["amount"] for t in workflow["transactions"]["list"])


async def _submit_many(harness: Harness, count: int, tags: list[str]) -> list[str]:
    ids = []
    for n in range(count):
        ids.append(
            (await harness.submit(template(f"q-{'-'.join(tags)}-{n}", tags=tags))).json()["id"]
        )
        harness.clock.advance(1)
    return ids


async def test_query_pages_newest_first_with_opaque_cursor(harness: Harness) -> None:
    """Pages of `take` items, newest first; `next` is a cursor, then "" on the last page."""
    with anyio.fail_after(5):
        ids = await _submit_many(harness, 5, ["batch"])
        seen, cursor, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"tags": "batch", "take": 2}
            if cursor:
                params["cursor"] = cursor
            response = await harness.client.get(WORKFLOWS, params=params)
            assert response.status_code == 200
            page = response.json()
            assert_schema("CursedArrayOfTelemetryCursorAndWorkflow", page)
            seen += [w["id"] for w in page["items"]]
            pages += 1
            cursor = page["next"]
            if not cursor:
                break
    assert seen == ids[::-1]
    assert pages == 3


async def test_query_cursor_is_stable_when_new_work_arrives(harness: Harness) -> None:
    """A workflow created between pages neither repeats nor shifts the next page."""
    with anyio.fail_after(5):
        ids = await _submit_many(harness, 4, ["s"])
        first = (await harness.client.get(WORKFLOWS, params={"tags": "s", "take": 2})).json()
        await harness.submit(template("late", tags=["s"]))
        params = {"tags": "s", "take": 2, "cursor": first["next"]}
        second = (await harness.client.get(WORKFLOWS, params=params)).json()
    assert [w["id"] for w in second["items"]] == [ids[1], ids[0]]
    assert second["next"] == ""


async def test_query_tags_are_anded_and_ascending_reverses(harness: Harness) -> None:
    """Several `tags` must all be present; `ascending=true` gives oldest first."""
    with anyio.fail_after(5):
        both = [
            (await harness.submit(template(f"b{n}", tags=["a", "b"]))).json()["id"]
            for n in range(2)
        ]
        await harness.submit(template("only-a", tags=["a"]))
        response = await harness.client.get(
            WORKFLOWS, params=[("tags", "a"), ("tags", "b"), ("ascending", "true")]
        )
    assert [w["id"] for w in response.json()["items"]] == both


async def test_query_take_is_capped_and_defaults(make_harness: HarnessFactory) -> None:
    """`take` above `max_take` is capped; items are limited to the caller's own workflows."""
    harness = await make_harness(max_take=2, time_scale=0)
    with anyio.fail_after(5):
        await _submit_many(harness, 3, ["cap"])
        capped = (await harness.client.get(WORKFLOWS, params={"take": 50})).json()
        other = await harness.client.get(WORKFLOWS, headers={"Authorization": "Bearer stranger"})
    assert len(capped["items"]) == 2
    assert capped["next"]
    assert other.json() == {"next": "", "items": []}


async def test_query_exclude_failed_and_date_range(make_harness: HarnessFactory) -> None:
    """excludeFailed drops failed/expired/canceled; fromDate/toDate are inclusive on createdAt."""
    harness = await make_harness(blocked_words=frozenset({"nope"}), time_scale=0)
    with anyio.fail_after(5):
        ok = (await harness.submit(template("ok", tags=["d"]))).json()
        harness.clock.advance(10)
        bad = (await harness.submit(template("bad", tags=["d"], prompt="nope"))).json()
        kept = (await harness.client.get(WORKFLOWS, params={"excludeFailed": "true"})).json()
        window = {"fromDate": ok["createdAt"], "toDate": "2026-01-01T00:00:05Z"}
        dated = (await harness.client.get(WORKFLOWS, params=window)).json()
        everything = (await harness.client.get(WORKFLOWS)).json()
    assert bad["status"] == "failed"
    assert [w["id"] for w in kept["items"]] == [ok["id"]]
    assert [w["id"] for w in dated["items"]] == [ok["id"]]
    assert len(everything["items"]) == 2


async def test_query_bad_cursor_is_400(harness: Harness) -> None:
    """A cursor the service did not issue is a 400 ProblemDetails."""
    with anyio.fail_after(5):
        response = await harness.client.get(WORKFLOWS, params={"cursor": "!!not-ours"})
    assert response.status_code == 400
    assert_schema("ProblemDetails", response.json())


async def test_cancel_before_processing_refunds_in_full(harness: Harness) -> None:
    """PUT status=canceled before processing: 204, canceled, debit matched by a credit."""
    with anyio.fail_after(5):
        wf = (await harness.submit(template("c1"))).json()
        response = await harness.client.put(f"{WORKFLOWS}/{wf['id']}", json={"status": "canceled"})
        after = (await harness.get(wf["id"])).json()
        state = await harness.state()
    assert response.status_code == 204
    assert after["status"] == "canceled"
    assert all(j["status"] == "canceled" for j in after["steps"][0]["jobs"])
    assert net(after) == 0
    assert state["buzz"]["refunded_buzz"] == state["buzz"]["charged_buzz"] == wf["cost"]["total"]


async def test_cancel_while_processing_keeps_the_charge(harness: Harness) -> None:
    """A cancel after processing began: canceled, no refund; finished jobs keep their images."""
    with anyio.fail_after(5):
        wf = (await harness.submit(template("c2", quantity=3))).json()
        while (await harness.get(wf["id"])).json()["status"] != "processing":
            harness.clock.advance(0.05)
        await harness.client.put(f"{WORKFLOWS}/{wf['id']}", json={"status": "canceled"})
        harness.clock.advance(60)
        after = (await harness.get(wf["id"])).json()
    assert after["status"] == "canceled"
    assert net(after) == after["cost"]["total"]
    assert after["steps"][0]["jobs"][-1]["status"] == "canceled"


async def test_cancel_of_a_terminal_workflow_changes_nothing(make_harness: HarnessFactory) -> None:
    """Canceling a succeeded workflow is a 204 no-op: still succeeded, still charged."""
    harness = await make_harness(time_scale=0)
    with anyio.fail_after(5):
        wf = (await harness.submit(template("c3"))).json()
        await harness.client.put(f"{WORKFLOWS}/{wf['id']}", json={"status": "canceled"})
        after = (await harness.get(wf["id"])).json()
    assert after["status"] == "succeeded"
    assert net(after) == wf["cost"]["total"]


async def test_put_replaces_tags_and_metadata(harness: Harness) -> None:
    """PUT `tags`/`metadata` replace the old values; unknown fields are a 400."""
    with anyio.fail_after(5):
        wf = (await harness.submit({**template("u", tags=["old"]), "metadata": {"a": 1}})).json()
        url = f"{WORKFLOWS}/{wf['id']}"
        ok = await harness.client.put(url, json={"tags": ["new"], "metadata": {"b": 2}})
        bad = await harness.client.put(url, json={"status": "succeeded", "colour": "red"})
        after = (await harness.get(wf["id"])).json()
        by_new = (await harness.client.get(WORKFLOWS, params={"tags": "new"})).json()
    assert ok.status_code == 204
    assert bad.status_code == 400
    assert_schema("ValidationProblemDetails", bad.json())
    assert set(bad.json()["errors"]) == {"status", "colour"}
    assert (after["tags"], after["metadata"]) == (["new"], {"b": 2})
    assert [w["id"] for w in by_new["items"]] == [wf["id"]]


async def test_delete_is_a_soft_delete_with_refund(harness: Harness) -> None:
    """DELETE: 204, then GET 404, absent from queries, refunded if it had not started."""
    with anyio.fail_after(5):
        wf = (await harness.submit(template("del", tags=["x"]))).json()
        response = await harness.client.delete(f"{WORKFLOWS}/{wf['id']}")
        gone = await harness.get(wf["id"])
        listed = (await harness.client.get(WORKFLOWS, params={"tags": "x"})).json()
        again = await harness.client.delete(f"{WORKFLOWS}/{wf['id']}")
        state = await harness.state()
    assert response.status_code == 204
    assert gone.status_code == 404
    assert listed["items"] == []
    assert again.status_code == 404
    assert state["buzz"]["net_buzz"] == 0
    assert state["deleted_count"] == 1


async def test_advance_route_moves_the_manual_clock(harness: Harness) -> None:
    """POST /_emulator/advance?seconds=N moves a ManualClock (test-only route, outside /v2)."""
    with anyio.fail_after(5):
        response = await harness.client.post("/_emulator/advance", params={"seconds": 2.5})
        state = await harness.state()
    assert response.json() == {"now_s": 2.5}
    assert state["now_s"] == 2.5
