"""The morning after, on a demo batch (issue 15, item 13 and its gaps): every README command
works on `out/demo` without a token (`--emulator` where the service is needed, restored from
the batch folder); without a token nothing needs one when there is nothing to do; `cancel
--emulator` finds the run's workflows; `retry --give-up-after`; `verify --repair` of an
image recorded with the sha256 of bytes that do not decode."""

from __future__ import annotations

import hashlib
import shlex
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from runner.api._client import Client
from runner.cli._emulator import EMBEDDED_TOKEN, emulator_state
from runner.cli._main import main
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    make_app,
)
from runner.emulator.service import Emulator
from runner.engine import Backoff
from runner.engine._downloader import MAX_TRIES
from runner.errors import ServiceOutage
from runner.manifest._load import Manifest
from runner.ops._retry import RetryOutcome, RetrySettings, retry_batch
from runner.ops._run import run_batch
from runner.ops._verify import verify_batch
from runner.store import RetryPlan
from tests.e2e.ops_harness import FAST, manifest, rows, running
from tests.test_world import Cable, FakeClock

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(autouse=True)
def _no_token_and_fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No token in the environment; `main` points structlog at this test's captured stderr,
    later tests must not use it."""
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    yield
    structlog.reset_defaults()


def readme_commands() -> list[list[str]]:
    """The `zbatch` command lines of the README's demo, "From this repository" (the first
    screen's `zbatch init` flow is walked by tests/test_wheel.py, from an installed wheel)."""
    head = README.read_text(encoding="utf-8").split("\n## From this repository\n", 1)[1]
    head = head.split("\n## ", 1)[0]
    commands, in_block = [], False
    for line in head.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.startswith("zbatch "):
            commands.append(shlex.split(line.split("#", 1)[0]))
    return commands


def demo_manifest(tmp_path: Path) -> tuple[Path, Path]:
    """jobs/demo.yaml copied to `tmp_path`/jobs, so its `out` is `tmp_path`/out/demo."""
    text = (ROOT / "jobs" / "demo.yaml").read_text(encoding="utf-8")
    assert "out: ../out/demo" in text
    path = tmp_path / "jobs" / "demo.yaml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")  # out: ../out/demo, relative to the manifest
    return path, tmp_path / "out" / "demo"


def delete_an_image(out: Path) -> tuple[Path, str]:
    db = sqlite3.connect(out / "batch.sqlite")
    (path, sha) = db.execute("SELECT path, sha256 FROM images ORDER BY path LIMIT 1").fetchone()
    db.close()
    (out / path).unlink()
    return out / path, sha


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_readme_command_works_on_the_demo_batch_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's demo commands, in its order, on the demo batch: `verify --repair` (after
    an image was deleted), `retry` and `cancel` meet the emulator the run used, restored
    from out/demo/.emulator/."""
    manifest_path, out = demo_manifest(tmp_path)
    commands = readme_commands()
    names = [argv[1] for argv in commands]
    assert names == ["plan", "run", "status", "list", "status", "gallery", "export", "export"] + [
        "report",
        "verify",
        "retry",
        "cancel",
    ]
    monkeypatch.chdir(tmp_path)  # `zbatch list` lists the batches under the current folder
    paths = {"jobs/demo.yaml": str(manifest_path), "out/demo": str(out)}
    for command in commands:
        argv = [paths.get(arg, arg) for arg in command[1:]]
        if argv[0] in ("run", "retry"):
            argv.append("--quiet")
        if "--emulator" in argv:
            argv += ["--time-scale", "0"]
        deleted = None
        if argv[0] == "verify":
            deleted = delete_an_image(out)
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.out, captured.err)
        if argv[0] == "run":
            assert (out / ".emulator" / "state.json").is_file()
        if deleted is not None:
            assert sha256(deleted[0]) == deleted[1]  # fetched again from the restored emulator
            assert "Intact after repair: 12 images checked, 1 repaired." in captured.out
        if argv[0] == "list":
            assert "out/demo" in captured.out, captured.out
        if argv[0] == "cancel":
            assert "0 gone from the service" in captured.out  # it knew the run's workflows
    assert main(["verify", str(out)]) == 0


def test_without_a_token_only_what_needs_the_service_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to retry, no workflow in flight, every image intact: exit 0, saying the service
    was not asked. An image to repair: exit 3, naming --emulator; then with it, repaired."""
    manifest_path, out = demo_manifest(tmp_path)
    run = ["run", str(manifest_path), "--emulator", "--time-scale", "0", "--quiet"]
    assert main(run) == 0
    capsys.readouterr()

    assert main(["retry", str(out), "--quiet"]) == 0
    assert "Nothing to retry: no cell matched." in capsys.readouterr().out
    assert main(["verify", str(out), "--repair"]) == 0
    assert "nothing to repair: the service was not asked" in capsys.readouterr().out
    assert main(["cancel", str(out)]) == 0
    assert "not asked: no workflow was in flight" in capsys.readouterr().out

    deleted, sha = delete_an_image(out)
    assert main(["verify", str(out), "--repair"]) == 3
    err = capsys.readouterr().err
    assert "no API token: zbatch verify --repair needs the service" in err
    assert "1 damaged images to fetch again" in err
    assert "--emulator" in err
    assert not deleted.exists()  # nothing was done
    assert main(["verify", str(out), "--repair", "--emulator"]) == 0
    assert sha256(deleted) == sha


