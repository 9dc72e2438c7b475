"""`run_batch` end to end against the emulator: every paid image on disk, nothing twice,
the cap held, with and without faults, in-process and over a real socket."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    load_faults,
    make_app,
    running_server,
)
from runner.emulator.service import Emulator
from runner.errors import AuthError, CapReached, FundsError
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import RunOutcome, RunOverrides, run_batch
from runner.store._store import Store
from tests.services import StoreBackend

ROOT = Path(__file__).resolve().parents[2]
FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}

MANIFEST = """
name: e2e
out: out
budget: {budget}
seed_base: 7
defaults: {{size: 64x64, quantity: 2}}
grid:
  model: [turbo, base]
  prompt: ["a fox in the snow", "a red lighthouse", "a bowl of ramen"]
  seed: {{count: {seeds}}}
retries: {{attempts: 4}}
limits: {{in_flight: 8, submit_per_s: 1000, downloads: 4}}
"""


def manifest(tmp_path: Path, *, budget: int = 1000, seeds: int = 2) -> Manifest:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(budget=budget, seeds=seeds))
    return parse_manifest(path.read_text(), path=path)


async def run(
    m: Manifest,
    emulator_config: EmulatorConfig,
    backend: StoreBackend | None = None,
    **kw: Any,
) -> tuple[RunOutcome, Emulator]:
    """Run `m` on the emulator; on `backend` (`store_backend`) when given: its PostgreSQL
    database (`RunOverrides.store`), or OUT/batch.sqlite."""
    app = make_app(emulator_config)
    if backend is not None and backend.name == "postgresql":
        kw["overrides"] = replace(kw.get("overrides", RunOverrides()), store=str(backend.location))
    async with Client(
        base_url="http://emulator", token="e2e-token", transport=EmulatorTransport(app)
    ) as client:
        outcome = await run_batch(m, client, tuning=FAST, **kw)
    return outcome, app.state.emulator


def record(m: Manifest, backend: StoreBackend | None = None) -> StoreBackend:
    """Where the run of `m` kept its record: the backend's database, or OUT/batch.sqlite."""
    if backend is not None and backend.name == "postgresql":
        return backend
    return StoreBackend("sqlite", m.out / "batch.sqlite")


def assert_record_matches_disk(m: Manifest, backend: StoreBackend | None = None) -> int:
    """Every downloaded image is on disk with its recorded sha256; no temp files remain."""
    rows = record(m, backend).rows("SELECT path, sha256 FROM images WHERE state = 'downloaded'")
    for path, sha in rows:
        assert hashlib.sha256((m.out / str(path)).read_bytes()).hexdigest() == sha
    files = [p for p in (m.out / "images").rglob("*") if p.is_file()]
    assert sorted(p.relative_to(m.out).as_posix() for p in files) == sorted(str(r[0]) for r in rows)
    assert not [p for p in m.out.rglob("*.tmp")]
    return len(rows)


def cells_resolved(m: Manifest, backend: StoreBackend | None = None) -> int:
    """Cells that succeeded, or whose last attempt ended and may not be retried."""
    ((count,),) = record(m, backend).rows(
        "SELECT COUNT(*) FROM cells c WHERE EXISTS (SELECT 1 FROM attempts a"
        " WHERE a.cell_key = c.key AND (a.state IN ('succeeded', 'blocked', 'rejected')"
        " OR (a.state IN ('failed', 'expired', 'canceled') AND a.attempt = c.max_attempts)))"
    )
    return int(str(count))


def assert_one_workflow_per_external_id(emulator: Emulator) -> None:
    for key, entry in emulator.state()["workflows"].items():
        assert len(entry["ids"]) == 1, f"{key} made {len(entry['ids'])} workflows"


async def test_clean_run_delivers_every_image_and_a_rerun_does_nothing(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path)
        outcome, emulator = await run(m, EmulatorConfig(time_scale=0), store_backend)
        assert outcome.counts == {"succeeded": 12, "image:downloaded": 24}
        charged = emulator.state()["buzz"]["net_buzz"]
        assert outcome.budget.charged_buzz == charged == 6 * 1 + 6 * 1  # 64x64: 1 Buzz min
        assert assert_record_matches_disk(m, store_backend) == 24
        metadata = (m.out / "metadata.jsonl").read_text().splitlines()
        assert len(metadata) == 24  # the run leaves the dataset current
        again, emulator2 = await run(m, EmulatorConfig(time_scale=0), store_backend)
        assert again.stats.submitted == 0
        assert emulator2.state()["workflow_count"] == 0


