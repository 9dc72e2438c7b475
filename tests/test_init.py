"""`zbatch init`: the starter manifest, its prompts and the fault profiles, from the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.cli._help import DOCS_URL
from runner.cli._init import example_files
from runner.cli._main import main
from runner.emulator import load_faults
from runner.emulator.config import FAULT_KINDS
from runner.grid import expand
from runner.manifest import load_manifest
from runner.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
WRITTEN = {
    "demo.yaml",
    "prompts.txt",
    "faults/flaky.yaml",
    "faults/hostile.yaml",
    "faults/created-then-502.yaml",
}


def _init(*argv: str) -> int:
    return main(["init", *argv])


def test_init_writes_the_examples_into_a_new_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "batch"
    assert _init(str(folder)) == 0
    written = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert written == WRITTEN
    assert f"zbatch plan {folder / 'demo.yaml'}" in capsys.readouterr().out


def test_init_writes_into_the_current_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _init() == 0
    assert (tmp_path / "demo.yaml").is_file()
    assert (tmp_path / "faults" / "flaky.yaml").is_file()


def test_the_starter_manifest_is_the_demo(tmp_path: Path) -> None:
    """The same 12 cells as jobs/demo.yaml (same keys: same requests), with its prompts file."""
    assert _init(str(tmp_path)) == 0
    starter = load_manifest(tmp_path / "demo.yaml")
    demo = load_manifest(ROOT / "jobs" / "demo.yaml")
    assert not starter.warnings
    assert [c.key for c in expand(starter)] == [c.key for c in expand(demo)]
    assert starter.out == tmp_path / "out" / "demo"
    assert make_plan(starter).over_budget is False


def test_the_readmes_manifest_is_the_starter_without_its_comments(tmp_path: Path) -> None:
    """README.md's first-screen manifest makes the same cells as the one `zbatch init` writes."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert _init(str(tmp_path)) == 0
    (tmp_path / "readme.yaml").write_text(shown)
    starter, readmes = (load_manifest(tmp_path / n) for n in ("demo.yaml", "readme.yaml"))
    assert [c.key for c in expand(readmes)] == [c.key for c in expand(starter)]
    assert (readmes.budget_buzz, readmes.out, readmes.limits) == (
        starter.budget_buzz,
        starter.out,
        starter.limits,
    )


def test_every_commented_knob_is_valid_when_uncommented(tmp_path: Path) -> None:
    """Uncommenting the settings shown outside the grid gives a manifest that plans."""
    assert _init(str(tmp_path)) == 0
    lines = (tmp_path / "demo.yaml").read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # past the header
    grid = lines.index("grid:                       # the axes")
    end = next(i for i in range(grid + 1, len(lines)) if lines[i] == "")
    knob = re.compile(r"^(\s*)# (\s*)(?=[A-Za-z{-])")
    uncommented = [
        line if i < body or grid <= i < end else knob.sub(r"\1\2", line)
        for i, line in enumerate(lines)
    ]
    assert sum(a != b for a, b in zip(lines, uncommented, strict=True)) >= 12
    (tmp_path / "all.yaml").write_text("\n".join(uncommented) + "\n")
    manifest = load_manifest(tmp_path / "all.yaml")
    assert not manifest.warnings
    assert manifest.captions == "txt"
    assert len(list(expand(manifest))) == 12 - 3 + 1  # base seed 43 excluded, one included


def test_the_fault_profiles_are_the_repositorys_and_load(tmp_path: Path) -> None:
    """The package's copies of jobs/faults/ are identical to it, and each one loads."""
    shipped = {k: v for k, v in example_files().items() if k.startswith("faults/")}
    repo = {f"faults/{p.name}": p.read_bytes() for p in (ROOT / "jobs" / "faults").glob("*")}
    assert shipped == repo
    assert _init(str(tmp_path)) == 0
    for rel in shipped:
        profile = load_faults(tmp_path / rel)
        assert any(profile.rule(kind).p > 0 for kind in FAULT_KINDS)


def test_init_writes_over_no_file_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "demo.yaml").write_text("mine\n")
    assert _init(str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path / 'demo.yaml'} exists" in err
    assert "--force" in err
    assert (tmp_path / "demo.yaml").read_text() == "mine\n"
    assert not (tmp_path / "prompts.txt").exists()  # nothing written at all
    assert _init(str(tmp_path), "--force") == 0
    assert (tmp_path / "demo.yaml").read_bytes() == example_files()["demo.yaml"]


def test_init_into_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert _init(str(tmp_path / "f")) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_files_init_writes_name_no_repository_path() -> None:
    """An installed user has no docs/ or jobs/ to open: the examples link the documentation."""
    linked = 0
    for name, data in example_files().items():
        text = data.decode()
        linked += text.count(DOCS_URL)
        bare = text.replace(DOCS_URL, "<docs>")
        assert "docs/" not in bare, name
        assert "jobs/" not in bare, name
        for page in re.findall(r"<docs>/([\w-]+\.md)", bare):
            assert (ROOT / "docs" / page).is_file(), (name, page)
    assert linked >= 3  # the manifest reference, the emulator's faults, hostile responses
