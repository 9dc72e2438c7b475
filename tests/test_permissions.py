"""Permissions: a batch's record and log are private; a run refuses a folder others may write."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from runner.cli._main import main
from runner.disk._atomic import atomic_write_bytes
from runner.disk._out_folder import check_out_folder
from runner.errors import OutFolderError
from runner.log import configure_logging
from runner.store._store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The most permissive common umask (002): new files would be 0664 by default."""
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


async def test_database_lock_wal_and_shm_are_created_0600(tmp_path: Path, loose_umask) -> None:
    """batch.sqlite, its -wal, -shm and .lock files are readable by the owner only."""
    db = tmp_path / "out" / "batch.sqlite"
    with anyio.fail_after(10):
        store = await Store.open(db)
        try:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=10)
            files = [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", ".lock"))]
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            await store.close()


async def test_an_existing_database_keeps_its_mode(tmp_path: Path, loose_umask) -> None:
    """Only creation sets 0600: a mode the user chose for an existing batch is left alone."""
    db = tmp_path / "batch.sqlite"
    with anyio.fail_after(10):
        store = await Store.open(db)
        await store.close()
        db.chmod(0o640)
        store = await Store.open(db)
        await store.close()
    assert mode(db) == 0o640


def test_log_jsonl_is_created_0600(tmp_path: Path, loose_umask) -> None:
    """The JSONL log, which names URLs and workflows, is readable by the owner only."""
    log_file = tmp_path / "out" / "log.jsonl"
    configure_logging(json=True, log_file=log_file)
    try:
        structlog.get_logger().info("hello", n=1)
    finally:
        configure_logging(json=True)  # closes the file
    assert mode(log_file) == 0o600
    assert '"event": "hello"' in log_file.read_text(encoding="utf-8")


def test_images_keep_the_usual_mode(tmp_path: Path) -> None:
    """Images are for sharing: 0666 & ~umask (0644 under the usual 022), not 0600."""
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "a.jpg", b"x")
    assert mode(tmp_path / "a.jpg") == 0o666 & ~umask


def test_a_world_writable_out_folder_is_refused(tmp_path: Path) -> None:
    """o+w is refused with the folder's name and both fixes; --allow-shared-out accepts it."""
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o777)
    with pytest.raises(OutFolderError) as caught:
        check_out_folder(out)
    assert str(caught.value) == (
        f"{out} is writable by every user (mode 0777): another account could replace its"
        f" images or its batch record. Fix: chmod o-w {out}, or pass --allow-shared-out if"
        " the folder is shared on purpose"
    )
    assert caught.value.exit_code == 2
    check_out_folder(out, allow_shared=True)


@pytest.mark.parametrize("folder_mode", [0o755, 0o775, 0o700, 0o1770])
def test_private_and_group_writable_folders_are_accepted(tmp_path: Path, folder_mode) -> None:
    """Group-writable team folders are a choice their owner made: allowed."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(folder_mode)
    check_out_folder(out)
    check_out_folder(tmp_path / "not-yet")  # created by the run itself


def test_zbatch_run_refuses_a_world_writable_out_before_writing(tmp_path: Path, capsys) -> None:
    """`zbatch run` exits 2 with the message, and creates nothing in the folder."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: t\nout: out\nbudget: 10\ngrid: {prompt: p}\n", encoding="utf-8")
    code = main(["run", str(manifest), "--emulator", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"zbatch: error: {out} is writable by every user (mode 0777)" in err
    assert "--allow-shared-out" in err
    assert list(out.iterdir()) == []


def test_an_out_folder_we_cannot_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder is named, rather than failing at the first write.

    Root may write anywhere (CI runs as root), so there the kernel's answer is replaced by
    the one an ordinary user gets for a 0555 folder; as any other user it is the real one.
    """
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def as_a_user(path: object, mode: int, **kw: object) -> bool:
            if Path(str(path)) == out and mode & os.W_OK:
                return False
            return real_access(path, mode, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr("runner.disk._out_folder.os.access", as_a_user)
    with pytest.raises(OutFolderError, match="is not writable by you"):
        check_out_folder(out)
