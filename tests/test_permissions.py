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


# -- an `out` no folder can be made at (issue 15, item 6) ------------------------------------


def _manifest_with_out(tmp_path: Path, out: Path) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: t\nout: {out}\nbudget: 10\ngrid: {{prompt: p}}\n", encoding="utf-8")
    return manifest


def _unmounted_drive(tmp_path: Path) -> Path:
    """A symbolic link to a mount point that is not there: an unplugged drive."""
    link = tmp_path / "drive"
    link.symlink_to(tmp_path / "media" / "usb-not-mounted")
    return link


@pytest.mark.parametrize("below", [False, True], ids=["the-link", "under-the-link"])
def test_zbatch_run_refuses_an_out_on_a_broken_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], below: bool
) -> None:
    """A broken symlink (at `out`, or a folder on its way) is one line and exit 2, not a
    traceback from opening log.jsonl; nothing is written anywhere."""
    link = _unmounted_drive(tmp_path)
    out = link / "batch" if below else link
    manifest = _manifest_with_out(tmp_path, out)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", str(manifest), "--emulator", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("zbatch: error:")]
    assert len(lines) == 1, err
    assert str(out) in lines[0]
    assert "symbolic link" in lines[0]
    assert "usb-not-mounted" in lines[0]
    assert "which does not exist" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made
    assert not (tmp_path / "media").exists()


def test_zbatch_run_refuses_an_out_under_proc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc holds no files (root may not make a folder there either): exit 2, one line."""
    out = Path("/proc") / "zbatch-out"
    code = main(["run", str(_manifest_with_out(tmp_path, out)), "--emulator", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert f"zbatch: error: {out} would be made in /proc, which is on a filesystem with no" in err
    assert not out.exists()


def test_check_out_folder_refuses_an_existing_folder_without_storage() -> None:
    with pytest.raises(OutFolderError, match="/sys is on a filesystem with no storage"):
        check_out_folder(Path("/sys"))


@pytest.mark.parametrize("where", ["symlink", "proc"])
def test_zbatch_plan_warns_about_an_unusable_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """`zbatch plan` still plans (exit 0) and says on stderr that `run` would refuse `out`."""
    out = _unmounted_drive(tmp_path) if where == "symlink" else Path("/proc/zbatch-out")
    code = main(["plan", str(_manifest_with_out(tmp_path, out))])
    captured = capsys.readouterr()
    assert code == 0
    assert "cells" in captured.out
    assert f"zbatch: warning: `zbatch run` would refuse this out folder: {out}" in captured.err


def test_a_log_file_that_cannot_be_opened_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    """Whatever slips past the check, opening log.jsonl raises a zbatch error naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutFolderError, match=f"{blocker} cannot hold the log file log.jsonl"):
        configure_logging(log_file=blocker / "log.jsonl")
