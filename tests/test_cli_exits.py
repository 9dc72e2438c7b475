"""Every command driven into each exit code it declares, through `main` (strict: conftest).

`CASES` drives a (command, code) pair from a prepared folder; `NOT_DRIVEN` names, with the
reason, each declared pair that is not driven here. A command that declares a new code
fails `test_every_declared_code_is_driven_or_excused` until one of the two names it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli._main import main
from runner.cli._parser import COMMANDS
from runner.emulator import EmulatorConfig, running_server
from runner.errors import ApiError, ExitCode

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "exits-token"
MANIFEST = """\
name: exits
out: out
budget: {budget}
defaults: {{size: 64x64}}
grid: {{prompt: ["a fox", "a cat"], seed: {{count: 1}}}}
"""


@dataclass
class Env:
    """A test's folder: `out` is a copy of a finished batch, `manifest` made it."""

    tmp: Path
    out: Path
    manifest: Path
    url: str
    monkeypatch: pytest.MonkeyPatch

    def write_manifest(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def garbage_record(self) -> str:
        (self.out / "batch.sqlite").write_bytes(b"not a database at all" * 100)
        return str(self.out)

    def damaged_pages(self) -> str:
        """The header and schema intact, every later page garbage: a read fails midway."""
        db = self.out / "batch.sqlite"
        data = bytearray(db.read_bytes())
        data[4096:] = b"\xab" * (len(data) - 4096)
        db.write_bytes(bytes(data))
        return str(self.out)

    def fail(self, target: str, exc: BaseException) -> None:
        def raiser(*args: object, **kwargs: object) -> None:
            raise exc

        self.monkeypatch.setattr(target, raiser)

    def disk_full(self, target: str, argv: list[str]) -> list[str]:
        """`argv`, with `target` refusing to write: the disk is full."""
        self.fail(target, OSError(errno.ENOSPC, "No space left on device", str(self.out / "x")))
        return argv

    def no_token(self) -> None:
        self.monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(EmulatorConfig(time_scale=0)) as url:
        yield url


@pytest.fixture(scope="module")
def finished(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch of 2 cells run to the end against `server`; each test works on a copy."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "m.yaml").write_text(MANIFEST.format(budget=100))
    os.environ["CIVITAI_API_TOKEN"] = TOKEN
    try:
        assert main(["run", str(folder / "m.yaml"), "--api-url", server, "--quiet"]) == 0
    finally:
        del os.environ["CIVITAI_API_TOKEN"]
    return folder


@pytest.fixture
def env(finished: Path, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    return Env(tmp_path, tmp_path / "out", tmp_path / "m.yaml", server, monkeypatch)


def _bad_manifest(e: Env) -> str:
    return e.write_manifest("bad.yaml", "name: [oops\n")


def _delete_an_image(e: Env) -> None:
    db = sqlite3.connect(e.out / "batch.sqlite")
    (path,) = db.execute("SELECT path FROM images ORDER BY path LIMIT 1").fetchone()
    db.close()
    (e.out / path).unlink()


def _failed_batch(e: Env) -> str:
    """A fresh batch whose 2 cells failed (one attempt each): `retry` has work to do."""
    profile = e.write_manifest("fail.yaml", "step_fail: {p: 1, times: 2}\n")
    text = MANIFEST.format(budget=100).replace("out: out", "out: f") + "retries: {attempts: 1}\n"
    m = e.write_manifest("f.yaml", text)
    argv = ["run", m, "--emulator", "--time-scale", "0", "--faults", profile, "--quiet"]
    assert main(argv) == 0
    return str(e.tmp / "f")


def _retry_at_the_cap(e: Env) -> list[str]:
    out = _failed_batch(e)
    return ["retry", out, "--emulator", "--time-scale", "0", "--quiet", "--budget", "1"]


def _interrupted(e: Env, target: str, argv: list[str]) -> list[str]:
    e.fail(target, KeyboardInterrupt())
    return argv


def _run(e: Env, *more: str) -> list[str]:
    return ["run", str(e.manifest), "--api-url", e.url, "--quiet", *more]


def _whatif_fails(e: Env) -> list[str]:
    e.fail("runner.cli._plan._plan_with_whatif", ApiError("the service is down"))
    return ["plan", str(e.manifest), "--whatif"]


def _run_disk_full(e: Env) -> list[str]:
    return e.disk_full("runner.disk.check_out_folder", _run(e))


def _run_damaged(e: Env) -> list[str]:
    e.garbage_record()
    return _run(e)


def _run_adopt_fails(e: Env) -> list[str]:
    """The service refuses to list the batch's workflows. (A manifest naming another batch
    in the same `out` was this case; it is now refused as a usage error, exit 2: issue 15.)"""
    e.fail("runner.ops._run.adopt_workflows", ApiError("the service refused the listing"))
    return _run(e, "--adopt")


def _retry_disk_full(e: Env) -> list[str]:
    argv = ["retry", _failed_batch(e), "--emulator", "--time-scale", "0", "--quiet"]
    return e.disk_full("runner.ops._retry.sweep_batch_temps", argv)


def _repair_disk_full(e: Env) -> list[str]:
    _delete_an_image(e)
    argv = ["verify", str(e.out), "--repair", "--api-url", e.url]
    return e.disk_full("runner.ops._verify.atomic_write_bytes", argv)


def _no_token(e: Env, argv: list[str]) -> list[str]:
    e.no_token()
    return argv


def _in_flight(e: Env) -> str:
    """The batch with one workflow in flight, as a killed run leaves it: `cancel` needs the
    service for it (issue 15: without one, nothing needs a token)."""
    db = sqlite3.connect(e.out / "batch.sqlite")
    with db:
        db.execute(
            "UPDATE attempts SET state = 'running' WHERE id = (SELECT MIN(id) FROM attempts)"
        )
    db.close()
    return str(e.out)


def _deleted_image(e: Env) -> str:
    _delete_an_image(e)
    return str(e.out)


def _damaged_image(e: Env) -> list[str]:
    _delete_an_image(e)
    return ["verify", str(e.out)]


def _emulator_serves(e: Env) -> list[str]:
    e.monkeypatch.setattr("runner.emulator.server.serve", lambda config, **where: None)
    return ["emulator", "--port", "0"]


def _parquet_without_pyarrow(e: Env) -> list[str]:
    e.monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow: ImportError
    return ["export", str(e.out), "--format", "parquet"]


P = ExitCode
Case = Callable[[Env], list[str]]
CASES: dict[tuple[str, ExitCode], Case] = {
    ("init", P.OK): lambda e: ["init", str(e.tmp / "starter")],
    ("init", P.USAGE): lambda e: ["init", str(e.manifest)],  # a file, not a folder
    ("init", P.DISK): lambda e: e.disk_full("runner.disk.atomic_write_bytes", ["init", str(e.tmp)]),
    ("plan", P.OK): lambda e: ["plan", str(e.manifest)],
    ("plan", P.ERROR): _whatif_fails,
    ("plan", P.USAGE): lambda e: ["plan", _bad_manifest(e)],
    ("plan", P.AUTH_OR_FUNDS): lambda e: [
        "plan",
        e.write_manifest("over.yaml", MANIFEST.format(budget=1)),
    ],
    ("plan", P.INTERRUPTED): lambda e: _interrupted(
        e, "runner.manifest.load_manifest", ["plan", str(e.manifest)]
    ),
    ("run", P.OK): lambda e: _run(e),
    ("run", P.ERROR): _run_adopt_fails,
    ("run", P.USAGE): lambda e: ["run", _bad_manifest(e)],
    ("run", P.AUTH_OR_FUNDS): lambda e: _no_token(e, ["run", str(e.manifest), "--quiet"]),
    ("run", P.CAP_REACHED): lambda e: [
        "run",
        e.write_manifest("cap.yaml", MANIFEST.format(budget=1).replace("out: out", "out: c")),
        "--emulator",
        "--time-scale",
        "0",
        "--quiet",
    ],
    ("run", P.DISK): _run_disk_full,
    ("run", P.BATCH_UNUSABLE): _run_damaged,
    ("run", P.INTERRUPTED): lambda e: _interrupted(e, "runner.ops.execute", _run(e)),
    ("status", P.OK): lambda e: ["status", str(e.out)],
    ("status", P.USAGE): lambda e: ["status", str(e.tmp / "nowhere")],
    ("status", P.BATCH_UNUSABLE): lambda e: ["status", e.damaged_pages()],
    ("list", P.OK): lambda e: ["list", str(e.tmp)],
    ("list", P.USAGE): lambda e: ["list", str(e.tmp / "nowhere")],
    ("report", P.OK): lambda e: ["report", str(e.out)],
    ("report", P.USAGE): lambda e: ["report", str(e.tmp / "nowhere")],
    ("report", P.BATCH_UNUSABLE): lambda e: ["report", e.damaged_pages()],
    ("gallery", P.OK): lambda e: ["gallery", str(e.out)],
    ("gallery", P.USAGE): lambda e: ["gallery", str(e.out), "--x", "nonsense"],
    ("gallery", P.DISK): lambda e: e.disk_full(
        "runner.dataset._gallery.atomic_write_bytes", ["gallery", str(e.out)]
    ),
    ("gallery", P.BATCH_UNUSABLE): lambda e: ["gallery", e.damaged_pages()],
    ("export", P.OK): lambda e: ["export", str(e.out), "--format", "jsonl"],
    ("export", P.ERROR): _parquet_without_pyarrow,
    # a state the batch has not (--format xml is refused by argparse, before the command)
    ("export", P.USAGE): lambda e: ["export", str(e.out), "--state", "bogus"],
    ("export", P.DISK): lambda e: e.disk_full(
        "runner.dataset._export._open_writer", ["export", str(e.out), "--format", "csv"]
    ),
    ("export", P.BATCH_UNUSABLE): lambda e: ["export", e.damaged_pages(), "--format", "jsonl"],
    ("retry", P.OK): lambda e: ["retry", str(e.out), "--api-url", e.url, "--quiet"],
    ("retry", P.USAGE): lambda e: ["retry", str(e.out), "--cell", "f" * 32, "--api-url", e.url],
    ("retry", P.AUTH_OR_FUNDS): lambda e: _no_token(e, ["retry", _failed_batch(e), "--quiet"]),
    ("retry", P.CAP_REACHED): _retry_at_the_cap,
    ("retry", P.DISK): _retry_disk_full,
    ("retry", P.BATCH_UNUSABLE): lambda e: ["retry", e.garbage_record(), "--api-url", e.url],
    ("retry", P.INTERRUPTED): lambda e: _interrupted(
        e, "runner.ops.execute_retry", ["retry", str(e.out)]
    ),
    ("cancel", P.OK): lambda e: ["cancel", str(e.out), "--api-url", e.url],
    ("cancel", P.USAGE): lambda e: ["cancel", str(e.tmp / "nowhere")],
    ("cancel", P.AUTH_OR_FUNDS): lambda e: _no_token(e, ["cancel", _in_flight(e)]),
    ("cancel", P.DISK): lambda e: e.disk_full(
        "runner.ops._cancel.cancel_batch", ["cancel", str(e.out)]
    ),
    ("cancel", P.BATCH_UNUSABLE): lambda e: ["cancel", e.garbage_record()],
    ("verify", P.OK): lambda e: ["verify", str(e.out)],
    ("verify", P.USAGE): lambda e: ["verify", str(e.tmp / "nowhere")],
    ("verify", P.AUTH_OR_FUNDS): lambda e: _no_token(e, ["verify", _deleted_image(e), "--repair"]),
    ("verify", P.DAMAGED): _damaged_image,
    ("verify", P.DISK): _repair_disk_full,
    ("verify", P.BATCH_UNUSABLE): lambda e: ["verify", e.garbage_record(), "--repair"],
    # a database nobody serves: refused at once (no server listens on a free port)
    ("list", P.BATCH_UNUSABLE): lambda e: ["list", "--store", _unreachable_store()],
    ("emulator", P.OK): _emulator_serves,
    ("emulator", P.USAGE): lambda e: ["emulator", "--faults", str(e.tmp / "none.yaml")],
    ("completion", P.OK): lambda e: ["completion", "bash"],
}


def _unreachable_store() -> str:
    from tests.services import free_port

    return f"postgresql://zbatch@127.0.0.1:{free_port()}/none"


# Declared, and not driven here: why. The codes every command shares (COMMON) come from the
# dispatcher alone; they are driven for `plan` and in tests/test_cli.py.
COMMON_ELSEWHERE = "the dispatcher's, driven for plan (and tests/test_cli.py)"
NOT_DRIVEN: dict[tuple[str, ExitCode], str] = {
    ("plan", P.BROKEN_PIPE): "driven in a subprocess: test_a_reader_that_goes_away_is_141",
    ("status", P.DISK): "an I/O error reading batch.sqlite (SQLITE_IOERR): not made here",
    ("report", P.DISK): "an I/O error reading batch.sqlite (SQLITE_IOERR): not made here",
    ("emulator", P.ERROR): "uvicorn failing to serve",
    ("worker", P.OK): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.USAGE): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.AUTH_OR_FUNDS): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.CAP_REACHED): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.DISK): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.BATCH_UNUSABLE): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("worker", P.FENCED): "needs PostgreSQL: tests/test_workers_pg.py (make test-pg)",
    ("completion", P.USAGE): "argparse's alone (a SHELL not offered), before the command runs:"
    " tests/test_cli_completion.py",
}
for _command in COMMANDS:
    for _code in (P.ERROR, P.INTERRUPTED, P.BROKEN_PIPE):
        if _command.name != "plan" and (_command.name, _code) not in CASES:
            NOT_DRIVEN.setdefault((_command.name, _code), COMMON_ELSEWHERE)


