"""Hostile input: every bad manifest, prompt file and flag ends in one message and exit 2.

Each row runs ``zbatch`` through ``runner.cli._main.main`` and checks the exit code (2), the exact
``zbatch: error:`` message (file:line:column, the field, the value, what is allowed), that
no traceback was printed and that nothing was written: no file under the folder appears,
changes or disappears, so no ``out`` folder, database or log was created, and nothing was
spent. ``{m}`` is the manifest's path, ``{d}`` its folder and ``{t}`` the folder above it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli._main import main

HEAD = "name: t\nout: out\nbudget: 100\n"
GRID = "grid: {prompt: p}\n"
SEED_FORMS = "an int64, random, a list of int64s, {count: N} or {range: [A, B]}"
UTF8 = "allowed: UTF-8 text; save the file as UTF-8"
BINARY = "it is binary, not text (allowed: printable characters, tabs and newlines)"
IN_FOLDER = "allowed: a file inside the manifest's folder"
TAGS = "allowed: values, lists and mappings without tags, or !!str"
MIB = 2**20
LONE = (
    "the text holds a lone surrogate \\u{}: it is not Unicode and the service refuses it"
    " (allowed: Unicode text; write a character outside the BMP as itself or as one escape"
    " such as \\U0001F600, not as two \\u escapes)"
)


def _bomb() -> str:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        text += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    return text


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with path.open("wb") as handle:
            handle.truncate(size)  # 100 MiB of zeros without writing them

    return make


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


File = str | bytes | Callable[[Path], None]

# (id, files under {d} (m.yaml is the manifest), command, expected stderr error lines)
CASES: list[tuple[str, dict[str, File], list[str], list[str]]] = [
    # --- the manifest file itself ----------------------------------------------------------
    (
        "invalid-utf8",
        {"m.yaml": b"name: t\nout: out\xff\nbudget: 1\n"},
        ["run", "{m}"],
        [f"{{m}}:2:9: is not UTF-8 text (byte 0xff; {UTF8})"],
    ),
    (
        "utf16-bom",
        {"m.yaml": (HEAD + GRID).encode("utf-16")},
        ["run", "{m}"],
        [f"{{m}}:1:1: is UTF-16 text ({UTF8})"],
    ),
    (
        "control-character",
        {"m.yaml": HEAD + "grid: {prompt: 'a\x1b[2Jb'}\n"},
        ["run", "{m}"],
        [f"{{m}}:4:18: holds the control character U+001B: {BINARY}"],
    ),
    (
        "nul-byte",
        {"m.yaml": b"name: t\x00\n"},
        ["plan", "{m}"],
        [f"{{m}}:1:8: holds the control character U+0000: {BINARY}"],
    ),
    (
        "tab-indentation",
        {"m.yaml": HEAD + "grid:\n\tprompt: p\n"},
        ["run", "{m}"],
        [
            "{m}:5:1: YAML syntax error: a tab"
            " (allowed: spaces for indentation; YAML does not allow tabs there)"
        ],
    ),
    (
        "billion-laughs",
        {"m.yaml": _bomb()},
        ["run", "{m}"],
        ["{m}:6:4: the YAML expands to more than 1000000 values (through aliases?)"],
    ),
    (
        "alias-cycle",
        {"m.yaml": HEAD + "grid: &g {prompt: p, x: *g}\n"},
        ["run", "{m}"],
        ["{m}:4:7: a YAML alias refers to a value that contains it"],
    ),
    (
        "deep-nesting",
        {"m.yaml": "a: " + "[" * 100_000 + "]" * 100_000 + "\n"},
        ["run", "{m}"],
        ["{m}:1:36: YAML nesting is too deep (allowed 32 levels)"],
    ),
    (
        "100-MiB-manifest",
        {"m.yaml": _sparse(100 * MIB)},
        ["run", "{m}"],
        ["{m}: is 100 MiB (allowed: at most 4 MiB)"],
    ),
    (
        "manifest-is-a-folder",
        {"m.yaml/x": "x"},
        ["run", "{m}"],
        ["{m}: is a folder (allowed: a YAML manifest file)"],
    ),
    (
        "manifest-missing",
        {},
        ["plan", "{m}"],
        ["{m}: does not exist (allowed: a YAML manifest file)"],
    ),
    (
        "manifest-is-a-fifo",
        {"m.yaml": os.mkfifo},
        ["run", "{m}"],
        ["{m}: is not a regular file (allowed: a YAML manifest file)"],
    ),
    (
        "empty-manifest",
        {"m.yaml": "# nothing\n"},
        ["run", "{m}"],
        ["{m}:1:1: the manifest is empty (required: name, out, budget)"],
    ),
    # --- YAML that parses but is not a manifest --------------------------------------------
    (
        "duplicate-key",
        {"m.yaml": HEAD + "budget: 5\n" + GRID},
        ["run", "{m}"],
        ["{m}:4:1: budget: duplicate key (first given at {m}:3:1)"],
    ),
    (
        "non-string-key",
        {"m.yaml": HEAD + "grid: {prompt: p, 3: 4}\n"},
        ["run", "{m}"],
        ["{m}:4:19: grid: key 3 is not a string (allowed: a name; quote it if need be)"],
    ),
    (
        "python-tag",
        {"m.yaml": HEAD + "grid: {prompt: !!python/object/apply:os.system [ls]}\n"},
        ["run", "{m}"],
        [f"{{m}}:4:16: the YAML tag !!python/object/apply:os.system is not supported ({TAGS})"],
    ),
    (
        "seed-above-int64",
        {"m.yaml": HEAD + "grid: {prompt: p, seed: 9223372036854775808}\n"},
        ["run", "{m}"],
        [f"{{m}}:4:25: grid.seed: 9223372036854775808 is not a seed (allowed: {SEED_FORMS})"],
    ),
    (
        "seed-base-below-int64",
        {"m.yaml": HEAD + "seed_base: -9223372036854775809\n" + GRID},
        ["run", "{m}"],
        [
            "{m}:4:12: seed_base: -9223372036854775809 is out of range"
            " (allowed -9223372036854775808..9223372036854775807)"
        ],
    ),
    (
        "seed-count-past-int64",
        {"m.yaml": HEAD + "seed_base: 9223372036854775807\ngrid: {prompt: p, seed: {count: 2}}\n"},
        ["run", "{m}"],
        [
            "{m}:5:33: grid.seed.count: the seeds would pass the int64 maximum"
            " (9223372036854775807..9223372036854775808)"
        ],
    ),
    (
        "invalid-date-as-seed",
        {"m.yaml": HEAD + "grid: {prompt: p, seed: 2020-13-45}\n"},
        ["run", "{m}"],
        [f"{{m}}:4:25: grid.seed: '2020-13-45' is not a seed (allowed: {SEED_FORMS})"],
    ),
    (
        "nan-and-infinity",
        {"m.yaml": HEAD + "grid: {prompt: p, cfgScale: .nan, steps: .inf, quantity: -.inf}\n"},
        ["run", "{m}"],
        [
            "{m}:4:29: grid.cfgScale: nan is not a number (allowed 0..30)",
            "{m}:4:42: grid.steps: inf is not an integer (allowed 1..150)",
            "{m}:4:58: grid.quantity: -inf is not an integer (allowed 1..12)",
        ],
    ),
    (
        "nan-in-settings",
        {"m.yaml": "name: t\nout: out\nbudget: .inf\nlimits: {submit_per_s: .nan}\n" + GRID},
        ["run", "{m}"],
        [
            "{m}:3:9: budget: inf is not a Buzz cap (allowed: a whole number 1..1000000000000)",
            "{m}:4:24: limits.submit_per_s: nan is not allowed (allowed: a number 0.01..1000)",
        ],
    ),
    (
        "infinite-lora-strength",
        {"m.yaml": HEAD + "grid: {prompt: p, loras: {'urn:air:zImage:lora:civitai:1@2': .inf}}\n"},
        ["run", "{m}"],
        [
            "{m}:4:62: grid.loras['urn:air:zImage:lora:civitai:1@2']: inf is not a number"
            " (allowed: a LoRA strength, typically 0..2)"
        ],
    ),
    (
        "budget-past-int64-sums",
        {"m.yaml": "name: t\nout: out\nbudget: 99999999999999999999\n" + GRID},
        ["run", "{m}"],
        [
            "{m}:3:9: budget: 99999999999999999999 is not a Buzz cap"
            " (allowed: a whole number 1..1000000000000)"
        ],
    ),
    # --- out ------------------------------------------------------------------------------
    (
        "out-missing",
        {"m.yaml": "name: t\nbudget: 100\n" + GRID},
        ["run", "{m}"],
        ["{m}:1:1: out: missing (required: the output folder, relative to this file)"],
    ),
    (
        "out-is-a-file",
        {"m.yaml": HEAD + GRID, "out": "not a folder"},
        ["run", "{m}"],
        [
            "{m}:2:6: out: 'out' is an existing file"
            " (allowed: a folder, or a path that does not exist yet)"
        ],
    ),
    (
        "out-under-a-file",
        {"m.yaml": "name: t\nout: notes.txt/out\nbudget: 100\n" + GRID, "notes.txt": "x"},
        ["run", "{m}"],
        [
            "{m}:2:6: out: 'notes.txt/out' lies under {d}/notes.txt, which is a file"
            " (allowed: a folder path)"
        ],
    ),
    (
        "out-with-nul",
        {"m.yaml": 'name: t\nout: "a\\0b"\nbudget: 100\n' + GRID},
        ["run", "{m}"],
        ["{m}:2:6: out: 'a\\x00b' holds a NUL character (allowed: a path)"],
    ),
    # --- prompt files ---------------------------------------------------------------------
    (
        "prompt-file-escapes-with-dotdot",
        {"m.yaml": HEAD + "grid: {prompt: {file: ../secret.txt}}\n"},
        ["run", "{m}"],
        [
            "{m}:4:23: grid.prompt.file: '../secret.txt' leaves the manifest's folder"
            " (allowed: a path inside {d})"
        ],
    ),
    (
        "prompt-file-absolute",
        {"m.yaml": HEAD + "grid: {prompt: {file: /etc/hostname}}\n"},
        ["run", "{m}"],
        [
            "{m}:4:23: grid.prompt.file: '/etc/hostname' leaves the manifest's folder"
            " (allowed: a path inside {d})"
        ],
    ),
    (
        "prompt-file-symlink-out",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.txt}}\n", "p.txt": _symlink("../secret.txt")},
        ["run", "{m}"],
        [
            "{m}:4:23: grid.prompt.file: 'p.txt' leaves the manifest's folder"
            " (allowed: a path inside {d})"
        ],
    ),
    (
        "prompt-file-symlink-loop",
        {
            "m.yaml": HEAD + "grid: {prompt: {file: a}}\n",
            "a": _symlink("b"),
            "b": _symlink("a"),
        },
        ["run", "{m}"],
        ["{m}:4:23: grid.prompt.file: 'a' cannot be resolved (a loop of symbolic links)"],
    ),
    (
        "prompt-file-missing",
        {"m.yaml": HEAD + "grid: {prompt: {file: none.txt}}\n"},
        ["run", "{m}"],
        [f"{{m}}:4:23: grid.prompt.file: 'none.txt' does not exist ({IN_FOLDER})"],
    ),
    (
        "prompt-file-empty",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.txt}}\n", "p.txt": ""},
        ["run", "{m}"],
        ["{m}:4:23: grid.prompt: empty axis: 'p.txt' holds no values"],
    ),
    (
        "prompt-file-binary",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.png}}\n", "p.png": b"\x89PNG\r\n\x1a\n\0\0"},
        ["run", "{m}"],
        [f"{{d}}/p.png:1:1: grid.prompt.file: 'p.png' is not UTF-8 text (byte 0x89; {UTF8})"],
    ),
    (
        "prompt-file-nul",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.txt}}\n", "p.txt": b"fine\nab\x00c\n"},
        ["run", "{m}"],
        [
            "{d}/p.txt:2:3: grid.prompt.file: 'p.txt' holds the control character U+0000:"
            f" {BINARY}"
        ],
    ),
    (
        "prompt-file-100-MiB",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.txt}}\n", "p.txt": _sparse(100 * MIB)},
        ["run", "{m}"],
        ["{m}:4:23: grid.prompt.file: 'p.txt' is 100 MiB (allowed: at most 64 MiB)"],
    ),
    (
        "prompt-file-is-a-folder",
        {"m.yaml": HEAD + "grid: {prompt: {file: prompts}}\n", "prompts/a.txt": "a"},
        ["run", "{m}"],
        [f"{{m}}:4:23: grid.prompt.file: 'prompts' is a folder ({IN_FOLDER})"],
    ),
    (
        "jsonl-nested-too-deep",
        {
            "m.yaml": HEAD + "grid: {prompt: {jsonl: p.jsonl, field: p}}\n",
            "p.jsonl": "[" * 100_000 + "\n",
        },
        ["run", "{m}"],
        ["{d}/p.jsonl:1:1: grid.prompt.jsonl: 'p.jsonl' is not usable JSON (nested too deeply)"],
    ),
    (
        "csv-header-too-long",
        {
            "m.yaml": HEAD + "grid: {prompt: {csv: p.csv, column: p}}\n",
            "p.csv": "x" * 200_000 + "\n",
        },
        ["run", "{m}"],
        [
            "{m}:4:22: grid.prompt.csv: 'p.csv' is not valid CSV"
            " (field larger than field limit (131072))"
        ],
    ),
    # --- invalid Unicode: a lone surrogate the service would refuse (issue 16 item 7) -------
    (
        "lone-surrogate-in-prompt",
        {"m.yaml": HEAD + 'grid: {prompt: "a \\ud800 b"}\n'},
        ["run", "{m}"],
        [f"{{m}}:4:19: {LONE.format('d800')}"],
    ),
    (
        "lone-surrogate-in-negative-prompt",
        {"m.yaml": HEAD + 'defaults: {negativePrompt: "\\udc00"}\n' + GRID},
        ["run", "{m}"],
        [f"{{m}}:4:29: {LONE.format('dc00')}"],
    ),
    (
        "surrogate-pair-as-two-yaml-escapes",
        {"m.yaml": HEAD + 'grid: {prompt: "cat \\ud83d\\ude00"}\n'},
        ["plan", "{m}"],
        [f"{{m}}:4:21: {LONE.format('d83d')}"],
    ),
    (
        "lone-surrogate-in-template-variable",
        {"m.yaml": HEAD + 'grid:\n  prompt: "a {v}"\n  vars.v: [ok, "\\U0000dc00"]\n'},
        ["run", "{m}"],
        [f"{{m}}:6:17: {LONE.format('dc00')}"],
    ),
    (
        "lone-surrogate-in-lora-key",
        {
            "m.yaml": HEAD
            + 'grid:\n  prompt: p\n  loras: {"urn:air:zImage:lora:civitai:1@2\\udbff": 1}\n'
        },
        ["run", "{m}"],
        [f"{{m}}:6:43: {LONE.format('dbff')}"],
    ),
    (
        "lone-surrogate-in-jsonl-prompt",
        {
            "m.yaml": HEAD + "grid: {prompt: {jsonl: p.jsonl, field: p}}\n",
            "p.jsonl": '{"p": "fine \\ud83d\\ude00"}\n{"p": "a \\\\ud800 b \\ud800"}\n',
        },
        ["run", "{m}"],
        [f"{{d}}/p.jsonl:2:20: grid.prompt.jsonl: 'p.jsonl' field 'p': {LONE.format('d800')}"],
    ),
    (
        "utf8-encoded-surrogate-in-prompt-file",
        {"m.yaml": HEAD + "grid: {prompt: {file: p.txt}}\n", "p.txt": b"ok\nab\xed\xa0\x80\n"},
        ["run", "{m}"],
        [f"{{d}}/p.txt:2:3: grid.prompt.file: 'p.txt' is not UTF-8 text (byte 0xed; {UTF8})"],
    ),
    (
        "utf8-encoded-surrogate-in-csv",
        {
            "m.yaml": HEAD + "grid: {prompt: {csv: p.csv, column: p}}\n",
            "p.csv": b"p\nok\n\xed\xb0\x80\n",
        },
        ["run", "{m}"],
        [f"{{d}}/p.csv:3:1: grid.prompt.csv: 'p.csv' is not UTF-8 text (byte 0xed; {UTF8})"],
    ),
    # --- run's connection settings ----------------------------------------------------------
    (
        "faults-file-missing",
        {"m.yaml": HEAD + GRID},
        ["run", "{m}", "--emulator", "--faults", "{d}/nope.yaml"],
        ["--faults {d}/nope.yaml: not a fault profile (No such file or directory)"],
    ),
    (
        "faults-file-not-yaml",
        {"m.yaml": HEAD + GRID, "f.yaml": "{{{\n"},
        ["run", "{m}", "--emulator", "--faults", "{d}/f.yaml"],
        [
            "--faults {d}/f.yaml: not a fault profile"
            " (line 2: expected the node content, but found '<stream end>')"
        ],
    ),
    (
        "api-url-not-a-url",
        {"m.yaml": HEAD + GRID},
        ["run", "{m}", "--api-url", "ftp://example.com"],
        ["--api-url 'ftp://example.com' is not an http:// or https:// URL"],
    ),
    # --- zbatch status --------------------------------------------------------------------
    (
        "status-of-a-missing-folder",
        {},
        ["status", "{d}/nowhere"],
        ["{d}/nowhere does not exist or is not a folder: give a batch's `out` folder"],
    ),
    (
        "status-of-a-folder-without-a-batch",
        {"x.txt": "x"},
        ["status", "{d}"],
        ["{d} holds no batch.sqlite: it is not a zbatch batch folder"],
    ),
    (
        "status-of-a-garbage-database",
        {"out/batch.sqlite": b"not a database" * 100},
        ["status", "{d}/out"],
        ["{d}/out/batch.sqlite is not a zbatch batch database (file is not a database)"],
    ),
]

# (id, command, argparse's error line): flags are refused before anything is read.
FLAGS: list[tuple[str, list[str], str]] = [
    (
        "budget-negative",
        ["run", "{m}", "--budget", "-1"],
        "argument --budget: '-1' must be at least 1",
    ),
    ("budget-zero", ["run", "{m}", "--budget", "0"], "argument --budget: '0' must be at least 1"),
    (
        "budget-nan",
        ["run", "{m}", "--budget", "nan"],
        "argument --budget: 'nan' is not a whole number",
    ),
    (
        "budget-float",
        ["run", "{m}", "--budget", "1e3"],
        "argument --budget: '1e3' is not a whole number",
    ),
    (
        "budget-huge",
        ["run", "{m}", "--budget", "9" * 30],
        f"argument --budget: '{'9' * 30}' must be at most 1000000000000",
    ),
    (
        "concurrency-zero",
        ["run", "{m}", "--concurrency", "0"],
        "argument --concurrency: '0' must be at least 1",
    ),
    (
        "concurrency-huge",
        ["run", "{m}", "--concurrency", "100000"],
        "argument --concurrency: '100000' must be at most 10000",
    ),
    (
        "rate-nan",
        ["run", "{m}", "--rate", "nan"],
        "argument --rate: 'nan' must be a finite number >= 0",
    ),
    (
        "rate-negative",
        ["run", "{m}", "--rate", "-2"],
        "argument --rate: '-2' must be a finite number >= 0",
    ),
    (
        "rate-zero",
        ["run", "{m}", "--rate", "0"],
        "argument --rate: '0' must be between 0.01 and 1000",
    ),
    (
        "rate-inf",
        ["run", "{m}", "--rate", "inf"],
        "argument --rate: 'inf' must be a finite number >= 0",
    ),
    (
        "rate-huge",
        ["run", "{m}", "--rate", "1e9"],
        "argument --rate: '1e9' must be between 0.01 and 1000",
    ),
    (
        "time-scale-negative",
        ["run", "{m}", "--emulator", "--time-scale", "-1"],
        "argument --time-scale: '-1' must be a finite number >= 0",
    ),
    (
        "time-scale-huge",
        ["run", "{m}", "--emulator", "--time-scale", "1e300"],
        "argument --time-scale: '1e300' must be at most 1000",
    ),
    (
        "seed-nan",
        ["run", "{m}", "--emulator", "--seed", "nan"],
        "argument --seed: invalid int value: 'nan'",
    ),
    ("run-without-manifest", ["run"], "the following arguments are required: MANIFEST"),
    ("plan-unknown-flag", ["plan", "{m}", "--budget", "5"], "unrecognized arguments: --budget 5"),
    (
        "status-unknown-flag",
        ["status", "{d}", "--limit", "-1"],
        "unrecognized arguments: --limit -1",
    ),
    ("status-without-folder", ["status"], "the following arguments are required: OUT"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: a write anywhere changes it."""
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def _make(folder: Path, files: dict[str, File]) -> None:
    (folder.parent / "secret.txt").write_text("a secret prompt\n", encoding="utf-8")
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _fill(text: str, folder: Path) -> str:
    """``{m}``, ``{d}`` and ``{t}`` replaced (other braces, as in ``{count: N}``, kept)."""
    for name, path in (("m", folder / "m.yaml"), ("d", folder), ("t", folder.parent)):
        text = text.replace("{" + name + "}", str(path))
    return text


