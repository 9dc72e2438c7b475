"""The CLI: every subcommand has help, bad flags exit 2 with a message naming what is allowed,
and every exit code a command can end with is in its --help and errors.py's table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import structlog

from runner.cli import _main
from runner.cli._command import COMMON, Command
from runner.cli._main import checked, dispatch, main
from runner.cli._parser import COMMANDS, build_parser
from runner.errors import EXIT_CODES, ExitCode, UsageError

ROOT = Path(__file__).resolve().parent.parent
BY_NAME = {command.name: command for command in COMMANDS}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("zbatch has no subcommands")


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_help_with_an_example(name: str) -> None:
    sub = _subcommands()[name]
    assert sub.description, f"zbatch {name} has no help"
    assert "Example:" in sub.description, f"zbatch {name} help has no Example: block"


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_is_documented(name: str) -> None:
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    assert f"zbatch {name}" in docs, f"zbatch {name} is not mentioned in README.md or docs/"


def test_version_and_help_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "emulator" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["emulator", "--time-scale", "-1"], "'-1' must be a finite number >= 0"),
        (["emulator", "--time-scale", "fast"], "'fast' is not a number"),
        (["emulator", "--port", "http"], "invalid int value: 'http'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# -- exit codes: declared, in the help, in the table ---------------------------------------


def help_exit_codes(text: str) -> dict[int, str]:
    """The `Exit codes:` block of a help text: code -> its (unwrapped) meaning."""
    block = text.split("\nExit codes:\n", 1)[1]
    found: dict[int, str] = {}
    code = None
    for line in block.splitlines():
        head = re.match(r"  (\d+) +(.*)", line)
        if head:
            code = int(head.group(1))
            found[code] = head.group(2)
        elif line.startswith(" " * 7) and code is not None:
            found[code] += " " + line.strip()
        else:
            break
    return found


def test_the_table_names_every_exit_code() -> None:
    assert set(EXIT_CODES) == set(ExitCode)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_help_lists_exactly_the_exit_codes_the_command_declares(name: str) -> None:
    """Every code the command can return (its declared set, which the dispatcher enforces)
    is in its --help with the table's meaning, and the help lists no other."""
    command = BY_NAME[name]
    listed = help_exit_codes(_subcommands()[name].format_help())
    assert set(listed) == {int(c) for c in command.exit_codes}
    for code in command.exit_codes:
        assert code in EXIT_CODES, f"zbatch {name} may exit {code}, which the table lacks"
        assert listed[code].startswith(EXIT_CODES[code]), (name, code, listed[code])
    assert COMMON <= command.exit_codes
    assert "Exit codes" not in command.doc, f"zbatch {name}: exit codes written by hand"


@pytest.mark.parametrize("name", ["retry", "cancel"])
def test_a_batch_in_use_is_exit_7_in_the_help(name: str) -> None:
    listed = help_exit_codes(_subcommands()[name].format_help())
    assert "in use" in listed[ExitCode.BATCH_UNUSABLE]
    assert "in use" not in listed[ExitCode.ERROR]


def test_top_level_help_lists_the_whole_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert help_exit_codes(capsys.readouterr().out) == {int(c): t for c, t in EXIT_CODES.items()}


def _fake(code: int, exits: frozenset[ExitCode] = frozenset()) -> Command:
    def run(args: argparse.Namespace) -> int:
        """A command for the dispatcher's tests."""
        if code == ExitCode.USAGE:
            raise UsageError("wrong")
        return code

    return Command("fake", run, lambda p: None, exits=exits)


def test_the_dispatcher_maps_errors_and_refuses_an_undeclared_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace()
    assert checked(_fake(2), dispatch(_fake(2), args)) == 2
    assert "zbatch: error: wrong" in capsys.readouterr().err
    declared = _fake(5, frozenset({ExitCode.DAMAGED}))
    assert checked(declared, dispatch(declared, args)) == 5
    with pytest.raises(AssertionError, match="zbatch fake exited 5, not in"):
        checked(_fake(5), 5)
    monkeypatch.setattr(_main, "STRICT_EXIT_CODES", False)  # as zbatch runs: logged, returned
    with structlog.testing.capture_logs() as logs:
        assert checked(_fake(5), 5) == 5
    assert [e["event"] for e in logs] == ["exit_code_undeclared"]


# -- one set of bounds for run's and retry's engine options -------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--concurrency", "0", "'0' must be at least 1"),
        ("--concurrency", str(10**12), f"'{10**12}' must be at most 10000"),
        ("--concurrency", "2.5", "'2.5' is not a whole number"),
        ("--rate", "0", "'0' must be between 0.01 and 1000"),
        ("--rate", str(10**12), f"'{10**12}' must be between 0.01 and 1000"),
        ("--rate", "nan", "'nan' must be a finite number >= 0"),
        ("--downloads", "0", "'0' must be at least 1"),
        ("--downloads", "257", "'257' must be at most 256"),
        ("--time-scale", "1e300", "'1e300' must be at most 1000"),
    ],
)
@pytest.mark.parametrize("command", ["run", "retry"])
def test_run_and_retry_refuse_the_same_engine_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    flag: str,
    value: str,
    message: str,
) -> None:
    """`retry --concurrency 0` and `10**12` are refused as `run` refuses them (the manifest's
    bounds, SETTING_RANGES), before anything is read."""
    with pytest.raises(SystemExit) as exc:
        main([command, str(tmp_path / "x"), flag, value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument {flag}: {message}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--attempts", "0"], "argument --attempts: '0' must be at least 1"),
        (["--attempts", "101"], "argument --attempts: '101' must be at most 100"),
        (["--captions", "json"], "argument --captions: 'json' is not a captions mode"),
    ],
)
def test_retry_refuses_settings_outside_the_manifest_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["retry", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