@pytest.mark.parametrize(
    ("name", "code"), sorted(CASES), ids=[f"{n}-{int(c)}" for n, c in sorted(CASES)]
)
def test_a_command_ends_with_the_code_it_declares(
    env: Env, name: str, code: ExitCode, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = CASES[(name, code)](env)
    assert argv[0] == name
    got = main(argv)  # strict: an undeclared code fails here
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err


def test_every_declared_code_is_driven_or_excused() -> None:
    declared = {(c.name, code) for c in COMMANDS for code in c.exit_codes}
    assert set(CASES) | set(NOT_DRIVEN) == declared
    assert not set(CASES) & set(NOT_DRIVEN)


def test_the_cap_prints_the_summary_and_ends_through_cap_reached(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 4 is CapReached's, raised by run_batch with the RunOutcome attached: the summary
    (printed from `exc.outcome`, once) on stdout, the error on stderr."""
    assert main(CASES[("run", P.CAP_REACHED)](env)) == 4
    out, err = capsys.readouterr()
    assert out.count("Stopped at the Buzz cap") == 1
    assert err.strip().splitlines()[-1].startswith("zbatch: error: the Buzz cap of 1 stopped")


def test_a_reader_that_goes_away_is_141(tmp_path: Path) -> None:
    """`zbatch plan ... | head -c0`: the reader closed before zbatch wrote; no traceback."""
    (tmp_path / "m.yaml").write_text(MANIFEST.format(budget=100))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "plan", str(tmp_path / "m.yaml"), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the interpreter has even started
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.BROKEN_PIPE, err
    assert b"Traceback" not in err
