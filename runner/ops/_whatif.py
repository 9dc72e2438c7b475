"""`zbatch plan --whatif`: the API's own price of each distinct shape of a plan.

The plan itself is pure (`runner.plan`); this asks the service, so it lives with the other
operations that talk to it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace

import anyio

from runner.api import Client
from runner.engine import Backoff, retrying
from runner.manifest import Manifest
from runner.plan import WHATIF, Plan, Shape, check_prices, make_plan

WHATIF_TRIES = 5  # per shape; a whatif spends nothing, so asking again is always safe


async def whatif_prices(
    plan: Plan,
    client: Client,
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> dict[Shape, int]:
    """Ask the API for the exact price of each distinct shape: one `whatif=True` submit each.

    Each preview sends the first cell of that shape *without* an externalId: a whatif
    carrying a cell's key would burn it (the service would hand the preview back to the real
    submit instead of running it; civitai-api.md §11). Nothing is spent, so a retryable
    failure (429, 5xx, a dropped connection) is simply asked again, up to `WHATIF_TRIES`.
    """
    prices: dict[Shape, int] = {}
    for cost in plan.shapes:
        step = {"$type": "imageGen", "input": dict(plan.samples[cost.shape])}
        preview = await retrying(
            functools.partial(client.submit, [step], whatif=True),
            backoff=backoff or Backoff(),
            what=f"whatif {cost.shape.label}",
            max_tries=WHATIF_TRIES,
            sleep=sleep,
        )
        if preview.cost_total is None:
            raise ValueError(f"the whatif preview of {cost.shape.label} carries no cost.total")
        prices[cost.shape] = preview.cost_total
    return prices


async def plan_with_whatif(manifest: Manifest, client: Client) -> Plan:
    """`make_plan`, then the API's prices: re-planned with them when any differs (budget fit)."""
    plan = make_plan(manifest)
    prices = await whatif_prices(plan, client)
    checks = check_prices(plan, prices)
    if any(c.differs for c in checks):
        plan = make_plan(manifest, prices=prices)
    return replace(plan, prices=WHATIF, checks=checks)
