"""A batch from a manifest: plan its cells into the store, then run the engine to the end.

`zbatch run` is `run_batch`: create or resume `<out>/batch.sqlite`, add the manifest's cells
(known cells keep their record; cells no longer in the manifest are reported, not dropped),
and drive the engine until every cell is finished and every image is on disk, or the Buzz
cap, a stop or a fatal error ends the run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from runner import __version__
from runner.api import Client
from runner.dataset import refresh_dataset
from runner.disk import OutFolder, sweep_batch_temps
from runner.engine import Backoff, Engine, EngineConfig, RunStats
from runner.errors import CapReached, ManifestChanged, ServiceOutage, StoreError
from runner.grid import store_rows
from runner.identity import KEY_VERSION, batch_tag
from runner.manifest import Manifest
from runner.ops._adopt import AdoptReport, adopt_workflows
from runner.ops._sample import choose_sample
from runner.store import (
    BatchInfo,
    Budget,
    Comparison,
    PlanResult,
    RunSettings,
    Store,
    Tally,
    fetch_again,
    open_store,
    recorded_files,
    tally,
)

log = structlog.get_logger(__name__)
DATASET_EVERY_S = 30.0
FILES_PAGE = 5_000  # recorded images whose files one thread call stats
ProgressHook = Callable[[Engine, int], Coroutine[Any, Any, None]]  # (engine, cells in the manifest)


@dataclass(frozen=True)
class RunOverrides:
    """Command-line settings that win over the manifest's."""

    budget_buzz: int | None = None
    in_flight: int | None = None
    submit_per_s: float | None = None
    downloads: int | None = None
    adopt: bool = False  # `--adopt`: record the batch's workflows found on the service first
    give_up_after_s: float | None = None  # `--give-up-after`: how long an outage is waited out
    # `--replace` ("replaced") or `--keep` ("kept"): what becomes of the cells the last
    # manifest listed and this one does not; None refuses such a manifest (ManifestChanged)
    leftover: str | None = None
    sample: int | None = None  # `--sample N`: only N cells spread across every axis run
    # `--store` / ZBATCH_STORE: the batch's record in PostgreSQL (a postgresql:// URL) rather
    # than OUT/batch.sqlite; kept out of repr: the URL may hold a password
    store: str | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: what it planned, what it did, and what the ledger says now."""

    plan: PlanResult
    stats: RunStats
    budget: Budget
    counts: dict[str, int]
    unsubmitted: int  # cells with a planned attempt left
    unsubmitted_buzz: int  # their estimated cost
    adopted: AdoptReport | None = None  # with --adopt: what was found under the batch's tag
    canceled_at: str | None = None  # `zbatch cancel` stopped the batch: nothing was submitted
    set_aside: Path | None = None  # --adopt: where a damaged batch.sqlite was moved
    sampled: int | None = None  # --sample: how many cells the sample ran
    # The batch counted by cell (`store.tally`): what the summary counts, as status does.
    # None only in a RunOutcome made by hand; `read_outcome` always reads it.
    tally: Tally | None = None
    refetched: int = 0  # images of succeeded cells missing from disk, fetched again


def plan_fingerprint(manifest: Manifest) -> str:
    """A hash of everything that decides the manifest's cells, their order, prices and
    attempts (prompt files are already read into the axes). Equal fingerprints expand to the
    same cells; a spurious difference only costs a re-plan."""
    decisive = (
        __version__,
        KEY_VERSION,
        manifest.name,
        manifest.seed_base,
        manifest.defaults,
        manifest.models,
        manifest.axes,
        manifest.constants,
        manifest.include,
        manifest.exclude,
        manifest.repeat,
        manifest.retries.attempts,
    )
    return hashlib.sha256(repr(decisive).encode()).hexdigest()


def manifest_sha256(manifest: Manifest) -> str:
    return hashlib.sha256(manifest.path.read_bytes()).hexdigest()


async def run_batch(
    manifest: Manifest,
    client: Client,
    *,
    overrides: RunOverrides = RunOverrides(),
    runtime_scale: float = 1.0,
    handle_signals: bool = False,
    tuning: Mapping[str, Any] | None = None,
    progress: ProgressHook | None = None,
) -> RunOutcome:
    """Create or resume the manifest's batch and run it; see the module docstring.

    `tuning` sets further EngineConfig fields (poll and backoff timings, for tests). Raises
    `CapReached`, with the run's `RunOutcome` as its `outcome`, when the Buzz cap stopped the
    batch, and `ServiceOutage` (with its `outcome` too) when an outage outlasted
    `give_up_after_s`; any other error that stops the run is raised as itself (`Engine.run`).
    """
    out = manifest.out
    config = engine_config(manifest, overrides, runtime_scale, tuning)
    # --adopt rebuilds the record from the service, so a damaged database is moved aside
    # (kept) rather than refused (docs/reliability.md, "The local machine").
    location = overrides.store or OutFolder(out).db
    async with await open_store(location, set_aside_damaged=overrides.adopt) as store:
        planned, canceled_at = await plan_batch(store, manifest, config.tag, overrides)
        cells, sampled = planned.added + planned.kept, None
        if overrides.sample is not None and canceled_at is None:
            cells = sampled = await focus_sample(store, manifest, overrides.sample)
        config = dataclasses.replace(config, tag=(await store.batch_info()).tag)  # a rename
        adopted = None
        if overrides.adopt:  # operations: the workflows the service already has for the batch
            backoff = Backoff(config.backoff_base_s, config.backoff_cap_s)
            adopted = await adopt_workflows(store, client, config.tag, backoff=backoff)
        refetched = await tidy_out(store, out)
        engine = Engine(store, client, config)
        try:
            stats = await drive(
                engine,
                cells,
                handle_signals=handle_signals,
                progress=progress,
                captions=manifest.captions,
            )
        except ServiceOutage as exc:  # resumable: the summary says what the run did
            exc.outcome = await read_outcome(
                store, planned, engine.stats, adopted=adopted, refetched=refetched
            )
            raise
        outcome = await read_outcome(
            store, planned, stats, adopted=adopted, canceled_at=canceled_at, sampled=sampled,
            refetched=refetched,
        )  # fmt: skip
    capped = cap_reached(outcome, command=f"zbatch run {manifest.path}")
    if capped is not None:
        raise capped
    return outcome


async def tidy_out(store: Store, out: Path) -> int:
    """Before the engine starts: the temp files an interrupted write left are removed, and
    images whose file is gone are fetched again (`missing_images`); returns how many."""
    swept = await anyio.to_thread.run_sync(sweep_batch_temps, out)
    if swept:
        log.info("stray_temp_files_removed", count=swept)
    return await missing_images(store, out)


async def missing_images(store: Store, out: Path) -> int:
    """Images the record says are on disk whose file is gone (deleted, a folder moved): they
    become pending again, so this run's downloaders fetch them from the service (the
    workflow's blob), or record them lost with the reason. A stat per recorded image, in a
    worker thread, a page at a time. Returns how many were missing."""
    missing = 0
    after = (0, -1)
    while page := await recorded_files(store, after, FILES_PAGE):
        after = page[-1][:2]
        gone = await anyio.to_thread.run_sync(_files_gone, out, page)
        if gone:
            missing += await fetch_again(store, gone)
    if missing:
        log.warning("images_missing_from_disk", count=missing, action="fetching them again")
    return missing


def _files_gone(out: Path, page: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    return [(attempt_id, index) for attempt_id, index, path in page if not (out / path).is_file()]


def engine_config(
    manifest: Manifest,
    overrides: RunOverrides,
    runtime_scale: float,
    tuning: Mapping[str, Any] | None,
) -> EngineConfig:
    """How the engine runs the manifest's batch: its limits, unless a flag overrides them."""
    limits = manifest.limits
    config = EngineConfig(
        tag=batch_tag(manifest.name),
        out_dir=manifest.out,
        in_flight=overrides.in_flight or limits.in_flight,
        submit_per_s=overrides.submit_per_s or limits.submit_per_s,
        downloads=overrides.downloads or limits.downloads,
        runtime_scale=runtime_scale,
        **dict(tuning or {}),
    )
    if overrides.give_up_after_s is not None:
        config = dataclasses.replace(config, give_up_after_s=overrides.give_up_after_s)
    return config


