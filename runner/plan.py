"""Plan a batch before spending: its grid, its Buzz by model and shape against the budget, its time.

```python
plan = make_plan(load_manifest("jobs/demo.yaml"))
plan.cells, plan.total_buzz, plan.over_budget, plan.fit.cells, plan.wall.high_s
```

`make_plan` walks `grid.expand(manifest)` once and keeps counters, never cells, so a
1,000,000-cell manifest plans in constant memory. Everything here is pure (no I/O, no clock)
except nothing: `runner.ops` asks the API for the exact price of each shape (`--whatif`).

**Shape.** A cell's price depends only on its model, width, height, steps and quantity (the
seed page's formula, `contract.price_buzz`), so cells are priced per *shape*, and `--whatif`
asks the API once per distinct shape, not once per cell.

**Budget.** The runner submits cells in expansion order and stops (resumable) at the first
cell whose price would take the batch over its cap. `Plan.fit` is that prefix: the cells,
images and Buzz submitted before the stop. It is every cell when the plan is within budget.

**Wall time.** The batch's time is bounded below by two things. At most `in_flight`
workflows run at once, so the total run time of all cells (`contract.runtime_s`, a low-high
range from the seed page's runtime table) is spread over `in_flight` lanes:
`runtime / in_flight`. And cells are submitted at most `submit_per_s` a second:
`cells / submit_per_s`. The estimate is the larger of the two, computed for the low and the
high end of the range. It ignores queueing at the service, retries and downloads, so read it
as "not sooner than", a little optimistic at the low end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from runner import contract
from runner.grid import expand
from runner.manifest import Manifest, Problem

JSON_VERSION = 1
FORMULA = "formula"
WHATIF = "whatif"


class Shape(NamedTuple):
    """What a cell's price depends on: model x width x height x steps x quantity."""

    model: str
    width: int
    height: int
    steps: int
    quantity: int

    @property
    def label(self) -> str:
        """`turbo 1024x1024 9 steps x1`."""
        return f"{self.model} {self.width}x{self.height} {self.steps} steps x{self.quantity}"

    def formula_buzz(self) -> int:
        """The seed page's price of one cell of this shape (all `quantity` images)."""
        return contract.price_buzz(**self._asdict())

    def runtime_s(self) -> tuple[float, float]:
        """The (low, high) run time of one cell of this shape, in seconds."""
        return contract.runtime_s(**self._asdict())


@dataclass(frozen=True)
class Tally:
    """Cells, their images and their Buzz."""

    cells: int = 0
    images: int = 0
    buzz: int = 0


@dataclass(frozen=True)
class ShapeCost:
    """The cells of one shape and what they cost; `unit_buzz` is one cell's price."""

    shape: Shape
    cells: int
    unit_buzz: int
    runtime_s: tuple[float, float]

    @property
    def images(self) -> int:
        return self.cells * self.shape.quantity

    @property
    def buzz(self) -> int:
        return self.cells * self.unit_buzz


@dataclass(frozen=True)
class WallTime:
    """Estimated wall time: max(run time / in_flight, cells / submit_per_s), low and high."""

    low_s: float
    high_s: float
    runtime_low_s: float  # the sum of every cell's run time, low end of the range
    runtime_high_s: float
    submit_s: float  # cells / submit_per_s
    in_flight: int
    submit_per_s: float

    @property
    def bounds(self) -> tuple[str, str]:
        """What limits the low and the high end: `run time` (in_flight lanes) or `submit rate`."""
        return (
            "submit rate" if self.submit_s >= self.runtime_low_s / self.in_flight else "run time",
            "submit rate" if self.submit_s >= self.runtime_high_s / self.in_flight else "run time",
        )


@dataclass(frozen=True)
class PriceCheck:
    """The formula's and the API's price for one shape (one cell, all its images)."""

    shape: Shape
    cells: int
    formula_buzz: int
    api_buzz: int

    @property
    def differs(self) -> bool:
        return self.formula_buzz != self.api_buzz


@dataclass(frozen=True)
class Plan:
    """What a manifest will do and cost; see the module docstring for budget and wall time."""

    manifest: Path
    name: str
    out: Path
    budget_buzz: int
    axes: tuple[tuple[str, int], ...]
    product: int  # cells in the grid: the product of the axis sizes
    excluded: int
    included: int
    duplicates: int  # identical cells collapsed to one
    repeat: int
    cells: int
    shapes: tuple[ShapeCost, ...]  # in order of first appearance
    fit: Tally
    wall: WallTime
    warnings: tuple[Problem, ...]
    prices: str = FORMULA  # where the unit prices come from: `formula` or `whatif`
    checks: tuple[PriceCheck, ...] = ()  # formula vs API, after --whatif
    samples: Mapping[Shape, Mapping[str, object]] = field(
        default_factory=dict, repr=False, compare=False
    )  # the API input of the first cell of each shape (what whatif sends)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.shapes)

    @property
    def total_buzz(self) -> int:
        return sum(s.buzz for s in self.shapes)

    @property
    def over_budget(self) -> bool:
        return self.total_buzz > self.budget_buzz

    @property
    def by_model(self) -> dict[str, Tally]:
        """Cells, images and Buzz per model, in order of first appearance."""
        found: dict[str, Tally] = {}
        for s in self.shapes:
            t = found.get(s.shape.model, Tally())
            found[s.shape.model] = Tally(t.cells + s.cells, t.images + s.images, t.buzz + s.buzz)
        return found


