"""The fault profile: each kind fires as scripted (p=1, times=1) and leaves the ledger honest."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from runner.emulator import FaultProfile, FaultRule, load_faults
from runner.emulator.faults import FaultInjector
from tests.emulator.conftest import WORKFLOWS, Harness, HarnessFactory, template
from tests.openapi_check import assert_schema

ONCE = FaultRule(p=1.0, times=1)


async def faulty(make_harness: HarnessFactory, **rules: FaultRule) -> Harness:
    return await make_harness(faults=FaultProfile(**rules))


def net(workflow: dict[str, Any]) -> int:
    signs = {"debit": 1, "credit": -1}
    return sum(signs[t["type"]] * t["amount"] for t in workflow["transactions"]["list"])


async def test_submit_5xx_before_creates_nothing(make_harness: HarnessFactory) -> None:
    """submit_5xx_before answers 5xx before anything exists; the retry creates it once."""
    harness = await faulty(make_harness, submit_5xx_before=ONCE)
    with anyio.fail_after(5):
        failed = await harness.submit(template("k1"))
        between = await harness.state()
        retried = await harness.submit(template("k1"))
        state = await harness.state()
    assert failed.status_code in (500, 502, 503)
    assert_schema("ProblemDetails", failed.json())
    assert between["workflow_count"] == 0
    assert between["buzz"]["charged_buzz"] == 0
    assert retried.status_code == 202
    assert state["workflows"]["k1"]["ids"] == [retried.json()["id"]]
    assert state["faults_fired"] == {"submit_5xx_before": 1}


async def test_submit_5xx_after_creates_and_charges(make_harness: HarnessFactory) -> None:
    """submit_5xx_after: 502 although the workflow exists and is paid; the retry finds it."""
    harness = await faulty(make_harness, submit_5xx_after=ONCE)
    with anyio.fail_after(5):
        failed = await harness.submit(template("k2"))
        between = await harness.state()
        retried = await harness.submit(template("k2"))
        state = await harness.state()
    assert failed.status_code == 502
    assert len(between["workflows"]["k2"]["ids"]) == 1
    assert between["buzz"]["charged_buzz"] > 0
    assert state["workflows"]["k2"]["ids"] == [retried.json()["id"]]
    assert state["buzz"]["charged_buzz"] == retried.json()["cost"]["total"]


async def test_submit_drop_after_is_a_protocol_error_in_process(
    make_harness: HarnessFactory,
) -> None:
    """submit_drop_after cuts the connection mid-body; the workflow exists, charged once."""
    harness = await faulty(make_harness, submit_drop_after=ONCE)
    with anyio.fail_after(5):
        with pytest.raises(httpx.RemoteProtocolError):
            await harness.submit(template("k3"))
        retried = await harness.submit(template("k3"))
        state = await harness.state()
    assert retried.status_code == 202
    assert state["workflows"]["k3"]["ids"] == [retried.json()["id"]]
    assert state["buzz"]["charged_buzz"] == retried.json()["cost"]["total"]
    assert state["submit_attempts"]["k3"] == 2
    assert state["faults_fired"] == {"submit_drop_after": 1}


async def test_read_5xx_hits_get_and_query(make_harness: HarnessFactory) -> None:
    """read_5xx fails a GET (and, separately counted, a query) once each."""
    rule = FaultRule(p=1.0, times=1, statuses=(503,))
    harness = await faulty(make_harness, read_5xx=rule)
    other = await faulty(make_harness, read_5xx=rule)
    with anyio.fail_after(5):
        wf_id = (await harness.submit(template("k4"))).json()["id"]
        codes = [(await harness.get(wf_id)).status_code for _ in range(2)]
        query = [(await other.client.get(WORKFLOWS)).status_code for _ in range(2)]
    assert codes == [503, 202]
    assert query == [503, 200]


async def test_slow_holds_the_answer_for_delay_s_on_the_clock(make_harness: HarnessFactory) -> None:
    """slow delays an answer by delay_s clock seconds (the work itself is already done)."""
    harness = await faulty(make_harness, slow=FaultRule(p=1.0, times=1, delay_s=7))
    results: list[httpx.Response] = []

    async def submit() -> None:
        results.append(await harness.submit(template("k5")))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            assert harness.service.workflow_ids("k5")  # created while the answer waits
            harness.clock.advance(6.9)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            harness.clock.advance(0.1)
    assert results[0].status_code in (200, 202)


async def test_step_fail_fails_one_job_and_refunds(make_harness: HarnessFactory) -> None:
    """step_fail: the step fails at a seeded job; earlier images stay, the charge is refunded."""
    harness = await faulty(make_harness, step_fail=ONCE)
    with anyio.fail_after(5):
        wf = (await harness.submit(template("k6", quantity=3))).json()
        harness.clock.advance(60)
        body = (await harness.get(wf["id"])).json()
        state = await harness.state()
    assert_schema("Workflow", body)
    assert body["status"] == "failed"
    jobs = [j["status"] for j in body["steps"][0]["jobs"]]
    failed_at = jobs.index("failed")
    assert jobs == ["succeeded"] * failed_at + ["failed"] + ["canceled"] * (2 - failed_at)
    available = [i["available"] for i in body["steps"][0]["output"]["images"]]
    assert available == [s == "succeeded" for s in jobs]
    assert body["steps"][0]["output"]["errors"]
    assert net(body) == 0
    assert body["cost"]["total"] > 0
    assert state["buzz"]["net_buzz"] == 0


async def test_step_expire_hangs_until_the_timeout(make_harness: HarnessFactory) -> None:
    """step_expire: no provider picks the step up; it expires at its timeout, refunded."""
    harness = await faulty(make_harness, step_expire=ONCE)
    with anyio.fail_after(5):
        wf = (await harness.submit(template("k7"))).json()
        harness.clock.advance(1199)
        waiting = (await harness.get(wf["id"])).json()
        harness.clock.advance(1)
        body = (await harness.get(wf["id"])).json()
    assert waiting["status"] == "scheduled"
    assert waiting["steps"][0]["jobs"][0]["queuePosition"] == {"support": "unavailable"}
    assert body["status"] == "expired"
    assert [j["status"] for j in body["steps"][0]["jobs"]] == ["expired"]
    assert net(body) == 0


async def _download(harness: Harness) -> tuple[dict[str, Any], httpx.Response]:
    wf = (await harness.submit(template("img", width=256, height=256))).json()
    harness.clock.advance(60)
    image = (await harness.get(wf["id"])).json()["steps"][0]["output"]["images"][0]
    response = await harness.client.get(
        image["url"], headers={"Authorization": ""}, follow_redirects=True
    )
    return image, response


async def test_blob_5xx_fails_one_download(make_harness: HarnessFactory) -> None:
    """blob_5xx: the content request answers 5xx once; the next download works."""
    harness = await faulty(make_harness, blob_5xx=ONCE)
    with anyio.fail_after(10):
        image, first = await _download(harness)
        second = await harness.client.get(image["url"], follow_redirects=True)
    assert first.status_code in (500, 502, 503)
    assert second.status_code == 200


async def test_blob_truncate_sends_part_with_matching_length(make_harness: HarnessFactory) -> None:
    """blob_truncate: a 200 with fewer bytes, Content-Length matching the cut."""
    harness = await faulty(make_harness, blob_truncate=FaultRule(p=1.0, times=1, fraction=0.5))
    with anyio.fail_after(10):
        image, cut = await _download(harness)
        whole = await harness.client.get(image["url"], follow_redirects=True)
    assert cut.status_code == 200
    assert int(cut.headers["content-length"]) == len(cut.content)
    assert len(cut.content) == len(whole.content) // 2
    assert whole.content.startswith(cut.content)


async def test_blob_corrupt_flips_bytes_in_the_middle(make_harness: HarnessFactory) -> None:
    """blob_corrupt: same length, different bytes, and the picture no longer decodes cleanly."""
    harness = await faulty(make_harness, blob_corrupt=ONCE)
    with anyio.fail_after(10):
        image, bad = await _download(harness)
        good = await harness.client.get(image["url"], follow_redirects=True)
    assert len(bad.content) == len(good.content)
    assert bad.content != good.content
    with Image.open(io.BytesIO(good.content)) as picture:
        good_pixels = picture.tobytes()
    try:
        with Image.open(io.BytesIO(bad.content)) as picture:
            assert picture.tobytes() != good_pixels
    except OSError:
        pass  # undecodable is also corrupt


def test_draws_are_deterministic_and_order_independent() -> None:
    """A draw depends on (seed, kind, subject, n) only, not on other subjects' traffic."""
    profile = FaultProfile(step_fail=FaultRule(p=0.5))
    a, b = FaultInjector(profile, seed=3), FaultInjector(profile, seed=3)
    subjects = [f"s{n}" for n in range(50)]
    first = {s: [a.fires("step_fail", s) for _ in range(3)] for s in subjects}
    second = {s: [b.fires("step_fail", s) for _ in range(3)] for s in reversed(subjects)}
    assert first == second
    assert 0 < sum(v[0] for v in first.values()) < 50