async def test_faults_slow_the_run_but_lose_nothing(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """The flaky profile: 5xx after create, drops, failed/expired steps, bad blobs."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=4)
        faults = load_faults(ROOT / "jobs" / "faults" / "flaky.yaml")
        config = EmulatorConfig(time_scale=0, seed=3, faults=faults)
        outcome, emulator = await run(m, config, store_backend)
        state = emulator.state()
        assert_one_workflow_per_external_id(emulator)
        assert state["faults_fired"], "the profile fired no fault"
        assert outcome.budget.charged_buzz == state["buzz"]["net_buzz"]
        assert outcome.budget.reserved_buzz == 0
        succeeded = outcome.counts.get("succeeded", 0)
        assert cells_resolved(m, store_backend) == 24
        assert "planned" not in outcome.counts
        assert "submitting" not in outcome.counts
        assert "running" not in outcome.counts
        on_disk = assert_record_matches_disk(m, store_backend)
        assert on_disk + outcome.counts.get("image:lost", 0) == 2 * succeeded


async def test_created_then_502_is_resubmitted_not_duplicated(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        faults = FaultProfile(submit_5xx_after=FaultRule(p=0.5), submit_drop_after=FaultRule(p=0.3))
        outcome, emulator = await run(m, EmulatorConfig(time_scale=0, faults=faults), store_backend)
        assert_one_workflow_per_external_id(emulator)
        assert outcome.counts["succeeded"] == 6
        assert outcome.stats.retries > 0


async def test_cap_holds_and_reports_what_is_left(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """The run the cap stopped raises CapReached (exit 4) saying what was charged and
    reserved, the cap, and the command that resumes; the run's outcome rides along."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # 12 cells at 1 Buzz each
        app = make_app(EmulatorConfig(time_scale=0))
        async with Client(
            base_url="http://emulator", token="e2e-token", transport=EmulatorTransport(app)
        ) as client:
            store = str(store_backend.location) if store_backend.name == "postgresql" else None
            overrides = RunOverrides(budget_buzz=5, store=store)
            with pytest.raises(CapReached) as caught:
                await run_batch(m, client, tuning=FAST, overrides=overrides)
        assert caught.value.exit_code == 4
        assert str(caught.value) == (
            "the Buzz cap of 5 stopped the batch: 5 Buzz charged and 0 reserved; 7 cells not"
            " submitted, about 7 Buzz. To resume, raise the cap:"
            f" `zbatch run {m.path} --budget 12` (retries may need more); nothing is"
            " submitted twice"
        )
        outcome: RunOutcome = caught.value.outcome
        emulator: Emulator = app.state.emulator
        assert outcome.stats.cap_reached
        assert emulator.state()["buzz"]["net_buzz"] <= 5
        assert outcome.counts["succeeded"] == 5
        assert (outcome.unsubmitted, outcome.unsubmitted_buzz) == (7, 7)


async def test_failed_steps_are_retried_as_new_attempts_and_refunded(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=3))
        outcome, emulator = await run(m, EmulatorConfig(time_scale=0, faults=faults), store_backend)
        assert outcome.counts["failed"] == 3
        assert outcome.counts["succeeded"] == 6
        state = emulator.state()
        assert state["buzz"]["refunded_buzz"] == 3
        assert outcome.budget.charged_buzz == state["buzz"]["net_buzz"] == 6


async def test_blocked_prompt_is_not_retried(tmp_path: Path, store_backend: StoreBackend) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        config = EmulatorConfig(time_scale=0, blocked_words=frozenset({"lighthouse"}))
        outcome, emulator = await run(m, config, store_backend)
        assert outcome.counts["blocked"] == 2  # both models of the lighthouse prompt
        assert emulator.state()["submit_attempts"]  # and nothing more was sent for them
        assert len(emulator.state()["workflows"]) == 6


def test_run_over_a_real_socket_with_simulated_time(tmp_path: Path) -> None:
    m = manifest(tmp_path, seeds=1)

    async def go(base_url: str) -> RunOutcome:
        async with Client(base_url=base_url, token="socket-token") as client:
            return await run_batch(m, client, runtime_scale=0.002, tuning=FAST)

    with running_server(EmulatorConfig(time_scale=0.002, seed=1)) as base_url:
        outcome = anyio.run(go, base_url, backend="asyncio")
    assert outcome.counts == {"succeeded": 6, "image:downloaded": 12}
    assert assert_record_matches_disk(m) == 12


@pytest.mark.parametrize("token", ["sk-SENTINEL-9f3a1c"])
async def test_token_appears_in_no_file(tmp_path: Path, token: str) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0, faults=FaultProfile(read_5xx=FaultRule(p=0.3))))
        async with Client(
            base_url="http://emulator", token=token, transport=EmulatorTransport(app)
        ) as c:
            await run_batch(m, c, tuning=FAST)
        for path in m.out.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"token found in {path}"