class _ShapeCount:
    """A mutable per-shape counter (the hot loop's only state besides the budget prefix)."""

    __slots__ = ("cells", "sample", "unit_buzz")

    def __init__(self, unit_buzz: int, sample: Mapping[str, object]) -> None:
        self.cells = 0
        self.unit_buzz = unit_buzz
        self.sample = sample


def make_plan(manifest: Manifest, *, prices: Mapping[Shape, int] | None = None) -> Plan:
    """Expand `manifest` once and aggregate it into a `Plan` (no cell is kept).

    `prices` overrides the formula's unit price of the shapes it names (the API's whatif
    prices); the plan's `prices` is then `whatif`.
    """
    overrides = prices or {}
    counts: dict[tuple[Any, ...], _ShapeCount] = {}
    budget = manifest.budget_buzz
    spent = fit_cells = fit_images = 0
    fitting = True
    expansion = expand(manifest)
    for cell in expansion:
        r = cell.request
        key: tuple[Any, ...] = (r["model"], r["width"], r["height"], r["steps"], r["quantity"])
        count = counts.get(key)
        if count is None:
            shape = Shape(*key)
            unit = overrides.get(shape)
            unit = shape.formula_buzz() if unit is None else unit
            count = counts[key] = _ShapeCount(unit, cell.step_input())
        count.cells += 1
        if fitting:
            if spent + count.unit_buzz <= budget:
                spent += count.unit_buzz
                fit_cells += 1
                fit_images += cast(int, key[4])
            else:
                fitting = False
    stats = expansion.stats
    shapes = tuple(_shape_cost(Shape(*k), c) for k, c in counts.items())
    cells = sum(s.cells for s in shapes)
    return Plan(
        manifest=Path(manifest.path),
        name=manifest.name,
        out=Path(manifest.out),
        budget_buzz=budget,
        axes=tuple((name, size) for name, size in stats.axes),
        product=stats.product,
        excluded=stats.excluded,
        included=stats.included,
        duplicates=stats.duplicates,
        repeat=manifest.repeat,
        cells=cells,
        shapes=shapes,
        fit=Tally(fit_cells, fit_images, spent),
        wall=estimate_wall_time(shapes, manifest.limits.in_flight, manifest.limits.submit_per_s),
        warnings=tuple(manifest.warnings),
        prices=WHATIF if prices is not None else FORMULA,
        samples={Shape(*k): c.sample for k, c in counts.items()},
    )


def _shape_cost(shape: Shape, count: _ShapeCount) -> ShapeCost:
    return ShapeCost(shape, count.cells, count.unit_buzz, shape.runtime_s())


def estimate_wall_time(
    shapes: tuple[ShapeCost, ...], in_flight: int, submit_per_s: float
) -> WallTime:
    """max(total run time / in_flight, cells / submit_per_s), for the low and the high end."""
    runtime_low_s = sum(s.cells * s.runtime_s[0] for s in shapes)
    runtime_high_s = sum(s.cells * s.runtime_s[1] for s in shapes)
    submit_s = sum(s.cells for s in shapes) / submit_per_s
    return WallTime(
        low_s=max(runtime_low_s / in_flight, submit_s),
        high_s=max(runtime_high_s / in_flight, submit_s),
        runtime_low_s=runtime_low_s,
        runtime_high_s=runtime_high_s,
        submit_s=submit_s,
        in_flight=in_flight,
        submit_per_s=submit_per_s,
    )


def check_prices(plan: Plan, prices: Mapping[Shape, int]) -> tuple[PriceCheck, ...]:
    """The formula's price next to the API's, for every shape of `plan` that `prices` names."""
    return tuple(
        PriceCheck(s.shape, s.cells, s.shape.formula_buzz(), prices[s.shape])
        for s in plan.shapes
        if s.shape in prices
    )


# -- reports -------------------------------------------------------------------------------