def test_times_caps_the_total_number_of_fires() -> None:
    """`times: 2` with p=1 fires exactly twice over all subjects."""
    injector = FaultInjector(FaultProfile(read_5xx=FaultRule(p=1.0, times=2)), seed=0)
    fired = [injector.fires("read_5xx", f"wf{n}") for n in range(5)]
    assert fired == [True, True, False, False, False]


def test_load_faults_reads_yaml_and_json(tmp_path: Path) -> None:
    """A profile file maps kinds to a probability or to {p, times, statuses, delay_s, fraction}."""
    yaml_file = tmp_path / "faults.yaml"
    yaml_file.write_text(
        "submit_5xx_after: {p: 1, times: 1}\nslow: {p: 0.1, delay_s: 3}\nstep_fail: 0.25\n"
    )
    json_file = tmp_path / "faults.json"
    json_file.write_text(json.dumps({"blob_5xx": {"p": 0.5, "statuses": [503]}}))
    profile = load_faults(yaml_file)
    assert profile.submit_5xx_after == FaultRule(p=1.0, times=1)
    assert (profile.slow.p, profile.slow.delay_s) == (0.1, 3)
    assert profile.step_fail.p == 0.25
    assert load_faults(json_file).blob_5xx.statuses == (503,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step_fial: 0.1\n", "unknown fault kind 'step_fial'"),
        ("step_fail: {p: 2}\n", "p=2 is out of range"),
        ("step_fail: {p: 0.1, when: now}\n", "unknown field(s) when"),
        ("- 1\n", "a fault profile is a mapping"),
    ],
)
def test_load_faults_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """A bad profile file fails with a message naming the file, the field and what is allowed."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml") as info:
        load_faults(path)
    assert message in str(info.value)
