"""What is published: the sdist carries what its tests need, the wheel what a user runs
(tests/dists.py builds both). tests/test_wheel.py installs the wheel and uses it."""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from runner.cli._help import DOCS_URL
from tests.dists import ROOT, build_dists

# What a packager needs beside the code to run `pytest` from the unpacked sdist.
SDIST_TREES = ("tests", "jobs", "docs", "bench", "scripts")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel of this checkout."""
    return build_dists(tmp_path_factory.mktemp("dist"))


def _repo_files(tree: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / tree).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix != ".pyc"
        and path.name != "results.json"  # bench's own output, not a source
    }


def test_the_sdist_carries_the_tests_and_what_they_read(dists: tuple[Path, Path]) -> None:
    """Every file of tests/ (subfolders and conftest.py), jobs/, docs/, bench/ and scripts/."""
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for tree in SDIST_TREES:
        missing = _repo_files(tree) - names
        assert not missing, f"the sdist lacks {sorted(missing)[:5]}"
    assert {"tests/conftest.py", "tests/emulator/conftest.py", "LICENSE", "pyproject.toml"} <= names


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(whl.read(name).decode())


def test_the_wheel_metadata_declares_license_platforms_and_no_dev_extra(
    dists: tuple[Path, Path],
) -> None:
    """MIT with its LICENSE file, POSIX classifiers, the extras users may ask for (parquet,
    postgresql), and `dev` is a group, not an extra."""
    _, wheel = dists
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = set(meta.get_all("Classifier") or ())
    assert {"Operating System :: POSIX :: Linux", "Operating System :: MacOS"} <= classifiers
    assert f"Programming Language :: Python :: 3.{sys.version_info.minor}" in classifiers
    assert sorted(meta.get_all("Provides-Extra") or ()) == ["parquet", "postgresql"]
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    assert "zbatch-0.1.0.dist-info/licenses/LICENSE" in names
    assert {"zbatch/__main__.py", "runner/__main__.py", "runner/cli/__main__.py"} <= names
    examples = "runner/cli/examples/"
    assert {
        f"{examples}demo.yaml",
        f"{examples}prompts.txt",
        f"{examples}faults/flaky.yaml",
    } <= names
    assert not {name for name in names if name.startswith(("tests/", "jobs/", "bench/"))}


@pytest.mark.parametrize("module", ["zbatch", "runner"])
def test_python_dash_m_runs_zbatch(module: str, tmp_path: Path) -> None:
    """`python -m zbatch` and `python -m runner` are the `zbatch` command."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "zbatch 0.1.0"


def test_the_readme_links_work_on_the_index() -> None:
    """README.md is the index's project page, where a relative link leads nowhere: every
    link is an address (or an anchor of the page), and every docs page it names exists."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    relative = [link for link in links if not link.startswith(("https://", "#"))]
    assert not relative
    for page in re.findall(rf"{re.escape(DOCS_URL)}/([\w-]+\.md)", readme):
        assert (ROOT / "docs" / page).is_file(), page