def emulator_of(app: object) -> Emulator:
    found: Emulator = app.state.emulator  # type: ignore[attr-defined]
    return found


def embedded_client(app: object, transport: object | None = None) -> Client:
    """A client of the app as the CLI's embedded emulator is called: its token, its account."""
    return Client(
        base_url="http://emulator",
        token=EMBEDDED_TOKEN,
        transport=transport or EmulatorTransport(app),  # type: ignore[arg-type]
    )


async def killed_run(m: Manifest, state: Path) -> int:
    """Run the batch on an embedded-like emulator whose clock stands still, kill it with 8
    workflows in flight, and save the emulator's state as its checkpoint does; the Buzz
    charged."""
    app = make_app(EmulatorConfig(time_scale=100.0, state_path=state), clock=ManualClock())
    with anyio.fail_after(60):
        async with embedded_client(app) as client, anyio.create_task_group() as tg:
            tg.start_soon(run_batch, m, client)
            while running(m) < 8:  # the manifest's in_flight
                await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()  # as a kill would
        assert await app.state.saver.checkpoint()  # what the running emulator does each second
    charged: int = emulator_of(app).state()["buzz"]["charged_buzz"]
    return charged


def test_cancel_with_the_emulator_finds_the_workflows_a_killed_run_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed with 8 workflows in flight on the embedded emulator (its state saved at
    a checkpoint): `cancel` without a token refuses (exit 3, naming --emulator) and changes
    nothing; `cancel --emulator` cancels all 8 before they start (refunded); `retry --state
    canceled --emulator` finishes the batch, one workflow per externalId throughout."""
    m = manifest(tmp_path, seeds=3, size="1024x1024", model="base")  # 9 cells
    state = emulator_state(m.out)
    charged = anyio.run(killed_run, m, state)

    out = str(m.out)
    assert main(["cancel", out]) == 3
    err = capsys.readouterr().err
    assert "8 workflows in flight to cancel" in err
    assert "--emulator" in err
    assert running(m) == 8
    assert main(["cancel", out, "--emulator"]) == 0
    said = capsys.readouterr().out
    assert f"8 canceled before they started, {charged} Buzz refunded" in said
    assert "0 gone from the service" in said

    saved = emulator_of(make_app(EmulatorConfig(state_path=state))).state()  # the file now
    assert saved["statuses"] == {"canceled": 8}
    assert saved["buzz"]["net_buzz"] == 0

    retry = ["retry", out, "--state", "canceled", "--emulator", "--time-scale", "0", "--quiet"]
    assert main(retry) == 0
    final = emulator_of(make_app(EmulatorConfig(state_path=state))).state()
    assert final["statuses"] == {"canceled": 8, "succeeded": 9}
    assert all(len(entry["ids"]) == 1 for entry in final["workflows"].values())
    assert rows(m, "SELECT COUNT(*) FROM images WHERE state = 'downloaded'") == [(18,)]


async def test_retry_gives_up_after_what_give_up_after_says(tmp_path: Path) -> None:
    """`zbatch retry --give-up-after 30m`: an outage during the retry ends it after 30
    minutes (the engine's clock: 10 minutes a reading), not the default 6 hours."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=2, attempts=1)  # 6 cells
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=6))
        app = make_app(EmulatorConfig(time_scale=0, faults=faults))
        async with embedded_client(app) as client:
            await run_batch(m, client, tuning=FAST)
        assert rows(m, "SELECT COUNT(*) FROM attempts WHERE state = 'failed'") == [(6,)]
        cable = Cable(EmulatorTransport(app), cut_after=1, mend_after=None)
        settings = RetrySettings(give_up_after_s=1800)
        tuning = {**FAST, "outage_clock": FakeClock()}
        async with embedded_client(app, cable) as client:
            with pytest.raises(ServiceOutage) as info:
                await retry_batch(m.out, client, settings, tuning=tuning)
    assert "--give-up-after 30m" in str(info.value)
    assert cable.refused >= 3


