"""`zbatch retry`: new attempts for chosen cells only, then the batch runs them under its cap.

No manifest is needed: the record holds every cell's request and the batch's tag. The
chosen cells get attempt n+1 (a new externalId) and become the only cells the run may
submit (`Store.retry_cells`); succeeded cells with every image on disk are never chosen,
blocked and rejected ones only when named with `--cell`. Then the engine runs as in
`zbatch run`: it also finishes what an interrupted run left in flight and downloads pending
images, but submits nothing for any other cell. A retry lifts `zbatch cancel`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from runner.api._client import Client
from runner.disk._atomic import sweep_batch_temps
from runner.disk._out_folder import OutFolder
from runner.engine._engine import Engine, EngineConfig
from runner.ops._run import (
    EmulatorOptions,
    ProgressHook,
    RunOutcome,
    drive,
    with_client,
)
from runner.store._rows import PlanResult, RetryPlan
from runner.store._store import Store

log = structlog.get_logger(__name__)
DEFAULT_STATES = ("failed", "expired", "lost")


@dataclass(frozen=True)
class RetrySettings:
    """What to retry and how: the command line of `zbatch retry`."""

    states: Collection[str] = ()  # empty: DEFAULT_STATES, or with `cells` any state
    cells: Sequence[str] = ()
    attempts: int = 1  # attempts per chosen cell in this retry
    budget_buzz: int | None = None  # a new cap (the batch's cap otherwise)
    in_flight: int | None = None
    submit_per_s: float | None = None


@dataclass(frozen=True)
class RetryOutcome:
    """What the retry chose, and how the run that followed ended (None: nothing chosen)."""

    plan: RetryPlan
    run: RunOutcome | None


async def retry_batch(
    out: Path,
    client: Client,
    settings: RetrySettings,
    *,
    runtime_scale: float = 1.0,
    handle_signals: bool = False,
    tuning: Mapping[str, Any] | None = None,
    progress: ProgressHook | None = None,
) -> RetryOutcome:
    """Choose the cells, record their new attempts, then run the batch; see above."""
    async with await Store.open(OutFolder(out).existing_db()) as store:
        info = await store.batch_info()
        plan = await store.retry_cells(
            states=settings.states or (() if settings.cells else DEFAULT_STATES),
            cells=settings.cells,
            attempts=settings.attempts,
            cap_buzz=settings.budget_buzz,
        )
        log.info("cells_retried", chosen=len(plan.chosen), skipped=len(plan.skipped))
        if not plan.chosen:
            return RetryOutcome(plan, None)
        defaults = EngineConfig(tag=info.tag, out_dir=out)
        config = EngineConfig(
            tag=info.tag,
            out_dir=out,
            in_flight=settings.in_flight or defaults.in_flight,
            submit_per_s=settings.submit_per_s or defaults.submit_per_s,
            runtime_scale=runtime_scale,
            **dict(tuning or {}),
        )
        await anyio.to_thread.run_sync(sweep_batch_temps, out)
        engine = Engine(store, client, config)
        stats = await drive(
            engine,
            len(plan.chosen),
            handle_signals=handle_signals,
            progress=progress,
            captions="none",  # the batch row does not keep the manifest's captions setting
        )
        unsubmitted, unsubmitted_buzz = await store.unsubmitted()
        run = RunOutcome(
            plan=PlanResult(added=0, kept=await store.cell_total(), removed=0),
            stats=stats,
            budget=await store.budget(),
            counts=await store.counts(),
            unsubmitted=unsubmitted,
            unsubmitted_buzz=unsubmitted_buzz,
        )
        return RetryOutcome(plan, run)


def render_retry(plan: RetryPlan, *, listed: int = 20) -> str:
    """What the retry chose and left alone, before the run's summary."""
    kinds: dict[str, int] = {}
    for choice in plan.chosen:
        kinds[choice.was] = kinds.get(choice.was, 0) + 1
    by_kind = " · ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    lines = [f"retry       {len(plan.chosen)} cells get a new attempt: {by_kind}"]
    named = [c for c in plan.chosen if c.was in ("blocked", "rejected")]
    for choice in named[:listed]:
        lines.append(
            f"            {choice.cell_key} was {choice.was}: retried only because --cell named it"
        )
    for key, why in list(plan.skipped.items())[:listed]:
        lines.append(f"not retried {key}: {why}")
    if plan.canceled_lifted:
        lines.append("cancel      lifted: the batch submits again")
    return "\n".join(lines)


def execute_retry(
    out: Path,
    settings: RetrySettings,
    *,
    api_url: str | None = None,
    emulator: EmulatorOptions | None = None,
    progress: ProgressHook | None = None,
) -> RetryOutcome:
    """`zbatch retry`: against the API (token from the environment) or an embedded emulator.

    Blocking, like `batch.execute`: it owns the event loop and, with `emulator`, the
    emulator's server thread. An embedded emulator knows none of the batch's earlier
    workflows; it suits the demo, not a real batch.
    """

    async def work(client: Client, runtime_scale: float) -> RetryOutcome:
        return await retry_batch(
            out,
            client,
            settings,
            runtime_scale=runtime_scale,
            handle_signals=True,
            progress=progress,
        )

    return with_client(work, api_url=api_url, emulator=emulator)
