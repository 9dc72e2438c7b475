"""`zbatch list` (and `zbatch status` on a folder of batches): the batches under a folder,
each with its cells, Buzz, state and last activity, read without the batch lock."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from runner.cli._main import main
from runner.dataset._batches import find_batches, list_batches, lock_holder
from runner.emulator import EmulatorConfig, make_app
from runner.errors import CapReached
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import RunOverrides, run_batch
from runner.store._store import Store
from tests.e2e.ops_harness import FAST, client_for

MANIFEST = """
name: {name}
out: {out}
budget: 1000
seed_base: 11
defaults: {{size: 64x64, quantity: 1, model: turbo}}
grid:
  prompt: ["a fox in the snow", "a red lighthouse", "a bowl of ramen"]
  seed: {{count: 2}}
limits: {{in_flight: 8, submit_per_s: 1000, downloads: 4}}
"""


def manifest(root: Path, name: str, out: str) -> Manifest:
    path = root / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, out=out))
    return parse_manifest(path.read_text(), path=path)


async def make_batches(root: Path) -> None:
    """Under root/out: `done` (6 of 6), `blocked` (4 of 6, 2 blocked), `capped` (stopped by a
    cap of 3 Buzz: 3 cells open), `deep/er/still` (too deep), a damaged and a foreign one."""
    plain = make_app(EmulatorConfig(time_scale=0))
    strict = make_app(EmulatorConfig(time_scale=0, blocked_words=frozenset({"lighthouse"})))
    async with client_for(plain) as client:
        await run_batch(manifest(root, "done", "out/done"), client, tuning=FAST)
        capped = manifest(root, "capped", "out/nested/capped")
        with pytest.raises(CapReached):
            await run_batch(capped, client, tuning=FAST, overrides=RunOverrides(budget_buzz=3))
        await run_batch(manifest(root, "deep", "out/a/b/c/deep"), client, tuning=FAST)
    async with client_for(strict) as client:
        await run_batch(manifest(root, "blocked", "out/blocked"), client, tuning=FAST)
    (root / "out" / "damaged").mkdir()
    (root / "out" / "damaged" / "batch.sqlite").write_bytes(b"hello, not a database" * 100)
    (root / "out" / "foreign").mkdir()
    sqlite3.connect(root / "out" / "foreign" / "batch.sqlite").execute(
        "CREATE TABLE t (x)"
    ).connection.close()


async def test_list_counts_each_batch_and_says_its_state(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        await make_batches(tmp_path)
        out = tmp_path / "out"
        # A run holds `done`: its lock is held, and list reads it all the same.
        async with await Store.open(out / "done" / "batch.sqlite"):
            held = await list_batches(out)
        after = await list_batches(out)
    by_path = {b.path.relative_to(out).as_posix(): b for b in held}
    assert sorted(by_path) == ["blocked", "damaged", "done", "foreign", "nested/capped"]
    done, blocked, capped = by_path["done"], by_path["blocked"], by_path["nested/capped"]
    assert (done.cells, done.done, done.failed, done.open, done.state) == (6, 6, 0, 0, "running")
    assert (done.charged_buzz, done.cap_buzz) == (6, 1000)
    assert done.last_activity is not None
    assert (blocked.done, blocked.failed, blocked.open, blocked.state) == (4, 2, 0, "failed cells")
    assert (capped.done, capped.open, capped.state, capped.cap_buzz) == (3, 3, "incomplete", 3)
    assert by_path["damaged"].state == by_path["foreign"].state == "unreadable"
    assert "not a zbatch batch database" in str(by_path["damaged"].problem)
    assert "no zbatch schema" in str(by_path["foreign"].problem)
    assert [b.state for b in after if b.name == "done"] == ["finished"]
    assert not (out / "done" / "batch.sqlite.lock").read_text().startswith("pid 0")


def test_the_table_and_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(make_batches, tmp_path)
    capsys.readouterr()  # the runs' log lines
    out = tmp_path / "out"
    assert main(["list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "BATCH",
        "NAME",
        "CELLS",
        "DONE",
        "FAILED",
        "OPEN",
        "BUZZ",
        "STATE",
        "LAST",
        "ACTIVITY",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["done"].split()[1:8] == ["done", "6", "6", "0", "0", "6/1000", "finished"]
    assert rows["blocked"].split()[1:9] == [
        "blocked",
        "6",
        "4",
        "2",
        "0",
        "4/1000",
        "failed",
        "cells",
    ]
    assert rows["nested/capped"].split()[1:8] == ["capped", "6", "3", "0", "3", "3/3", "incomplete"]
    assert rows["damaged"].startswith("damaged  unreadable: ")
    assert rows["foreign"].startswith("foreign  unreadable: ")
    assert "a/b/c/deep" not in "\n".join(lines)  # 4 folders down: deeper than list looks
    assert main(["list", str(out), "--json"]) == 0
    doc = {Path(b["path"]).name: b for b in json.loads(capsys.readouterr().out)}
    assert doc["done"]["cells"] == {"total": 6, "done": 6, "failed": 0, "open": 0}
    assert doc["done"]["buzz"] == {"charged": 6, "cap": 1000}
    assert doc["damaged"]["state"] == "unreadable"
    # `zbatch status` on the parent folder prints the same list.
    assert main(["status", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_list_defaults_to_the_current_folder_and_says_when_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 0
    assert capsys.readouterr().out.startswith("no batches under .")
    assert main(["list", str(tmp_path / "nowhere")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err


def test_depth_hidden_folders_and_symlinks(tmp_path: Path) -> None:
    for where in ("a", "a/b/c/d", ".hidden/x", "real"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "batch.sqlite").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert find_batches(tmp_path) == [tmp_path / "a", tmp_path / "real"]
    assert find_batches(tmp_path / "a") == [tmp_path / "a", tmp_path / "a/b/c/d"]


async def test_the_lock_is_read_never_taken(tmp_path: Path) -> None:
    """A held lock is seen; checking it leaves a run free to start; a stale file is no run."""
    with anyio.fail_after(10):
        db = tmp_path / "batch.sqlite"
        assert lock_holder(db) is None
        store = await Store.open(db)
        try:
            assert str(lock_holder(db)).startswith("pid ")
        finally:
            await store.close()
        assert (tmp_path / "batch.sqlite.lock").exists()  # left behind: not a run
        assert lock_holder(db) is None
        async with await Store.open(db):  # the check took nothing: a run starts
            pass
