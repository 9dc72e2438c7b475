"""The emulator's state kept on disk (runner/emulator/persist.py): saved atomically and
privately, restored whole (workflows, blobs, ledger, idempotency, the clock), saved when it
changes and when the emulator stops; an unusable file is a clear usage error (issue 15,
item 13a)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import anyio
import httpx
import pytest

from runner.api._client import Client
from runner.cli._emulator import EMBEDDED_TOKEN, emulator_state
from runner.cli._main import main
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    ManualClock,
    StateError,
    make_app,
    persist,
    running_server,
)
from runner.emulator.service import Emulator
from runner.ops._run import run_batch
from tests.cells import FOX_INPUT
from tests.e2e.ops_harness import FAST, manifest, rows


def emulator_of(app: object) -> Emulator:
    found: Emulator = app.state.emulator  # type: ignore[attr-defined]
    return found


def client(app: object) -> Client:
    transport = EmulatorTransport(app)  # type: ignore[arg-type]
    return Client(base_url="http://emulator", token=EMBEDDED_TOKEN, transport=transport)


async def test_a_restored_emulator_is_the_one_that_was_saved(tmp_path: Path) -> None:
    """Workflows (statuses, blobs), the ledger, each externalId's workflow and the clock come
    back; the images are drawn again byte for byte; a resubmit makes no second workflow."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=1)  # 3 cells of 2 images
        path = emulator_state(m.out)
        clock = ManualClock(start_s=12.5)
        first = make_app(EmulatorConfig(time_scale=0, state_path=path), clock=clock)
        async with client(first) as c:
            await run_batch(m, c, tuning=FAST)
        assert await first.state.saver.checkpoint()
        assert not await first.state.saver.checkpoint()  # nothing changed since
        before = emulator_of(first).state()

        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        second = make_app(EmulatorConfig(time_scale=0, state_path=path))
        restored = emulator_of(second)
        after = restored.state()
        assert after["now_s"] >= 12.5  # the clock goes on from where it stood
        assert after["workflows"] == before["workflows"]
        assert after["accounts"] == before["accounts"]
        assert after["statuses"] == before["statuses"] == {"succeeded": 3}
        assert after["submit_attempts"] == before["submit_attempts"]

        for (path_,) in rows(m, "SELECT path FROM images"):
            (m.out / path_).unlink()
        async with client(second) as c:
            for (wf_id,) in rows(m, "SELECT workflow_id FROM attempts"):
                wf = await c.get(wf_id)
                assert wf.status == "succeeded"
                for image in wf.images:
                    assert image.url is not None
                    got = await c.download(image.url, max_bytes=1 << 24)
                    known = rows(m, "SELECT sha256 FROM images WHERE blob_id = ?", image.blob_id)
                    assert [(hashlib.sha256(got.content).hexdigest(),)] == known
        # the same externalId again: the workflow it made, no second one, no second charge
        (external_id, wf_id) = rows(m, "SELECT external_id, workflow_id FROM attempts")[0]
        assert restored.workflow_ids(external_id) == [wf_id]
        charged = restored.state()["buzz"]["charged_buzz"]
        template = restored.records[wf_id].template
        reply = await restored.submit(
            restored.ledger.open(EMBEDDED_TOKEN), template, base_url="http://e", wait_s=0,
            whatif=False,
        )  # fmt: skip
        assert reply.body["id"] == wf_id
        assert restored.workflow_ids(external_id) == [wf_id]
        assert restored.state()["buzz"]["charged_buzz"] == charged


def test_the_served_emulator_saves_its_state_when_it_stops(tmp_path: Path) -> None:
    """A workflow submitted over the socket is in the file once the server has stopped, and
    a server started on that file knows it."""
    path = tmp_path / ".emulator" / "state.json"
    body = {"externalId": "ext-1", "steps": [{"$type": "imageGen", "input": dict(FOX_INPUT)}]}
    web = httpx.Client(headers={"Authorization": "Bearer t"}, trust_env=False)
    with running_server(EmulatorConfig(time_scale=0, state_path=path)) as url:
        made = web.post(f"{url}/v2/consumer/workflows", json=body)
        assert made.status_code in (200, 202), made.text
    saved = json.loads(path.read_text())
    assert [r["external_id"] for r in saved["records"]] == ["ext-1"]
    with running_server(EmulatorConfig(time_scale=0, state_path=path)) as url:
        again = web.get(f"{url}/v2/consumer/workflows/{made.json()['id']}")
        assert again.status_code == 200
        assert again.json()["status"] == "succeeded"
        resent = web.post(f"{url}/v2/consumer/workflows", json=body)
        assert resent.json()["id"] == made.json()["id"]
    web.close()


def test_a_state_file_that_is_not_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = emulator_state(tmp_path / "out")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StateError, match="not JSON"):
        make_app(EmulatorConfig(state_path=path))
    path.write_text(json.dumps({"version": 99, "now_s": 0}))
    with pytest.raises(StateError, match="version 1"):
        persist.load(path)
    assert main(["cancel", str(tmp_path / "out"), "--emulator"]) == 2
    err = capsys.readouterr().err
    assert "state.json: not an emulator state of version 1" in err
    assert "move it aside" in err
    assert "Traceback" not in err


async def test_a_save_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    emulator = Emulator(EmulatorConfig(), ManualClock())
    persist.save(path, persist.snapshot(emulator))
    persist.save(path, persist.snapshot(emulator))
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    assert persist.load(path) == persist.snapshot(emulator)
    assert persist.load(tmp_path / "none.json") is None
    stray = path.parent / ".state.json.k1ll3d.tmp"  # what a save killed midway leaves
    stray.write_text("{")
    assert persist.load(path) == persist.snapshot(emulator)
    assert not stray.exists()
