"""Every command that opens a batch, against a record kept in PostgreSQL (`--store`,
`ZBATCH_STORE`): the same batch driven through the same commands on SQLite and on
PostgreSQL prints the same, the password is never shown, and a database that cannot be
reached, holds no batch or holds another batch is one clear line with its exit code.

`make test` runs these (tests/test_store_pg.py's cluster, one database each).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.cli._main import main
from runner.errors import ExitCode
from tests.services import PostgresCluster, free_port

SECRET = "s3cret-Pa55word-commands"
MANIFEST = (
    "name: twin\nout: {out}\nbudget: 4\ndefaults: {{size: 64x64}}\n"
    "grid: {{prompt: [a fox, a bowl], seed: {{count: 3}}}}\n"
)
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")
RATE = re.compile(r"(?:-|\d+(?:\.\d+)?) (?=(?:cells/min|submits/s|images/min)\b)")
VARYING = {"last_event_at", "first_event_at", "created_at", "last_activity", "wall_s"}


@pytest.fixture
def database(pg_cluster: PostgresCluster) -> Iterator[str]:
    with pg_cluster.new_database() as url:
        yield url


def _with_password(url: str) -> str:
    """`url` with a password (the test cluster trusts loopback: any password opens it)."""
    return url.replace("postgres@", f"postgres:{SECRET}@")


class Driver:
    """Runs zbatch commands in-process, keeping what each printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str], out: Path, record: str) -> None:
        self.capsys, self.out, self.record = capsys, out, record
        self.printed: list[str] = []

    def __call__(self, *argv: str) -> tuple[int, str]:
        code = main(list(argv))
        got = self.capsys.readouterr()
        self.printed += [got.out, got.err]
        text = got.out.replace(f" --store {self.record}", "")  # said where it is needed
        text = text.replace(self.record, "RECORD").replace(str(self.out), "OUT")
        return code, RATE.sub("RATE ", TIME.sub("TIME", text))  # rates are times too

    def json(self, *argv: str) -> tuple[int, Any]:
        code, text = self(*argv, "--json")
        return code, _steady(json.loads(text))


def _steady(doc: Any) -> Any:
    """`doc` without what differs from one run to the next (times, rates)."""
    if isinstance(doc, dict):
        return {k: _steady(v) for k, v in doc.items() if k not in VARYING | {"images_per_min"}}
    if isinstance(doc, list):
        return [_steady(v) for v in doc]
    return doc