async def plan_batch(
    store: Store, manifest: Manifest, tag: str, overrides: RunOverrides
) -> tuple[PlanResult, str | None]:
    """Record the batch and add the manifest's cells, unless `zbatch cancel` stopped it (then
    nothing is planned). Returns what was planned and when the batch was canceled.

    A manifest that leaves cells of the last one behind, or renames the batch, is refused
    (`ManifestChanged`, before anything is written) unless `overrides.leftover` says what
    becomes of them."""
    canceled_at = await store.canceled_at()  # operations: a canceled batch is not planned
    fingerprint = plan_fingerprint(manifest)
    known = await store.plan_is_current(fingerprint)
    previous = await recorded_batch(store)
    if previous is not None and overrides.leftover is None:
        await refuse_changes(
            store, manifest, previous, compare=canceled_at is None and known is None
        )
    await store.init_batch(
        name=manifest.name,
        tag=tag,
        cap_buzz=overrides.budget_buzz,
        manifest_cap_buzz=manifest.budget_buzz,
        manifest_sha256=manifest_sha256(manifest),
        rename=overrides.leftover is not None,
    )
    await store.save_run_settings(run_settings(manifest))  # for retry, verify --repair
    if canceled_at is None:
        if known is not None:  # a resume of an unchanged manifest: no cell to add
            planned = known
        else:
            planned = await store.plan_rows(
                store_rows(manifest),
                max_attempts=manifest.retries.attempts,
                leftover=overrides.leftover,
            )
            await store.set_plan_fingerprint(fingerprint)
    else:
        planned = PlanResult(added=0, kept=await store.cell_total(), removed=0)
        log.warning("batch_canceled", canceled_at=canceled_at, lift="zbatch retry OUT")
    log.info("batch_planned", added=planned.added, kept=planned.kept, removed=planned.removed)
    return planned, canceled_at


