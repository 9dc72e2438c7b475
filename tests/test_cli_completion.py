"""Issue 17 item 6, shell completion: `zbatch completion SHELL` prints a script generated from
the parser (shtab) that names every command, every flag and `--format`'s and `--color`'s
choices, and completes a batch folder as a folder and a manifest as a file. The bash script
is exercised by bash itself: its completion function, given COMP_WORDS and COMP_CWORD as
bash's `complete -F` hands them, answers with the words a user's Tab would offer.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli._completion import SHELLS
from runner.cli._parser import COMMANDS, build_parser
from runner.cli._read import EXPORT_FORMATS
from runner.log import COLOR_MODES

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = "_shtab_zbatch"  # the function the bash script registers with `complete -F`


def _script(shell: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "completion", shell],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "zbatch.bash"
    path.write_text(_script("bash"))
    return path


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("zbatch has no subcommands")


def test_the_bash_script_names_every_command_flag_and_choice(bash_script: Path) -> None:
    text = bash_script.read_text()
    assert f"complete -o bashdefault -F {FUNCTION} zbatch" in text
    listed = text.split(f"{FUNCTION}_subparsers=(", 1)[1].split(")", 1)[0].split()
    assert listed == [c.name for c in COMMANDS]  # every command, in --help's order
    assert f"_shtab_zbatch_export___format_choices=({' '.join(EXPORT_FORMATS)})" in text
    assert f"_shtab_zbatch___color_choices=({' '.join(COLOR_MODES)})" in text
    for name, sub in _subparsers(build_parser()).items():
        for flag in _flags(sub):
            assert flag in text, (name, flag)


@pytest.mark.parametrize("shell", [s for s in SHELLS if s != "bash"])
def test_the_other_shells_scripts_name_every_command_and_format(shell: str) -> None:
    text = _script(shell)
    for command in COMMANDS:
        assert command.name in text, (shell, command.name)
    for fmt in EXPORT_FORMATS:
        assert fmt in text, (shell, fmt)


def test_a_shell_not_offered_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "completion", "cmd.exe"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "invalid choice: 'cmd.exe'" in done.stderr
    assert done.stdout == ""


def _complete(script: Path, cwd: Path, *words: str) -> list[str]:
    """What bash's Tab offers after `words` (the last one the word being completed): the
    script's function run as `complete -F` runs it, COMPREPLY one word a line."""
    bash = shutil.which("bash")
    assert bash is not None, "the completion test needs bash (the machine's /bin/bash)"
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("zbatch", *words))
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words)}\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        f'{FUNCTION} zbatch "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_the_commands(bash_script: Path, tmp_path: Path) -> None:
    assert _complete(bash_script, tmp_path, "") == [c.name for c in COMMANDS]
    assert _complete(bash_script, tmp_path, "st") == ["status"]
    assert sorted(_complete(bash_script, tmp_path, "re")) == ["report", "retry"]
    assert _complete(bash_script, tmp_path, "comp") == ["completion"]


def test_bash_completes_flags_and_their_choices(bash_script: Path, tmp_path: Path) -> None:
    assert _complete(bash_script, tmp_path, "export", "out", "--format", "") == list(EXPORT_FORMATS)
    assert _complete(bash_script, tmp_path, "export", "out", "--format", "w") == ["webdataset"]
    assert _complete(bash_script, tmp_path, "--color", "") == list(COLOR_MODES)
    assert _complete(bash_script, tmp_path, "completion", "") == list(SHELLS)
    offered = _complete(bash_script, tmp_path, "run", "demo.yaml", "--em")
    assert offered == ["--emulator"]
    assert "--json" in _complete(bash_script, tmp_path, "status", "out", "--")


def test_bash_completes_a_batch_folder_as_a_folder_and_a_manifest_as_a_file(
    bash_script: Path, tmp_path: Path
) -> None:
    (tmp_path / "out" / "demo").mkdir(parents=True)
    (tmp_path / "out" / "demo" / "batch.sqlite").write_bytes(b"")
    (tmp_path / "overnight.yaml").write_text("name: overnight\n")
    # OUT: folders only (a batch folder is a folder holding batch.sqlite)
    assert _complete(bash_script, tmp_path, "status", "o") == ["out"]
    assert _complete(bash_script, tmp_path, "verify", "out/") == ["out/demo"]
    # a manifest: files
    assert _complete(bash_script, tmp_path, "run", "ov") == ["overnight.yaml"]
    assert _complete(bash_script, tmp_path, "plan", "overnight.y") == ["overnight.yaml"]
