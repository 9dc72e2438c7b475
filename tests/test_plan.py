"""zbatch plan: aggregates with known answers, the report, exit codes, and whatif pricing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import structlog

from runner.api._client import Client
from runner.cli._main import main
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    ManualClock,
    RateLimit,
    make_app,
    running_server,
)
from runner.grid import expand
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._whatif import plan_with_whatif, whatif_prices
from runner.plan import Shape, Tally, check_prices, format_duration, make_plan, render_text

SUBMIT_ROUTE = "POST /v2/consumer/workflows"

# 2 models x 2 prompts x 2 seeds; turbo 1024x1024 at 9 steps costs 8, base at 20 steps 20.
TWO_MODELS = """\
name: two-models
out: out
budget: {budget}
grid:
  model: [{first}, {second}]
  prompt: [A red fox in fresh snow, An owl on a mossy branch]
  seed: [1, 2]
limits: {{in_flight: 2, submit_per_s: {rate}}}
"""


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """main() configures structlog onto this test's captured stderr; put the old config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _write(tmp_path: Path, text: str, name: str = "batch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _manifest(tmp_path: Path, text: str) -> Manifest:
    return parse_manifest(text, path=_write(tmp_path, text))


def _two_models(
    tmp_path: Path,
    budget: int = 1000,
    first: str = "turbo",
    second: str = "base",
    rate: float = 100,
) -> Manifest:
    return _manifest(
        tmp_path, TWO_MODELS.format(budget=budget, first=first, second=second, rate=rate)
    )


# -- aggregates --------------------------------------------------------------------------


def test_counts_axes_and_buzz_by_model_and_shape(tmp_path: Path) -> None:
    plan = make_plan(_two_models(tmp_path))
    assert plan.axes == (("model", 2), ("prompt", 2), ("seed", 2))
    assert (plan.product, plan.cells, plan.images) == (8, 8, 8)
    assert plan.by_model == {"turbo": Tally(4, 4, 32), "base": Tally(4, 4, 80)}
    assert [(s.shape, s.cells, s.unit_buzz, s.buzz) for s in plan.shapes] == [
        (Shape("turbo", 1024, 1024, 9, 1), 4, 8, 32),
        (Shape("base", 1024, 1024, 20, 1), 4, 20, 80),
    ]
    assert (plan.total_buzz, plan.over_budget) == (112, False)
    assert plan.fit == Tally(8, 8, 112)


def test_images_sum_quantity_and_price_scales_with_pixels_and_quantity(tmp_path: Path) -> None:
    plan = make_plan(
        _manifest(
            tmp_path,
            "name: q\nout: o\nbudget: 100\n"
            "defaults: {size: 512x512, quantity: 3}\n"
            "grid: {prompt: [a, b], quantity: [3, 1]}\n",
        )
    )
    assert (plan.cells, plan.images) == (4, 8)
    # turbo 512x512 at 9 steps: 8 x 1/4 = 2 Buzz an image.
    assert {s.shape.quantity: s.unit_buzz for s in plan.shapes} == {3: 6, 1: 2}
    assert plan.total_buzz == 16


def test_exclusions_inclusions_duplicates_and_repeat_are_counted(tmp_path: Path) -> None:
    plan = make_plan(
        _manifest(
            tmp_path,
            """\
name: bookkeeping
out: o
budget: 1000
grid:
  prompt: "A {animal} in {place}"
  vars:
    animal: [fox, owl]
    place: [a forest, a meadow, a harbour]
exclude:
  - {animal: owl, place: a harbour}
include:
  - {prompt: A fox in a forest}
  - {prompt: A heron at dawn}
repeat: 3
""",
        )
    )
    assert plan.axes == (("vars.animal", 2), ("vars.place", 3))
    assert (plan.product, plan.excluded, plan.included, plan.duplicates) == (6, 1, 2, 1)
    # (6 - 1 excluded + 2 included - 1 duplicate) x 3 replicas
    assert (plan.repeat, plan.cells) == (3, 18)
    assert plan.total_buzz == 18 * 8


def test_over_budget_fit_is_the_prefix_the_runner_submits(tmp_path: Path) -> None:
    # base cells (20 Buzz) come first; 50 Buzz fits two of them. The runner stops at the third
    # cell even though the cheaper turbo cells after it would still fit.
    plan = make_plan(_two_models(tmp_path, budget=50, first="base", second="turbo"))
    assert plan.over_budget
    assert plan.total_buzz == 112
    assert plan.fit == Tally(cells=2, images=2, buzz=40)


def test_a_budget_equal_to_the_total_fits_every_cell(tmp_path: Path) -> None:
    plan = make_plan(_two_models(tmp_path, budget=112))
    assert not plan.over_budget
    assert plan.fit == Tally(8, 8, 112)


