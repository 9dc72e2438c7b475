"""The CLI: every subcommand has help, bad flags exit 2 with a message naming what is allowed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runner.cli._main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


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