async def focus_sample(store: Store, manifest: Manifest, n: int) -> int:
    """`--sample N`: only N cells spread across every axis stay submittable (`choose_sample`);
    the cells they are, under the same record, so a later full run reuses them."""
    keys = choose_sample(store_rows(manifest), n)
    await store.focus(keys)
    log.info("batch_sampled", cells=len(keys), of=n)
    return len(keys)


async def recorded_batch(store: Store) -> BatchInfo | None:
    """The batch row the record holds, or None for a new record."""
    try:
        return await store.batch_info()
    except StoreError:
        return None


async def compare_batch(store: Store, manifest: Manifest) -> Comparison:
    """The manifest's cells against the batch's (`zbatch plan`, and `run` before it plans)."""
    return await store.compare(store_rows(manifest))


async def refuse_changes(
    store: Store, manifest: Manifest, previous: BatchInfo, *, compare: bool
) -> None:
    """Raise `ManifestChanged` when `manifest` renames the batch, or (with `compare`) leaves
    cells the last manifest listed behind; nothing is written either way."""
    comparison = await compare_batch(store, manifest) if compare else None
    left = comparison.left_behind if comparison is not None else 0
    renamed = previous.name != manifest.name
    if not renamed and not left:
        return
    what = []
    if renamed:
        what.append(f"it names the batch {manifest.name!r}, and the folder holds {previous.name!r}")
    if comparison is not None and left:
        what.append(
            f"it leaves {left} cells of the last manifest behind and adds {comparison.new}"
            f" new cells (about {comparison.new_buzz} Buzz)"
        )
    raise ManifestChanged(
        f"{manifest.path} changes the batch in {manifest.out}: {'; '.join(what)}. Nothing"
        f" was submitted. `zbatch plan {manifest.path}` compares the two. Run again with"
        " --replace (the cells left behind leave the dataset; their images stay on disk and"
        " in the record) or --keep (both stay; each dataset row names its manifest"
        " revision), or give the manifest another `out`"
    )


def run_settings(manifest: Manifest) -> RunSettings:
    """The settings `manifest` declares (its own defaults where it names none), as the batch
    keeps them for the commands that run it later (`retry`, `verify --repair`)."""
    limits = manifest.limits
    return RunSettings(
        captions=manifest.captions,
        in_flight=limits.in_flight,
        submit_per_s=limits.submit_per_s,
        downloads=limits.downloads,
        attempts=manifest.retries.attempts,
        caption_template=manifest.caption_template,
    )


async def read_outcome(
    store: Store,
    planned: PlanResult,
    stats: RunStats,
    *,
    adopted: AdoptReport | None = None,
    canceled_at: str | None = None,
    sampled: int | None = None,
    refetched: int = 0,
) -> RunOutcome:
    """How the run ended, read from the store once the engine has stopped."""
    unsubmitted, unsubmitted_buzz = await store.unsubmitted()
    return RunOutcome(
        plan=planned,
        stats=stats,
        budget=await store.budget(),
        counts=await store.counts(),
        unsubmitted=unsubmitted,
        unsubmitted_buzz=unsubmitted_buzz,
        adopted=adopted,
        canceled_at=canceled_at,
        set_aside=store.set_aside,
        sampled=sampled,
        tally=await tally(store),
        refetched=refetched,
    )


