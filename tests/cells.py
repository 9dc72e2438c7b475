"""Rows for tests: planned cells (a 64x64 turbo request per number) and pending images.

A planned cell is the `PlanRow` production plans (`grid.store_rows` -> `Store.plan_rows`),
its JSON spelled by the same `identity.record_json`; a test that needs a manifest's cells
plans `grid.store_rows(manifest)` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.api._models import Workflow
from runner.identity import PlanRow, record_json
from runner.store._rows import PendingImage


def planned_cell(
    key: str,
    request: Mapping[str, Any],
    *,
    estimate_buzz: int,
    variables: Mapping[str, str] | None = None,
    replica: int = 0,
    model: str | None = None,
) -> PlanRow:
    """A cell to plan: `key`, `request`, its variables; `model` is the request's by default."""
    return PlanRow(
        key=key,
        replica=replica,
        model=model or str(request["model"]),
        request_json=record_json(dict(request)),
        vars_json=record_json(dict(variables or {})),
        estimate_buzz=estimate_buzz,
    )


def turbo_cell(n: int, *, estimate_buzz: int, model: str = "turbo") -> PlanRow:
    """Cell `n`: key `n` as 32 hex digits, prompt `p<n>`, seed `n`, no variables."""
    request = {"model": model, "prompt": f"p{n}", "width": 64, "height": 64, "seed": n}
    return planned_cell(f"{n:032x}", request, estimate_buzz=estimate_buzz)


def first_image(wf: Workflow, request: Mapping[str, Any], *, cell_key: str) -> PendingImage:
    """The first image of a just-submitted workflow, as attempt 1 waiting for its download."""
    assert wf.id is not None
    return PendingImage(
        attempt_id=1,
        index=0,
        blob_id=wf.images[0].blob_id,
        cell_key=cell_key,
        workflow_id=wf.id,
        request=dict(request),
    )


# A createImage input as a client sends it: the service fills in the rest.
FOX_INPUT: Mapping[str, Any] = {
    "engine": "sdcpp",
    "ecosystem": "zImage",
    "model": "turbo",
    "operation": "createImage",
    "prompt": "a fox in the snow",
    "width": 64,
    "height": 64,
}