def _run(argv: list[str], folder: Path) -> int:
    try:
        return main([_fill(arg, folder) for arg in argv])
    except SystemExit as exc:  # argparse's usage errors
        return exc.code if isinstance(exc.code, int) else -1


@pytest.mark.parametrize(
    ("files", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_message_and_exit_2(tmp_path, capsys, files, argv, expected):
    """Exit 2, the exact located message, no traceback, nothing written."""
    folder = tmp_path / "job"
    folder.mkdir()
    _make(folder, files)
    before = _tree(tmp_path)
    code = _run(argv, folder)
    captured = capsys.readouterr()
    lines = [_fill(line, folder) for line in expected]
    assert (code, captured.err) == (2, "zbatch: error: " + "\n".join(lines) + "\n")
    assert "Traceback" not in captured.out + captured.err
    assert captured.out == ""
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(("argv", "expected"), [f[1:] for f in FLAGS], ids=[f[0] for f in FLAGS])
def test_nonsense_flags_exit_2_with_argparse_message(tmp_path, capsys, argv, expected):
    """Negative, zero, NaN and huge values are usage errors: exit 2 before anything runs."""
    folder = tmp_path / "job"
    folder.mkdir()
    _make(folder, {"m.yaml": HEAD + GRID})
    before = _tree(tmp_path)
    code = _run(argv, folder)
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1].endswith(f": error: {expected}")
    assert err.startswith("usage: zbatch")
    assert "Traceback" not in err
    assert _tree(tmp_path) == before


def test_an_unreadable_manifest_is_named(tmp_path, capsys, monkeypatch):
    """A permission error (injected: root reads anything) is one message, exit 2."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + GRID, encoding="utf-8")
    real_open = os.open

    def refuse(path, flags, *args):
        if Path(path) == manifest:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("runner.manifest._textfile.os.open", refuse)
    assert main(["run", str(manifest)]) == 2
    assert capsys.readouterr().err == (
        f"zbatch: error: {manifest}: cannot be read (Permission denied)\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b""], ids=["utf8-bom", "no-bom"])
def test_a_utf8_bom_is_accepted_silently(tmp_path, capsys, bom):
    """Windows editors write a UTF-8 BOM: the manifest and its prompt file still load."""
    (tmp_path / "p.txt").write_bytes(bom + b"a fox\n")
    (tmp_path / "m.yaml").write_bytes(bom + (HEAD + "grid: {prompt: {file: p.txt}}\n").encode())
    assert main(["plan", str(tmp_path / "m.yaml")]) == 0
    captured = capsys.readouterr()
    assert "axes     prompt 1 = 1" in captured.out
    assert "zbatch: error" not in captured.err


def test_a_reader_that_leaves_early_is_not_a_traceback():
    """`zbatch plan … | head`: stdout closed before the plan is printed ends in 141, quietly."""
    jobs = Path(__file__).parent.parent / "jobs"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before zbatch writes a byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runner.cli", "plan", str(jobs / "demo.yaml")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr.decode()) == (141, "")


def test_a_bad_base_url_in_the_environment_is_named(tmp_path, capsys, monkeypatch):
    """CIVITAI_API_BASE_URL is checked like --api-url: exit 2, nothing written."""
    (tmp_path / "m.yaml").write_text(HEAD + GRID, encoding="utf-8")
    monkeypatch.setenv("CIVITAI_API_BASE_URL", "localhost:8765")
    assert main(["run", str(tmp_path / "m.yaml")]) == 2
    assert capsys.readouterr().err == (
        "zbatch: error: CIVITAI_API_BASE_URL 'localhost:8765' is not an http:// or https:// URL\n"
    )
    assert not (tmp_path / "out").exists()


def test_no_token_is_exit_3_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Without CIVITAI_API_TOKEN (and without --emulator) the run stops before creating out."""
    (tmp_path / "m.yaml").write_text(HEAD + GRID, encoding="utf-8")
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    monkeypatch.delenv("CIVITAI_API_BASE_URL", raising=False)
    assert main(["run", str(tmp_path / "m.yaml")]) == 3
    assert capsys.readouterr().err == (
        "zbatch: error: no API token: set CIVITAI_API_TOKEN to your Civitai API key"
        " (or use --emulator)\n"
    )
    assert not (tmp_path / "out").exists()