def to_json(plan: Plan) -> dict[str, Any]:
    """The plan as a stable JSON document (`zbatch plan --json`; see docs/manifest.md)."""
    return {
        "version": JSON_VERSION,
        "manifest": str(plan.manifest),
        "name": plan.name,
        "out": str(plan.out),
        "axes": [{"name": name, "size": size} for name, size in plan.axes],
        "grid": {
            "product": plan.product,
            "excluded": plan.excluded,
            "included": plan.included,
            "duplicates": plan.duplicates,
            "repeat": plan.repeat,
            "cells": plan.cells,
            "images": plan.images,
        },
        "buzz": {
            "prices": plan.prices,
            "total": plan.total_buzz,
            "budget": plan.budget_buzz,
            "over_budget": plan.over_budget,
            "fit": {"cells": plan.fit.cells, "images": plan.fit.images, "buzz": plan.fit.buzz},
            "by_model": {
                model: {"cells": t.cells, "images": t.images, "buzz": t.buzz}
                for model, t in plan.by_model.items()
            },
            "by_shape": [
                {**s.shape._asdict(), "cells": s.cells, "images": s.images}
                | {"unit_buzz": s.unit_buzz, "buzz": s.buzz}
                for s in plan.shapes
            ],
        },
        "wall_time_s": {
            "low": round(plan.wall.low_s, 1),
            "high": round(plan.wall.high_s, 1),
            "runtime_low": round(plan.wall.runtime_low_s, 1),
            "runtime_high": round(plan.wall.runtime_high_s, 1),
            "submit": round(plan.wall.submit_s, 1),
            "in_flight": plan.wall.in_flight,
            "submit_per_s": plan.wall.submit_per_s,
            "bound": dict(zip(("low", "high"), plan.wall.bounds, strict=True)),
        },
        "whatif": [
            {**c.shape._asdict(), "formula_buzz": c.formula_buzz, "api_buzz": c.api_buzz}
            for c in plan.checks
        ],
        "warnings": [str(w) for w in plan.warnings],
    }


def render_text(plan: Plan) -> str:
    """The plan as an aligned table for a human (`zbatch plan`)."""
    lines = [
        f"plan     {plan.manifest}  (batch {plan.name})",
        f"out      {_shown_path(plan.out)}",
        f"axes     {_axes_line(plan)}",
        f"cells    {plan.cells:,}  ({_grid_line(plan)})",
        f"images   {plan.images:,}",
        "",
        *_cost_table(plan),
        "",
        *_budget_lines(plan),
        _wall_line(plan.wall),
        *_check_lines(plan),
        f"warnings {len(plan.warnings)}" + (" (on stderr)" if plan.warnings else ""),
    ]
    return "\n".join(lines)


def _shown_path(path: Path) -> str:
    """`path` relative to the working folder when it lies inside it, else as it is."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _axes_line(plan: Plan) -> str:
    if not plan.axes:
        return f"none: {plan.product:,} cell(s)"
    sizes = " x ".join(f"{name} {size:,}" for name, size in plan.axes)
    return f"{sizes} = {plan.product:,}"


def _grid_line(plan: Plan) -> str:
    return (
        f"{plan.product:,} in the grid, {plan.excluded:,} excluded, {plan.included:,} included, "
        f"{plan.duplicates:,} duplicates removed, repeat {plan.repeat}"
    )


def _cost_table(plan: Plan) -> list[str]:
    rows: list[tuple[str, ...]] = [(f"Buzz ({plan.prices})", "cells", "images", "each", "Buzz")]
    rows += [
        ("  " + s.shape.label, f"{s.cells:,}", f"{s.images:,}", f"{s.unit_buzz:,}", f"{s.buzz:,}")
        for s in plan.shapes
    ]
    rows += [
        ("  " + model, f"{t.cells:,}", f"{t.images:,}", "", f"{t.buzz:,}")
        for model, t in plan.by_model.items()
    ]
    rows.append(("total", f"{plan.cells:,}", f"{plan.images:,}", "", f"{plan.total_buzz:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    out = [
        "  ".join(
            [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row, widths, strict=True)][1:]
        )
        for row in rows
    ]
    out.insert(1 + len(plan.shapes), "by model")
    return out


def _budget_lines(plan: Plan) -> list[str]:
    if not plan.over_budget:
        left = plan.budget_buzz - plan.total_buzz
        return [f"budget   {plan.total_buzz:,} of {plan.budget_buzz:,} Buzz ({left:,} to spare)"]
    return [
        f"budget   OVER: {plan.total_buzz:,} of {plan.budget_buzz:,} Buzz",
        f"fits     {plan.fit.cells:,} of {plan.cells:,} cells ({plan.fit.images:,} images, "
        f"{plan.fit.buzz:,} Buzz) before the cap stops the run",
    ]


def _wall_line(wall: WallTime) -> str:
    low, high = wall.bounds
    limit = low if low == high else f"{low} at the low end, {high} at the high end"
    return (
        f"time     {format_duration(wall.low_s)} to {format_duration(wall.high_s)} at in_flight "
        f"{wall.in_flight}, {wall.submit_per_s:g} submit/s (limit: {limit})"
    )


def _check_lines(plan: Plan) -> list[str]:
    if not plan.checks:
        return []
    differ = [c for c in plan.checks if c.differs]
    head = f"whatif   {len(plan.checks)} shape(s) priced by the API; {len(differ)} differ"
    return [head] + [
        f"  {c.shape.label}: formula {c.formula_buzz:,}, API {c.api_buzz:,} Buzz per cell"
        for c in differ
    ]


def format_duration(seconds: float) -> str:
    """`45s`, `12m 05s`, `3h 07m`: a duration at a useful precision."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