async def test_auth_error_stops_the_run_and_a_good_token_resumes_it(tmp_path: Path) -> None:
    """A 401 stops the run with AuthError; nothing is lost: the next run finishes the batch."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0, tokens=frozenset({"good"})))
        async with Client(
            base_url="http://emulator", token="bad", transport=EmulatorTransport(app)
        ) as bad:
            with pytest.raises(AuthError):
                await run_batch(m, bad, tuning=FAST)
        async with Client(
            base_url="http://emulator", token="good", transport=EmulatorTransport(app)
        ) as good:
            outcome = await run_batch(m, good, tuning=FAST)
        assert outcome.counts == {"succeeded": 6, "image:downloaded": 6 * 2}
        assert_one_workflow_per_external_id(app.state.emulator)


async def test_insufficient_funds_stop_the_run_with_a_funds_error(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        config = EmulatorConfig(time_scale=0, initial_balance={"blue": 3})
        with pytest.raises(FundsError):
            await run(m, config)


async def test_the_token_goes_to_api_routes_only(tmp_path: Path) -> None:
    """The service sees the Authorization header on every API call and on none of the
    signed blob URLs or the content URLs they redirect to, retried downloads included."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        # The first four content fetches fail: retries are certain, and fewer than the
        # downloader's tries, so no image can be lost to a long run of seeded faults.
        faults = FaultProfile(blob_5xx=FaultRule(p=1.0, times=4))
        outcome, emulator = await run(m, EmulatorConfig(time_scale=0, faults=faults))
        assert outcome.counts == {"succeeded": 6, "image:downloaded": 12}
        assert emulator.faults.fired["blob_5xx"] == 4
        requests = emulator.state()["requests"]
        seen = {route for route in requests["by_route"]}
        authorized = requests["with_authorization"]
        signed = {r for r in seen if "(signed)" in r or "/blobs/content/" in r}
        assert signed, "no image was fetched through a signed URL"
        assert not signed & set(authorized), f"the token reached {signed & set(authorized)}"
        api_calls = {r: n for r, n in requests["by_route"].items() if r not in signed}
        assert api_calls
        assert authorized == api_calls  # every API call, and only those, carried it


async def test_a_resume_of_an_unchanged_manifest_skips_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-planning 100k cells is most of a resume's time; an unchanged manifest needs none,
    an edited one is planned again."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        first, _ = await run(m, EmulatorConfig(time_scale=0))
        assert (first.plan.added, first.plan.kept) == (6, 0)
        real_plan = Store.plan_rows
        calls: list[int] = []

        async def counting_plan(self: Store, *args: Any, **kw: Any) -> Any:
            calls.append(1)
            return await real_plan(self, *args, **kw)

        monkeypatch.setattr(Store, "plan_rows", counting_plan)
        again, _ = await run(m, EmulatorConfig(time_scale=0))
        assert calls == []
        assert (again.plan.added, again.plan.kept, again.plan.removed) == (0, 6, 0)
        edited = manifest(tmp_path, seeds=2)
        grown, _ = await run(edited, EmulatorConfig(time_scale=0))
        assert calls == [1]
        assert (grown.plan.added, grown.plan.kept) == (6, 6)
        assert grown.counts["succeeded"] == 12


def test_the_token_reaches_no_output_of_any_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sentinel token through `zbatch run` over a real socket, then every command that
    reads the batch (status, report, gallery, export in each format, verify): the token is
    in no file under OUT (log.jsonl, batch.sqlite, metadata.jsonl, the gallery, the exports)
    and in nothing printed."""
    from runner.cli._main import main

    token = "sk-SENTINEL-outputs-7c1e"
    monkeypatch.setenv("CIVITAI_API_TOKEN", token)
    m = tmp_path / "m.yaml"
    m.write_text(
        "name: tok\nout: out\nbudget: 50\ndefaults: {size: 64x64}\n"
        "grid: {model: [turbo, base], prompt: [a fox, a hare], seed: {count: 2}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    with running_server(EmulatorConfig(time_scale=0, seed=3)) as url:
        assert main(["run", str(m), "--api-url", url, "--quiet"]) == 0
    commands = [
        ["status", str(out)],
        ["report", str(out)],
        ["gallery", str(out)],
        ["verify", str(out)],
        *(
            ["export", str(out), "--format", f, "--to", str(tmp_path / f"x.{f}")]
            for f in ("jsonl", "csv", "parquet")
        ),
    ]
    for command in commands:
        assert main(command) == 0, command
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != m]
    assert {p.name for p in files} >= {"log.jsonl", "batch.sqlite", "metadata.jsonl"}
    assert any(p.suffix == ".html" for p in files)
    for path in files:
        assert token.encode() not in path.read_bytes(), f"the token is in {path}"