def _export_rows(path: Path) -> list[tuple[Any, ...]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted((r["file_name"], r["sha256"], r["prompt"], r["seed"]) for r in rows)


def _drive(z: Driver, manifest: Path, listing: list[str]) -> list[object]:  # long: one scenario
    """One batch through every command: capped, canceled, retried, read, damaged, repaired."""
    out = z.out
    seen: list[object] = [z("run", str(manifest), "--emulator", "--time-scale", "0", "--quiet")]
    seen.append(z.json("status", str(out)))
    seen.append(z.json("cancel", str(out), "--emulator"))
    retry = ("retry", str(out), "--state", "canceled", "--budget", "20", "--emulator")
    seen.append(z(*retry, "--time-scale", "0", "--quiet"))
    seen.append(z.json("status", str(manifest)))  # OUT given as the manifest
    seen.append(z("status", str(out)))
    seen.append(z("status", str(out), "--watch", "--interval", "0.05"))  # ends: nothing open
    seen.append(z.json("report", str(out)))
    code, done = z.json("export", str(out))
    seen += [code, done, _export_rows(out / "export" / "dataset.jsonl")]
    seen.append(z.json("gallery", str(out)))
    assert (out / "gallery" / "index.html").is_file()
    seen.append(z.json("verify", str(out)))
    first = sorted((out / "images").rglob("*.jpg"))[0]
    first.unlink()
    seen.append(z.json("verify", str(out)))
    seen.append(z.json("verify", str(out), "--repair", "--emulator"))
    assert first.is_file()
    seen.append(z.json("verify", str(out)))
    code, lines = z.json("list", *listing)
    seen.append((code, [{k: v for k, v in line.items() if k != "path"} for line in lines]))
    return seen


def test_every_command_reads_and_writes_a_postgresql_record_as_it_does_sqlite(
    tmp_path: Path,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same batch on SQLite and on PostgreSQL (ZBATCH_STORE, with a password): run
    capped, cancel, retry, status (and --watch, and OUT as a manifest), report, export,
    gallery, verify, verify --repair, list: each prints the same (times aside), the record
    is in PostgreSQL alone, and the password is in no output, log or file."""
    seen: dict[str, list[object]] = {}
    printed: list[str] = []
    for backend in ("sqlite", "postgresql"):
        folder = tmp_path / backend
        folder.mkdir()
        out = folder / "out"
        manifest = folder / "m.yaml"
        manifest.write_text(MANIFEST.format(out=out), encoding="utf-8")
        if backend == "postgresql":
            monkeypatch.setenv("ZBATCH_STORE", _with_password(database))
            record, listing = database, []
        else:
            monkeypatch.delenv("ZBATCH_STORE", raising=False)
            record, listing = str(out / "batch.sqlite"), [str(folder)]
        z = Driver(capsys, out, record)
        seen[backend] = _drive(z, manifest, listing)
        printed += z.printed
    for n, (on_pg, on_sqlite) in enumerate(zip(seen["postgresql"], seen["sqlite"], strict=True)):
        assert on_pg == on_sqlite, n
    codes = [s[0] for s in seen["sqlite"] if isinstance(s, tuple)]
    assert codes[:3] == [ExitCode.CAP_REACHED, 0, 0]  # capped, then canceled
    assert ExitCode.DAMAGED in codes  # the image deleted was found
    assert seen["sqlite"][3][1].startswith("retry       2 cells get a new attempt")  # type: ignore[index]
    out = tmp_path / "postgresql" / "out"
    assert not (out / "batch.sqlite").exists()
    with psycopg.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE state = 'succeeded'").fetchone() == (
            6,
        )
    every_file = "".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in (tmp_path / "postgresql").rglob("*")
        if p.is_file() and p.suffix in {".jsonl", ".json", ".html", ".txt", ".yaml", ""}
    )
    assert "postgresql://postgres@127.0.0.1" in "".join(printed)  # the URL is shown...
    for text in [*printed, every_file]:
        assert SECRET not in text  # ... never its password


# -- refusals: one line each, the documented code, no password ------------------------------

READERS = (
    ["status", "{out}"],
    ["status", "{out}", "--watch"],
    ["report", "{out}"],
    ["export", "{out}"],
    ["gallery", "{out}"],
    ["verify", "{out}"],
    ["list"],
)
WRITERS = (
    ["verify", "{out}", "--repair", "--emulator"],
    ["retry", "{out}", "--emulator"],
    ["cancel", "{out}", "--emulator"],
)


def _refused(
    argv: list[str], out: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    args = [a.format(out=out) for a in argv]
    code = main([*args, "--store", store])
    got = capsys.readouterr()
    assert SECRET not in got.out + got.err
    assert "Traceback" not in got.err
    return code, got.err


@pytest.mark.parametrize("argv", READERS + WRITERS, ids=lambda a: " ".join(a[:1] + a[2:]))
def test_an_unreachable_store_is_one_line_and_exit_7(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"postgresql://zb:{SECRET}@127.0.0.1:{free_port()}/nothing?sslpassword={SECRET}"
    code, err = _refused(argv, tmp_path, store, capsys)
    assert code == ExitCode.BATCH_UNUSABLE, err
    assert err.startswith("zbatch: error: cannot connect to postgresql://zb@127.0.0.1:"), err
    assert len(err.strip().splitlines()) <= 2, err


def test_a_database_with_no_batch_is_refused_and_left_empty(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command but `list` (which says so, below) on one empty database."""
    for argv in READERS[:-1] + WRITERS:
        code, err = _refused(argv, tmp_path, _with_password(database), capsys)
        assert code == ExitCode.USAGE, (argv, err)
        assert "holds no zbatch batch" in err, (argv, err)
    with psycopg.connect(database) as db:  # no command but `run` gives it a schema
        assert db.execute("SELECT to_regclass('schema_version')").fetchone() == (None,)


def test_list_says_a_database_with_no_batch_has_none(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--store", _with_password(database)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"no batch in {database}")
    assert SECRET not in said


def test_a_manifest_naming_another_batch_is_refused(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database holds one batch: OUT given as a manifest of another name is refused."""
    first = tmp_path / "first.yaml"
    first.write_text(MANIFEST.format(out=tmp_path / "out"), encoding="utf-8")
    store = _with_password(database)
    run = ["run", str(first), "--emulator", "--time-scale", "0", "--quiet", "--store", store]
    assert main(run) == ExitCode.CAP_REACHED
    other = tmp_path / "other.yaml"
    other.write_text(first.read_text().replace("name: twin", "name: other"), encoding="utf-8")
    capsys.readouterr()
    for argv in (["status", "{out}"], ["cancel", "{out}", "--emulator"]):
        code, err = _refused(argv, other, store, capsys)
        argv_text = " ".join(argv)
        assert code == ExitCode.USAGE, (argv_text, err)
        assert "holds the batch 'twin', not the manifest's 'other'" in err, err
    assert main(["status", str(first), "--store", store]) == 0


def test_a_runner_holding_the_batch_on_another_host_is_seen_and_waited_for(
    tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session holding the runner's advisory lock (a `zbatch run` anywhere): `list` says
    the batch is running, `cancel` is refused as in use (exit 7); once it lets go, `cancel`
    goes through."""
    from runner.store._pg_open import _BATCH_LOCK

    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(out=tmp_path / "out"), encoding="utf-8")
    store = _with_password(database)
    run = ["run", str(manifest), "--emulator", "--time-scale", "0", "--quiet", "--store", store]
    assert main(run) == ExitCode.CAP_REACHED
    capsys.readouterr()
    with psycopg.connect(database, autocommit=True) as runner:
        runner.execute("SELECT pg_advisory_lock(%s)", (_BATCH_LOCK,))
        assert main(["list", "--store", store, "--json"]) == 0
        (line,) = json.loads(capsys.readouterr().out)
        assert (line["state"], line["path"], line["cells"]["open"]) == ("running", database, 2)
        code, err = _refused(["cancel", "{out}", "--emulator"], tmp_path / "out", store, capsys)
        assert code == ExitCode.BATCH_UNUSABLE, err
        assert "is in use by another zbatch" in err, err
    assert main(["cancel", str(tmp_path / "out"), "--emulator", "--store", store]) == 0
    capsys.readouterr()
    assert main(["list", "--store", store, "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    assert (line["state"], line["cells"]["open"]) == ("failed cells", 0)
