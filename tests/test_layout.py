"""The layout holds: what a command loads, and how big a module or a function may grow.

The layers themselves are checked by import-linter (`make lint`, pyproject's contracts);
these are the facts of docs/architecture.md that it cannot see.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "runner"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# A function may run longer when a comment on its `def` line says why: `# long: <reason>`.
LONG_MARK = "# long:"


def _loaded_after(code: str) -> set[str]:
    """The top-level module names loaded by a fresh interpreter after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_zbatch_plan_loads_no_server_and_no_database() -> None:
    """`zbatch plan` loads neither the emulator's server (Starlette, uvicorn) nor the store."""
    loaded = _loaded_after(
        "from runner.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['plan', 'jobs/demo.yaml'])"
    )
    assert "runner.manifest" in loaded  # the probe did plan
    assert not loaded & {"starlette", "uvicorn", "runner.emulator", "runner.store"}


def test_the_store_loads_no_manifest_parser() -> None:
    """Importing the store loads neither PyYAML nor the manifest parser nor the grid."""
    loaded = _loaded_after("from runner.store import Store")
    assert "runner.store" in loaded
    assert not loaded & {"yaml", "runner.manifest", "runner.grid", "runner.plan"}


def test_the_emulator_package_is_lazy() -> None:
    """`import runner.emulator` loads no server until a name that needs one is used."""
    assert not _loaded_after("import runner.emulator") & {"starlette", "uvicorn"}
    assert {"starlette", "uvicorn"} <= _loaded_after("from runner.emulator import running_server")


def _modules() -> list[Path]:
    return sorted(RUNNER.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    """No module of runner/ grows past ~500 lines (STYLE.md's split point)."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_function_size(path: Path) -> None:
    """No function of runner/ runs past ~60 lines unless its `def` line says why."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            size = node.end_lineno - node.lineno + 1
            if size > MAX_FUNCTION_LINES and LONG_MARK not in lines[node.lineno - 1]:
                long.append(f"{node.name} ({size} lines, line {node.lineno})")
    assert not long, f"{path.relative_to(ROOT)}: {', '.join(long)}"