def test_wall_time_is_runtime_over_in_flight_when_submitting_is_fast(tmp_path: Path) -> None:
    wall = make_plan(_two_models(tmp_path, rate=100)).wall
    # 4 turbo cells at 3..8 s and 4 base cells at 8..20 s over 2 lanes.
    assert (wall.runtime_low_s, wall.runtime_high_s) == (44.0, 112.0)
    assert (wall.low_s, wall.high_s) == (22.0, 56.0)
    assert wall.bounds == ("run time", "run time")


def test_wall_time_is_bounded_by_the_submit_rate(tmp_path: Path) -> None:
    wall = make_plan(_two_models(tmp_path, rate=0.1)).wall
    # 8 cells at 0.1 submits/s take 80 s, longer than the run time over 2 lanes.
    assert (wall.submit_s, wall.low_s, wall.high_s) == (80.0, 80.0, 80.0)
    assert wall.bounds == ("submit rate", "submit rate")


def test_wall_time_can_be_limited_by_each_at_either_end(tmp_path: Path) -> None:
    wall = make_plan(_two_models(tmp_path, rate=0.25)).wall
    # Submitting 8 cells takes 32 s: more than 44 s / 2 lanes, less than 112 s / 2 lanes.
    assert (wall.low_s, wall.high_s) == (32.0, 56.0)
    assert wall.bounds == ("submit rate", "run time")