def test_retry_takes_give_up_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RetrySettings] = []

    def execute_retry(out: Path, settings: RetrySettings, **kw: object) -> RetryOutcome:
        seen.append(settings)
        return RetryOutcome(RetryPlan(chosen=[]), None)

    monkeypatch.setattr("runner.ops.execute_retry", execute_retry)
    assert main(["retry", str(tmp_path), "--give-up-after", "1h30m", "--quiet"]) == 0
    assert main(["retry", str(tmp_path), "--quiet"]) == 0
    assert [s.give_up_after_s for s in seen] == [5400.0, None]  # None: the engine's 6h
    with pytest.raises(SystemExit):
        main(["retry", str(tmp_path), "--give-up-after", "soon"])


async def test_repair_of_an_image_recorded_with_the_sha256_of_bad_bytes(tmp_path: Path) -> None:
    """An image whose file hashes as recorded but does not decode (recorded before the strict
    check) is fetched again: good bytes are written and their sha256 recorded; bytes that are
    bad again (every try) make it lost with the reason, after MAX_TRIES tries, not intact."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=1)  # 3 cells of 2 images
        state = emulator_state(m.out)
        app = make_app(EmulatorConfig(time_scale=0, state_path=state))
        async with embedded_client(app) as client:
            await run_batch(m, client, tuning=FAST)
        assert await app.state.saver.checkpoint()
        ((path, good_sha),) = rows(m, "SELECT path, sha256 FROM images ORDER BY path LIMIT 1")
        good = (m.out / path).read_bytes()

        def record_bad_bytes() -> None:
            bad = good[: len(good) // 2]  # a JPEG cut short: "premature end of data segment"
            (m.out / path).write_bytes(bad)
            db = sqlite3.connect(m.out / "batch.sqlite")
            with db:
                db.execute(
                    "UPDATE images SET sha256 = ?, size_bytes = ? WHERE path = ?",
                    (hashlib.sha256(bad).hexdigest(), len(bad), path),
                )
            db.close()

        record_bad_bytes()
        fast = Backoff(0.001, 0.01)
        async with embedded_client(app) as client:
            report = await verify_batch(m.out, client=client, backoff=fast)
        assert (report.corrupt, report.repaired, report.lost, report.intact) == (1, 1, 0, True)
        assert (m.out / path).read_bytes() == good
        assert rows(m, "SELECT sha256, size_bytes FROM images WHERE path = ?", path) == [
            (good_sha, len(good))
        ]
        assert (await verify_batch(m.out)).intact

        record_bad_bytes()
        faults = FaultProfile(blob_truncate=FaultRule(p=1.0))
        bad_service = make_app(EmulatorConfig(time_scale=0, faults=faults, state_path=state))
        async with embedded_client(bad_service) as client:
            report = await verify_batch(m.out, client=client, backoff=fast)
        assert (report.corrupt, report.repaired, report.lost, report.intact) == (1, 0, 1, False)
        assert emulator_of(bad_service).state()["faults_fired"]["blob_truncate"] == MAX_TRIES
        ((state_now, reason),) = rows(m, "SELECT state, reason FROM images WHERE path = ?", path)
        assert state_now == "lost"
        assert reason.startswith("corrupt: ")
        assert "truncated" in reason or "premature" in reason or "JPEG" in reason, reason
        after = await verify_batch(m.out)  # the lost image is no longer counted as downloaded
        assert (after.checked, after.damaged) == (5, 0)
