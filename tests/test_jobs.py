"""The example manifests: every jobs/*.yaml and every example in docs/manifest.md plans as shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from runner.cli._main import main
from runner.manifest._load import load_manifest, parse_manifest
from runner.plan import make_plan, render_text

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
DEMO_MAX_CELLS = 50
# A docs example opens with `# plan: N cells, N images, N Buzz`.
_EXAMPLE_RE = re.compile(r"```yaml\n(# plan: (\d+) cells, (\d+) images, (\d+) Buzz\n.*?)```", re.S)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """main() configures structlog onto this test's captured stderr; put the old config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_there_are_example_jobs() -> None:
    names = {path.name for path in JOBS}
    assert {
        "demo.yaml",
        "dataset-interiors.yaml",
        "compare-models.yaml",
        "lora-sweep.yaml",
    } <= names


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_plans_within_budget_without_errors(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "error" not in err
    assert f"(batch {path.stem})" in out


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_is_described_with_its_plan_in_the_jobs_readme(path: Path) -> None:
    readme = (ROOT / "jobs" / "README.md").read_text()
    text = render_text(make_plan(load_manifest(path)))
    assert f"jobs/{path.name}" in readme
    for prefix in ("cells ", "budget ", "time "):
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        assert line in readme, f"jobs/README.md is stale for {path.name}: {line!r}"


def test_demo_stays_small_enough_for_the_emulator() -> None:
    plan = make_plan(load_manifest(ROOT / "jobs" / "demo.yaml"))
    assert plan.cells < DEMO_MAX_CELLS
    assert {s.shape.model for s in plan.shapes} == {"turbo", "base"}  # issue 6: both models
    assert all(s.shape.width <= 512 and s.shape.height <= 512 for s in plan.shapes)
    assert not plan.warnings


def _doc_examples() -> list[tuple[str, int, int, int]]:
    text = (ROOT / "docs" / "manifest.md").read_text()
    return [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in _EXAMPLE_RE.finditer(text)]


def test_the_manifest_reference_has_examples() -> None:
    assert len(_doc_examples()) >= 10


@pytest.mark.parametrize(
    ("text", "cells", "images", "buzz"),
    _doc_examples(),
    ids=lambda v: re.search(r"name: (\S+)", v)[1] if isinstance(v, str) else None,  # type: ignore[index]
)
def test_every_docs_example_plans_as_its_comment_says(
    text: str, cells: int, images: int, buzz: int
) -> None:
    # Parsed as if saved in jobs/, where the prompt files it names live.
    plan = make_plan(parse_manifest(text, path=ROOT / "jobs" / "docs-example.yaml"))
    assert (plan.cells, plan.images, plan.total_buzz) == (cells, images, buzz)
    assert not plan.over_budget