def test_warnings_of_the_manifest_are_carried(tmp_path: Path) -> None:
    text = "name: w\nout: o\nbudget: 100\ngrid: {prompt: a, cfgScale: 3}\n"
    plan = make_plan(_manifest(tmp_path, text))
    assert plan.warnings
    assert any("cfgScale" in str(w) for w in plan.warnings)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59, "59s"), (61, "1m 01s"), (3599, "59m 59s"), (3 * 3600 + 7 * 60, "3h 07m")],
)
def test_durations_read_at_a_useful_precision(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_text_report_names_axes_shapes_budget_and_time(tmp_path: Path) -> None:
    text = render_text(make_plan(_two_models(tmp_path, budget=50, first="base", second="turbo")))
    assert "axes     model 2 x prompt 2 x seed 2 = 8" in text
    assert "base 1024x1024 20 steps x1" in text
    assert "budget   OVER: 112 of 50 Buzz\n" in text
    assert "fits     2 of 8 cells (2 images, 40 Buzz) before the cap stops the run" in text
    assert "at in_flight 2, 100 submit/s (limit: run time)" in text


# -- the command ---------------------------------------------------------------------------


def test_plan_prints_the_table_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _write(tmp_path, TWO_MODELS.format(budget=1000, first="turbo", second="base", rate=2))
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "112 of 1,000 Buzz (888 to spare)" in out
    assert "warning" not in err


def test_plan_json_is_a_stable_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _write(tmp_path, TWO_MODELS.format(budget=1000, first="turbo", second="base", rate=2))
    assert main(["plan", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "version",
        *("manifest", "name", "out", "axes", "grid", "buzz", "wall_time_s", "whatif"),
        "warnings",
    }
    assert doc["version"] == 1
    assert doc["axes"] == [
        {"name": "model", "size": 2},
        {"name": "prompt", "size": 2},
        {"name": "seed", "size": 2},
    ]
    assert doc["grid"] == {
        "product": 8,
        "excluded": 0,
        "included": 0,
        "duplicates": 0,
        "repeat": 1,
        "cells": 8,
        "images": 8,
    }
    buzz = doc["buzz"]
    assert (buzz["total"], buzz["budget"], buzz["over_budget"]) == (112, 1000, False)
    assert buzz["prices"] == "formula"
    assert buzz["fit"] == {"cells": 8, "images": 8, "buzz": 112}
    assert buzz["by_model"]["base"] == {"cells": 4, "images": 4, "buzz": 80}
    assert buzz["by_shape"][0] == {
        "model": "turbo",
        "width": 1024,
        "height": 1024,
        "steps": 9,
        "quantity": 1,
        "cells": 4,
        "images": 4,
        "unit_buzz": 8,
        "buzz": 32,
    }
    assert doc["wall_time_s"]["low"] == 22.0
    assert (doc["whatif"], doc["warnings"]) == ([], [])


def test_over_budget_exits_3_and_still_prints_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = _write(tmp_path, TWO_MODELS.format(budget=50, first="base", second="turbo", rate=2))
    assert main(["plan", str(path), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["buzz"]["over_budget"] is True
    assert doc["buzz"]["fit"] == {"cells": 2, "images": 2, "buzz": 40}


def test_invalid_manifest_exits_2_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = _write(
        tmp_path, "name: bad\nout: o\nbudget: 10\ngrid:\n  prompt: a\n  steps: 0\n  widht: 512\n"
    )
    assert main(["plan", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}:6:" in err
    assert "grid.steps" in err
    assert f"{path}:7:" in err
    assert "did you mean 'width'" in err


def test_warnings_go_to_stderr_with_their_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = _write(tmp_path, "name: w\nout: o\nbudget: 100\ngrid:\n  prompt: a\n  cfgScale: 3\n")
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"zbatch: warning: {path}:6:" in err
    assert "warnings 1 (on stderr)" in out
    assert "cfgScale" not in out.replace("warnings", "")


def test_whatif_without_a_token_exits_2_before_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    path = _write(tmp_path, TWO_MODELS.format(budget=1000, first="turbo", second="base", rate=2))
    assert main(["plan", str(path), "--whatif"]) == 2
    assert "--whatif needs CIVITAI_API_TOKEN" in capsys.readouterr().err


# -- whatif --------------------------------------------------------------------------------


def _cell_external_ids(manifest: Manifest) -> set[str]:
    return {cell.external_id(attempt) for cell in expand(manifest) for attempt in (1, 2, 3)}


async def test_whatif_asks_once_per_shape_without_any_cell_key(tmp_path: Path) -> None:
    manifest = _two_models(tmp_path)
    plan = make_plan(manifest)
    app = make_app(EmulatorConfig())
    with anyio.fail_after(10):
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:
            prices = await whatif_prices(plan, client)
    assert prices == {Shape("turbo", 1024, 1024, 9, 1): 8, Shape("base", 1024, 1024, 20, 1): 20}
    assert not any(c.differs for c in check_prices(plan, prices))
    state = app.state.emulator.state()
    assert state["requests"]["by_route"] == {SUBMIT_ROUTE: 2}
    assert state["workflows"] == {}
    assert state["submit_attempts"] == {}
    assert not _cell_external_ids(manifest) & set(state["workflows"])
    assert state["workflow_count"] == 0
    assert state["buzz"]["charged_buzz"] == 0


async def test_a_throttled_whatif_is_asked_again_after_retry_after(tmp_path: Path) -> None:
    clock = ManualClock()
    app = make_app(EmulatorConfig(submit_limit=RateLimit(per_s=1, burst=1)), clock=clock)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        clock.advance(seconds)

    with anyio.fail_after(10):
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:
            prices = await whatif_prices(make_plan(_two_models(tmp_path)), client, sleep=sleep)
    assert len(prices) == 2
    state = app.state.emulator.state()
    assert state["requests"]["by_route_status"] == {
        f"{SUBMIT_ROUTE} 200": 2,
        f"{SUBMIT_ROUTE} 429": 1,
    }
    assert waited == [1.0]
    assert state["workflow_count"] == 0


class _DearerApi:
    """A stand-in client whose whatif price is the formula's plus one Buzz."""

    async def submit(self, steps: list[dict[str, Any]], **kw: Any) -> SimpleNamespace:
        assert kw == {"whatif": True}
        i = steps[0]["input"]
        shape = Shape(i["model"], i["width"], i["height"], i["steps"], i["quantity"])
        return SimpleNamespace(cost_total=shape.formula_buzz() + 1)


async def test_a_differing_api_price_replans_the_budget_with_it(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        plan = await plan_with_whatif(_two_models(tmp_path, budget=112), _DearerApi())  # type: ignore[arg-type]
    assert plan.prices == "whatif"
    assert [(c.formula_buzz, c.api_buzz, c.differs) for c in plan.checks] == [
        (8, 9, True),
        (20, 21, True),
    ]
    assert plan.total_buzz == 4 * 9 + 4 * 21
    assert plan.over_budget
    assert "whatif   2 shape(s) priced by the API; 2 differ" in render_text(plan)


def test_plan_whatif_against_a_running_emulator_spends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    path = _write(tmp_path, TWO_MODELS.format(budget=1000, first="turbo", second="base", rate=2))
    with running_server(EmulatorConfig()) as url:
        monkeypatch.setenv("CIVITAI_API_BASE_URL", url)
        monkeypatch.setenv("CIVITAI_API_TOKEN", "dummy-token")
        assert main(["plan", str(path), "--whatif", "--json"]) == 0
        state = httpx.get(f"{url}/_emulator/state", timeout=10).json()
    doc = json.loads(capsys.readouterr().out)
    assert doc["buzz"]["prices"] == "whatif"
    assert [(w["model"], w["formula_buzz"], w["api_buzz"]) for w in doc["whatif"]] == [
        ("turbo", 8, 8),
        ("base", 20, 20),
    ]
    assert state["requests"]["by_route"] == {SUBMIT_ROUTE: 2}
    assert state["workflows"] == {}
    assert state["workflow_count"] == 0
    assert state["buzz"]["charged_buzz"] == 0