def cap_reached(outcome: RunOutcome, *, command: str) -> CapReached | None:
    """The `CapReached` a run the Buzz cap stopped ends with (its `outcome` attached), or
    None. `command` is what runs the batch again (`zbatch run MANIFEST`); the message adds
    the `--budget` that would let it submit every cell left."""
    if not outcome.stats.cap_reached:
        return None
    b = outcome.budget
    finish_buzz = b.committed_buzz + outcome.unsubmitted_buzz
    return CapReached(
        f"the Buzz cap of {b.cap_buzz} stopped the batch: {b.charged_buzz} Buzz charged and"
        f" {b.reserved_buzz} reserved; {outcome.unsubmitted} cells not submitted, about"
        f" {outcome.unsubmitted_buzz} Buzz. To resume, raise the cap: `{command} --budget"
        f" {finish_buzz}` (retries may need more); nothing is submitted twice",
        outcome=outcome,
    )


async def drive(
    engine: Engine,
    cells: int,
    *,
    handle_signals: bool,
    progress: ProgressHook | None,
    captions: str,
) -> RunStats:
    """Run the engine to its end, with the live display when asked, keeping the dataset
    (`metadata.jsonl`, captions) current while it runs and whole once it ends.

    The display and the refresh run in the engine's task group, so an error of theirs
    stops the run as the engine's own errors do, and is raised as `Engine.run` raises them.
    """
    out = engine.config.out_dir

    async def first_image() -> None:
        while not engine.stats.images_downloaded:
            changed = engine.changes.notice()  # the downloader notifies after each image
            if engine.stats.images_downloaded:
                return
            await changed.wait()

    keep = functools.partial(keep_dataset_current, engine.store, out, captions, first_image)
    companions = [keep]
    if progress is not None:
        companions.append(functools.partial(progress, engine, cells))
    stats = await engine.run(handle_signals=handle_signals, companions=companions)
    rows = await refresh_dataset(engine.store, out, captions=captions, rebuild=True)
    log.info("dataset_written", rows=rows, path=str(OutFolder(out).metadata))
    return stats


async def keep_dataset_current(
    store: Store,
    out: Path,
    captions: str,
    first_image: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Write the dataset as soon as `first_image` returns (the run's first image is on disk),
    then every DATASET_EVERY_S, or 20 times its last duration when longer (a refresh of a
    million rows takes seconds: it must never crowd out the run).

    A disk that refuses the refresh (full, read-only) raises, which stops the run as a
    refused image would: images written now could not be listed, and the next would fail
    the same way.
    """
    every_s = DATASET_EVERY_S
    if first_image is not None:
        await first_image()
        started = anyio.current_time()
        await refresh_dataset(store, out, captions=captions)
        every_s = max(DATASET_EVERY_S, 20 * (anyio.current_time() - started))
    while True:
        await anyio.sleep(every_s)
        started = anyio.current_time()
        await refresh_dataset(store, out, captions=captions)
        every_s = max(DATASET_EVERY_S, 20 * (anyio.current_time() - started))


@dataclass(frozen=True)
class Target:
    """Where a command's API calls go: the service (or `$CIVITAI_API_BASE_URL`) with the token
    from the environment by default; the CLI's `--emulator` gives an embedded emulator's URL,
    its token, and its time scale (which scales the expected runtimes the engine waits by)."""

    base_url: str | None = None
    token: str | None = None
    runtime_scale: float = 1.0


def execute(
    manifest: Manifest,
    *,
    overrides: RunOverrides = RunOverrides(),
    target: Target = Target(),
    progress: ProgressHook | None = None,
) -> RunOutcome:
    """`zbatch run` against `target`. Blocking: it owns the event loop (`with_client`)."""

    async def work(client: Client, runtime_scale: float) -> RunOutcome:
        return await run_batch(
            manifest,
            client,
            overrides=overrides,
            runtime_scale=runtime_scale,
            handle_signals=True,
            progress=progress,
        )

    return with_client(work, target)


T = TypeVar("T")


def with_client(work: Callable[[Client, float], Awaitable[T]], target: Target) -> T:
    """Run `work(client, runtime_scale)` on its own event loop (anyio on asyncio), with a
    client for `target`, closed after. A service that does not answer at all is refused
    first (`ServiceUnreachable`, naming the URL), before the batch's record is touched."""

    async def go() -> T:
        async with Client(base_url=target.base_url, token=target.token) as client:
            await client.check_reachable()
            return await work(client, target.runtime_scale)

    return anyio.run(go, backend="asyncio")
