"""Rows for tests: planned cells (a 64x64 turbo request per number) and pending images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.api._models import Workflow
from runner.store._rows import CellRow, PendingImage


def turbo_cell(n: int, *, estimate_buzz: int) -> CellRow:
    """Cell `n`: key `n` as 32 hex digits, prompt `p<n>`, seed `n`, no variables."""
    return CellRow(
        key=f"{n:032x}",
        replica=0,
        model="turbo",
        request={"model": "turbo", "prompt": f"p{n}", "width": 64, "height": 64, "seed": n},
        vars={},
        estimate_buzz=estimate_buzz,
    )


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
