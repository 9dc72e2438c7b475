"""Engine pieces that need no emulator: reservations follow the service's price."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx

from runner.api._client import Client
from runner.api._models import Workflow, parse_workflow
from runner.engine._engine import Engine, EngineConfig
from runner.engine._outcomes import charge_of, outcome_of
from runner.engine._submitter import shape_of
from runner.store._rows import Attempt, AttemptState


def attempt(**request: object) -> Attempt:
    base: dict[str, object] = {"model": "turbo", "prompt": "p", "width": 1024, "height": 1024,
                               "steps": 9, "quantity": 1, "seed": 1}  # fmt: skip
    base.update(request)
    return Attempt(1, "ab" * 16, 1, "zb-x-a1", AttemptState.PLANNED, 0, 0, None, "turbo", base, 8)


def whatif_body(total: int) -> dict[str, object]:
    return {
        "id": None, "status": "unassigned", "createdAt": "2026-01-01T00:00:00Z",
        "cost": {"base": 0, "total": total, "tips": {"civitai": 0, "creators": 0}},
        "steps": [], "tags": [], "metadata": {}, "arguments": {}, "callbacks": [],
        "tips": {"civitai": 0, "creators": 0}, "upgradeMode": "manual", "currencies": [],
        "forceRefunded": False,
    }  # fmt: skip


async def test_reservation_is_the_higher_of_formula_and_whatif(tmp_path: Path) -> None:
    """A service price above the formula (say, LoRA fees) is what gets reserved; one whatif
    per shape, and never with an externalId."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        assert "externalId" not in body
        assert request.url.params["whatif"] == "true"
        return httpx.Response(
            200, json=whatif_body(50 if body["steps"][0]["input"].get("loras") else 3)
        )

    with anyio.fail_after(5):
        async with Client(
            base_url="http://api", token="t", transport=httpx.MockTransport(handler)
        ) as client:
            engine = Engine(None, client, EngineConfig(tag="zbatch:t", out_dir=tmp_path))  # type: ignore[arg-type]
            submitter = engine.submitter
            assert await submitter.estimate(attempt()) == 8  # the formula wins over 3
            assert await submitter.estimate(attempt(seed=2)) == 8  # same shape: no new call
            with_lora = attempt(loras={"urn:air:zImage:lora:civitai:1@2": 0.8})
            assert await submitter.estimate(with_lora) == 50
    assert len(seen) == 2


def test_shape_ignores_prompt_and_seed_but_not_size_or_loras() -> None:
    a = attempt()
    assert shape_of(a.request) == shape_of(attempt(prompt="other", seed=9).request)
    assert shape_of(a.request) != shape_of(attempt(width=512).request)
    assert shape_of(a.request) != shape_of(attempt(loras={"urn:air:a:b:c:1": 1.0}).request)


def test_outcomes_and_charges_from_terminal_workflows() -> None:
    def wf(status: str, *, debit: int, credit: int, errors: list[str] | None = None) -> Workflow:
        body = whatif_body(8) | {"id": "w", "status": status}
        body["transactions"] = {"list": [
            {"type": "debit", "amount": debit, "accountType": "yellow"},
            {"type": "credit", "amount": credit, "accountType": "yellow"},
        ]}  # fmt: skip
        body["steps"] = [{"$type": "imageGen", "name": "$0", "priority": "normal",
                          "status": status, "metadata": {}, "input": {},
                          "output": {"images": [], "errors": errors}}]  # fmt: skip
        return parse_workflow(body)

    failed = wf("failed", debit=8, credit=8)
    assert (outcome_of(failed), charge_of(failed, fallback_buzz=8, final=True)) == (
        AttemptState.FAILED, 0)  # fmt: skip
    blocked = wf("failed", debit=8, credit=8, errors=["blocked"])
    assert outcome_of(blocked) is AttemptState.BLOCKED
    done = wf("succeeded", debit=8, credit=0)
    assert (outcome_of(done), charge_of(done, fallback_buzz=1, final=True)) == (
        AttemptState.SUCCEEDED, 8)  # fmt: skip
