"""`zbatch retry`: new attempts for chosen cells only, then the batch runs them under its cap.

No manifest is needed: the record holds every cell's request and the batch's tag. The
chosen cells get attempt n+1 (a new externalId) and become the only cells the run may
submit (`Store.retry_cells`); succeeded cells with every image on disk are never chosen,
blocked and rejected ones only when named with `--cell`. Then the engine runs as in
`zbatch run`: it also finishes what an interrupted run left in flight and downloads pending
images, but submits nothing for any other cell. A retry lifts `zbatch cancel`.

It runs with the batch's recorded run settings (`Store.run_settings`: the captions, limits
and attempts `zbatch run` saved from the manifest); a flag overrides one. A record made
before they were kept uses `LEGACY_SETTINGS`, today's defaults, and says so once
(`batch_settings`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import structlog

from runner.api import Client
from runner.dataset import HERE, RecordAt, open_record
from runner.disk import sweep_batch_temps
from runner.engine import Engine, EngineConfig
from runner.ops._run import (
    ProgressHook,
    RunOutcome,
    Target,
    cap_reached,
    drive,
    read_outcome,
    with_client,
)
from runner.ops._token import has_token, no_token
from runner.store import PlanResult, RetryPlan, RunSettings, Store, retry_preview

log = structlog.get_logger(__name__)
DEFAULT_STATES = ("failed", "expired", "lost")
_ENGINE_DEFAULTS = EngineConfig(tag="", out_dir=Path())
# What a record made before the run settings were kept runs with: the behaviour of the
# zbatch that made it (no captions, the engine's default pace, one attempt per retry).
LEGACY_SETTINGS = RunSettings(
    captions="none",
    in_flight=_ENGINE_DEFAULTS.in_flight,
    submit_per_s=_ENGINE_DEFAULTS.submit_per_s,
    downloads=_ENGINE_DEFAULTS.downloads,
    attempts=1,
)


@dataclass(frozen=True)
class RetrySettings:
    """What to retry and how: the command line of `zbatch retry`."""

    states: Collection[str] = ()  # empty: DEFAULT_STATES, or with `cells` any state
    cells: Sequence[str] = ()
    budget_buzz: int | None = None  # a new cap (the batch's cap otherwise)
    # Overrides of the batch's run settings (None: the batch's own)
    attempts: int | None = None  # attempts per chosen cell in this retry
    in_flight: int | None = None
    submit_per_s: float | None = None
    downloads: int | None = None
    captions: str | None = None
    give_up_after_s: float | None = None  # `--give-up-after`, as `zbatch run` has it

    def over(self, recorded: RunSettings) -> RunSettings:
        """The settings this retry runs with: `recorded`, with each flag given in its place."""
        return replace(
            recorded,
            captions=self.captions or recorded.captions,
            in_flight=self.in_flight or recorded.in_flight,
            submit_per_s=self.submit_per_s or recorded.submit_per_s,
            downloads=self.downloads or recorded.downloads,
            attempts=self.attempts or recorded.attempts,
        )


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
    at: RecordAt = HERE,
) -> RetryOutcome:
    """Choose the cells, record their new attempts, then run the batch; see above. `at`:
    the batch's record (OUT/batch.sqlite by default); the images are written under `out`."""
    async with await open_record(out, at, read_only=False) as store:
        info = await store.batch_info()
        using = settings.over(await batch_settings(store, "zbatch retry"))
        plan = await store.retry_cells(
            states=settings.states or (() if settings.cells else DEFAULT_STATES),
            cells=settings.cells,
            attempts=using.attempts,
            cap_buzz=settings.budget_buzz,
        )
        log.info("cells_retried", chosen=len(plan.chosen), skipped=len(plan.skipped))
        if not plan.chosen:
            return RetryOutcome(plan, None)
        config = EngineConfig(
            tag=info.tag,
            out_dir=out,
            in_flight=using.in_flight,
            submit_per_s=using.submit_per_s,
            downloads=using.downloads,
            runtime_scale=runtime_scale,
            **dict(tuning or {}),
        )
        if settings.give_up_after_s is not None:
            config = replace(config, give_up_after_s=settings.give_up_after_s)
        log.info("retry_settings", **asdict(using))
        await anyio.to_thread.run_sync(sweep_batch_temps, out)
        engine = Engine(store, client, config)
        stats = await drive(
            engine,
            len(plan.chosen),
            handle_signals=handle_signals,
            progress=progress,
            captions=using.captions,
        )
        planned = PlanResult(added=0, kept=await store.cell_total(), removed=0)
        run = await read_outcome(store, planned, stats)  # counted by cell, as `run`'s
    capped = cap_reached(run, command=f"zbatch retry {out}")
    if capped is not None:
        raise capped
    return RetryOutcome(plan, run)


async def batch_settings(store: Store, command: str) -> RunSettings:
    """The run settings `store`'s batch recorded; for a record made before they were kept,
    `LEGACY_SETTINGS`, with one warning that names them (`command` is who asks)."""
    recorded = await store.run_settings()
    if recorded is not None:
        return recorded
    log.warning(
        "run_settings_not_recorded",
        command=command,
        uses=LEGACY_SETTINGS.describe(),
        detail=f"this batch was recorded by an older zbatch without its manifest's captions,"
        f" limits and retries: {command} uses {LEGACY_SETTINGS.describe()} (flags override"
        " them; the next `zbatch run MANIFEST` records the manifest's)",
    )
    return LEGACY_SETTINGS


async def _offline_retry(out: Path, settings: RetrySettings, at: RecordAt) -> RetryOutcome:
    """A retry without a token: nothing chosen, or the missing token raised."""
    states = settings.states or (() if settings.cells else DEFAULT_STATES)
    async with await open_record(out, at) as store:
        chosen, plan = await retry_preview(store, states=states, cells=settings.cells)
    if chosen:
        raise no_token("zbatch retry", f"{chosen} cells to submit again")
    return RetryOutcome(plan, None)


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
    target: Target = Target(),
    progress: ProgressHook | None = None,
    at: RecordAt = HERE,
) -> RetryOutcome:
    """`zbatch retry` against `target`. Blocking, like `execute`: it owns the event loop.

    Without a token it asks the record first (`retry_preview`, read only): when no cell would
    be chosen it returns that, having touched nothing; otherwise it raises the missing token
    (`no_token`). The CLI's `--emulator` restores the emulator the batch was made on, when
    its state was kept in the batch folder (docs/emulator.md).
    """
    if not has_token(target):
        return anyio.run(_offline_retry, out, settings, at, backend="asyncio")

    async def work(client: Client, runtime_scale: float) -> RetryOutcome:
        return await retry_batch(
            out,
            client,
            settings,
            runtime_scale=runtime_scale,
            handle_signals=True,
            progress=progress,
            at=at,
        )

    return with_client(work, target)
