"""Issue 17's CLI conventions: help texts an installed user can follow, the top-level help's
environment variables, exit codes and documentation link, `--format` choices, `--json` on
every command that reports, `--color` and NO_COLOR, and output that survives a non-UTF-8
stdout. The commands run as a user runs them: a subprocess in a folder `zbatch init` filled.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.cli._help import DOCS_URL, ENVIRONMENT, REPOSITORY_URL, safe_streams
from runner.cli._parser import COMMANDS, build_parser
from runner.cli._read import EXPORT_FORMATS
from runner.dataset._export import FORMATS
from runner.errors import EXIT_CODES, ExitCode
from runner.log import color_for, set_color

ROOT = Path(__file__).resolve().parent.parent
ANSI = "\x1b["


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_help_text_names_a_repository_path() -> None:
    seen = 0
    for prog, parser in _parsers(build_parser()):
        # argparse may wrap a long address: join it, then take the documentation's out.
        text = re.sub(r"\s*\n\s*/", "/", parser.format_help()).replace(DOCS_URL, "<docs>")
        seen += 1
        assert "jobs/" not in text, prog
        assert "docs/" not in text, (prog, text)
    assert seen == 1 + len(COMMANDS)  # the top level and every command were read


def test_the_export_summary_names_every_format() -> None:
    """Its first line (the command list's too) names each of --format's choices."""
    export = dict(_parsers(build_parser()))["zbatch export"]
    summary = (export.description or "").splitlines()[0].lower()
    for fmt in EXPORT_FORMATS:
        assert fmt in summary, fmt


def test_the_help_links_to_the_documentation_and_zbatch_init() -> None:
    helps = {prog: p.format_help() for prog, p in _parsers(build_parser())}
    assert DOCS_URL in helps["zbatch"]
    assert "zbatch init" in helps["zbatch"]
    assert f"{DOCS_URL}/operations.md" in helps["zbatch run"]
    assert "zbatch init" in helps["zbatch emulator"]  # where its fault profiles come from


def test_the_repository_url_is_the_projects() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Repository"] == REPOSITORY_URL
    assert urls["Documentation"].startswith(DOCS_URL)


def test_the_top_level_help_lists_environment_exit_codes_and_docs() -> None:
    text = build_parser().format_help()
    for names, _ in ENVIRONMENT:
        assert names in text
    for name in ("CIVITAI_API_TOKEN", "CIVITAI_API_BASE_URL", "NO_COLOR", "HTTPS_PROXY"):
        assert name in text
    block = text[text.index("Exit codes:") :]
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^  {int(code)}\s+{re.escape(meaning[:30])}", block, re.M), code
    assert "--color" in text


def test_the_environment_variables_listed_are_read_by_zbatch() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "runner").rglob("*.py"))
    for name in ("CIVITAI_API_TOKEN", "CIVITAI_API_BASE_URL", "NO_COLOR", "HTTPS_PROXY"):
        assert re.search(rf"\b{name}\b", source.replace("ENVIRONMENT", "")), name


CLI_DOC = ROOT / "docs" / "cli.md"
# The commands that report nothing to print as JSON: a server, and a shell script.
NO_REPORT = {
    "emulator": "serves until stopped",
    "completion": "prints a shell script",
    "worker": "logs what it does; the batch's report is zbatch status / report",
}


def test_every_documentation_page_the_help_links_exists() -> None:
    # argparse may break a long address across lines: join every line to the next
    helps = "".join(re.sub(r"\s*\n\s*", "", p.format_help()) for _, p in _parsers(build_parser()))
    pages = set(re.findall(re.escape(DOCS_URL) + r"/([a-z-]+)\.md", helps))
    assert {"cli", "operations", "emulator"} <= pages
    for page in pages:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page


def test_the_cli_page_lists_commands_environment_and_exit_codes() -> None:
    text = CLI_DOC.read_text()
    for command in COMMANDS:
        assert f"| `zbatch {command.name}" in text, command.name
    for names, _ in ENVIRONMENT:
        for name in names.split(", "):
            assert f"`{name}`" in text, name
    for code, meaning in EXIT_CODES.items():
        assert f"| {int(code)} | {meaning} |" in text, code
    assert "## Shell completion" in text


def test_every_command_that_reports_takes_json_and_its_keys_are_documented() -> None:
    text = CLI_DOC.read_text()
    table = text[text.index("## `--json`") : text.index("## Color")]
    for command in COMMANDS:
        sub = dict(_parsers(build_parser()))[f"zbatch {command.name}"]
        flags = {s for a in sub._actions for s in a.option_strings}
        if command.name in NO_REPORT:
            assert "--json" not in flags, command.name
            continue
        assert "--json" in flags, command.name
        assert f"| `{command.name}` |" in table, command.name


def test_json_of_init_retry_and_cancel(tmp_path: Path) -> None:
    """`init`, `retry` and `cancel` with --json: one document on stdout, nothing else."""

    def json_of(*argv: str, code: int = 0) -> dict[str, Any]:
        done = _zbatch(tmp_path, *argv, "--json")
        assert done.returncode == code, done.stderr
        document = json.loads(done.stdout)
        assert isinstance(document, dict)
        return document

    init = json_of("init")
    assert init["manifest"] == "demo.yaml"
    assert "faults/flaky.yaml" in init["wrote"]
    emulator = ("--emulator", "--time-scale", "0", "--quiet")
    capped = json_of("run", "demo.yaml", *emulator, "--budget", "20", code=ExitCode.CAP_REACHED)
    assert capped["stats"]["cap_reached"]
    assert capped["unsubmitted"] > 0
    canceled = json_of("cancel", "out/demo", "--emulator")
    assert canceled["out"] == "out/demo"
    assert canceled["unsubmitted"] == capped["unsubmitted"]
    nothing = json_of("retry", "out/demo", *emulator)  # failed, expired, lost: none
    assert nothing["plan"]["chosen"] == []
    assert nothing["run"] is None
    resumed = json_of("retry", "out/demo", *emulator, "--state", "canceled", "--budget", "100")
    assert resumed["plan"]["canceled_lifted"] is True
    assert len(resumed["plan"]["chosen"]) == capped["unsubmitted"]
    assert resumed["run"]["stats"]["submitted"] == capped["unsubmitted"]


def test_export_format_has_choices_and_they_are_the_datasets() -> None:
    assert EXPORT_FORMATS == FORMATS
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["export", "out", "--format", "xml"])
    assert exc.value.code == 2
    for prog, sub in _parsers(parser):
        for action in sub._actions:
            if "--format" in action.option_strings:
                assert action.choices, prog


def test_color_for_obeys_the_mode_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    monkeypatch.delenv("NO_COLOR", raising=False)
    try:
        set_color("auto")
        assert color_for(tty)
        assert not color_for(pipe)
        monkeypatch.setenv("NO_COLOR", "1")
        assert not color_for(tty)
        monkeypatch.setenv("NO_COLOR", "")  # empty: not set (no-color.org)
        assert color_for(tty)
        set_color("never")
        assert not color_for(tty)
        set_color("always")
        assert color_for(pipe)
    finally:
        set_color("auto")


def test_safe_streams_prints_stand_ins_on_an_ascii_stream() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    safe_streams((stream,))
    stream.write("a · b — c … d é")
    stream.flush()
    assert raw.getvalue() == b"a - b - c ... d ?"


def _zbatch(
    folder: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "zbatch", *argv],
        cwd=folder,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        errors="strict",
        timeout=300,
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `zbatch init`'s examples and the demo run on the emulator (with
    --json: the run's summary as one JSON document)."""
    folder = tmp_path_factory.mktemp("conventions")
    assert _zbatch(folder, "init").returncode == 0
    done = _zbatch(folder, "run", "demo.yaml", "--emulator", "--time-scale", "0", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["stats"]["submitted"] == 12
    assert summary["budget"]["charged_buzz"] > 0
    assert summary["out"].endswith("demo")
    return folder


@pytest.mark.parametrize(
    ("argv", "key", "check"),
    [
        (["export", "out/demo", "--format", "jsonl"], "rows", 12),
        (["gallery", "out/demo"], "cells", 12),
        (["verify", "out/demo"], "checked", 12),
    ],
)
def test_json_on_commands_that_report(batch: Path, argv: list[str], key: str, check: int) -> None:
    done = _zbatch(batch, *argv, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # nothing else on stdout
    assert document[key] == check


def test_verify_json_says_intact(batch: Path) -> None:
    document = json.loads(_zbatch(batch, "verify", "out/demo", "--json").stdout)
    assert document["intact"] is True
    assert document["damaged"] == 0


def test_color_never_and_no_color_leave_no_escape_and_always_gives_some(batch: Path) -> None:
    def run(name: str, *flags: str, env: dict[str, str] | None = None) -> str:
        out = f"out/{name}"
        manifest = batch / f"{out.replace('/', '-')}.yaml"
        text = (batch / "demo.yaml").read_text()
        manifest.write_text(re.sub(r"^out: .*$", f"out: {out}", text, flags=re.M))
        done = _zbatch(
            batch, *flags, "run", manifest.name, "--emulator", "--time-scale", "0",
            "--faults", "faults/flaky.yaml", env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert ANSI not in run("never", "--color", "never")
    assert ANSI not in run("no-color", env={"NO_COLOR": "1"})
    assert ANSI in run("always", "--color", "always")


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "out/demo"],
        ["report", "out/demo"],
        ["list", "."],
        ["run", "demo.yaml", "--emulator"],
    ],
)
def test_an_ascii_stdout_gets_stand_ins_not_a_crash(batch: Path, argv: list[str]) -> None:
    done = _zbatch(batch, *argv, env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.isascii()
    assert done.stdout.strip()
    assert "·" not in done.stdout


SGR = re.compile(r"\x1b\[[0-9;]*m")  # a color or text style (bold, dim): what NO_COLOR forbids


def _on_a_terminal(
    folder: Path, argv: list[str], env: dict[str, str], *, until: str | None = None
) -> tuple[int, str]:
    """Run zbatch with stdin, stdout and stderr on a pseudo-terminal (as in a user's shell);
    its exit code and everything it wrote. With `until`, Ctrl-C once that text was written."""
    import pty
    import select
    import signal

    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zbatch", *argv],
        cwd=folder,
        env={**base, "TERM": "xterm-256color", "COLUMNS": "100", **env},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    written, interrupted = b"", False
    try:
        while select.select([controller], [], [], 120)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            written += chunk
            if until and not interrupted and until.encode() in written:
                proc.send_signal(signal.SIGINT)
                interrupted = True
    finally:
        os.close(controller)
        if proc.poll() is None and not interrupted:
            proc.kill()
    return proc.wait(timeout=60), written.decode("utf-8", "replace")


def _each_command(batch: Path, name: str) -> list[tuple[list[str], str | None]]:
    """Every command once, as a user runs it: argv and (for the server) when to stop it.
    `run` makes a batch of its own (out/NAME), which retry and cancel then use."""
    manifest = batch / f"{name}.yaml"
    text = re.sub(r"^out: .*$", f"out: out/{name}", (batch / "demo.yaml").read_text(), flags=re.M)
    manifest.write_text(text)
    emulator = ["--emulator", "--time-scale", "0"]
    return [
        (["--help"], None),
        (["init", f"init-{name}"], None),
        (["plan", manifest.name], None),
        (
            [
                "run",
                manifest.name,
                "--emulator",
                "--time-scale",
                "0.02",
                "--faults",
                "faults/flaky.yaml",
            ],
            None,
        ),  # fmt: skip
        (["status", f"out/{name}"], None),
        (["list", "."], None),
        (["gallery", "out/demo"], None),
        (["export", "out/demo", "--to", f"{name}.jsonl"], None),
        (["report", "out/demo"], None),
        (["retry", f"out/{name}", *emulator], None),
        (["cancel", f"out/{name}", "--emulator"], None),
        (["verify", "out/demo"], None),
        (["emulator", "--port", "0"], "startup complete"),
        (["completion", "bash"], None),
        (["worker", "--help"], None),  # its runs need PostgreSQL: tests/test_workers_pg.py
    ]


LIVE = {"run", "retry"}  # a live display: it moves the cursor to redraw, in any mode


@pytest.mark.parametrize(
    ("name", "flags", "env"),
    [("no-color", [], {"NO_COLOR": "1"}), ("never", ["--color", "never"], {})],
)
def test_no_command_writes_a_color_on_a_terminal_under_no_color_or_never(
    batch: Path, name: str, flags: list[str], env: dict[str, str]
) -> None:
    runs = _each_command(batch, name)
    assert {argv[0] for argv, _ in runs} - {"--help"} == {c.name for c in COMMANDS}
    for argv, until in runs:
        code, written = _on_a_terminal(batch, [*flags, *argv], env, until=until)
        assert code == (ExitCode.INTERRUPTED if until else ExitCode.OK), (argv, written)
        assert "Traceback" not in written, argv
        assert not SGR.search(written), (argv, SGR.findall(written)[:5])
        if argv[0] not in LIVE:
            assert "\x1b" not in written, (argv, written[:300])


def test_on_a_terminal_color_is_written_unless_told_not_to(batch: Path) -> None:
    """The control for the test above: the same terminal does get colors by default."""
    for argv, until in _each_command(batch, "colored"):
        if argv[0] in ("run", "emulator"):
            code, written = _on_a_terminal(batch, argv, {}, until=until)
            assert code == (ExitCode.INTERRUPTED if until else ExitCode.OK), written
            assert SGR.search(written), argv
