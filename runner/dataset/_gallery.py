"""`zbatch gallery`: read a batch from OUT alone and write its X/Y page and contact sheet.

`OUT/gallery/index.html` (static, no server, works from ``file://``; `gallery_html.py`) and
`OUT/gallery/grid-<X>-<Y>.png` (`gallery_sheet.py`), both written atomically, from
`OUT/batch.sqlite` opened read-only (so it works during a run) and the image files. The axes,
the default X and Y and the Buzz sums are `gallery_grid.py`'s.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from runner.dataset._gallery_grid import (
    DEFAULT_STATES,
    GalleryCell,
    Grid,
    build_grid,
)
from runner.dataset._gallery_html import render_page
from runner.dataset._gallery_sheet import render_sheet
from runner.dataset._metadata import HERE, RecordAt, read_batch
from runner.dataset._where import matches, parse_where
from runner.disk import OutFolder, atomic_write_bytes

INDEX_NAME = "index.html"


@dataclass(frozen=True)
class GalleryResult:
    """What `zbatch gallery` wrote and what it shows."""

    index: Path
    sheet: Path
    x: str  # "" when the grid has a single column
    y: str  # "" when it has a single row
    filters: tuple[str, ...]
    rows: int
    columns: int
    cells: int
    images: int
    total_buzz: int


async def read_cells(
    out: Path, *, at: RecordAt = HERE, all_cells: bool = False
) -> tuple[str, list[GalleryCell]]:
    """The batch's name and cells, from its record (`at`: OUT/batch.sqlite by default)
    opened read-only; with `all_cells`, also those a `run --replace` left out."""
    async with read_batch(out, at) as (store, info):
        return info.name, await store.gallery_cells(all_cells=all_cells)


def sheet_name(grid: Grid) -> str:
    """`grid-<X>-<Y>.png`, `all` standing for a missing axis, safe as a file name."""
    parts = (re.sub(r"[^A-Za-z0-9._-]", "_", a.name) or "all" for a in (grid.x, grid.y))
    return "grid-{}-{}.png".format(*parts)


def write_gallery(out: Path, grid: Grid) -> GalleryResult:
    """Write the contact sheet, then the page that links to it; each atomically."""
    folder = OutFolder(out).gallery
    sheet = folder / sheet_name(grid)
    atomic_write_bytes(sheet, render_sheet(grid, out).png)
    index = folder / INDEX_NAME
    atomic_write_bytes(index, render_page(grid, sheet.name).encode("utf-8"))
    return GalleryResult(
        index=index,
        sheet=sheet,
        x=grid.x.name,
        y=grid.y.name,
        filters=tuple(a.name for a in grid.filters),
        rows=grid.y.size,
        columns=grid.x.size,
        cells=len(grid.cells),
        images=grid.image_count,
        total_buzz=grid.total_buzz,
    )


async def make_gallery(
    out: Path,
    *,
    x: str | None = None,
    y: str | None = None,
    states: Iterable[str] = DEFAULT_STATES,
    thumb: int | None = None,
    all_cells: bool = False,
    where: Sequence[str] = (),
    at: RecordAt = HERE,
) -> GalleryResult:
    """Read the batch in `out`, lay it out on X/Y and write `out/gallery/`: the current
    manifest's cells, or with `all_cells` also those a `run --replace` left out; only those
    that meet the `where` conditions (`FIELD=VALUE`, `_where.py`). `thumb` is each image's
    width in pixels (None: a grid position's width, shared by its images). `at`: where the
    record is (OUT/batch.sqlite by default); the images and the gallery are in `out`."""
    conditions = parse_where(where)
    name, cells = await read_cells(out, at=at, all_cells=all_cells)
    cells = [c for c in cells if matches(conditions, c.model, c.request, c.vars)]
    grid = build_grid(name, cells, x=x, y=y, states=states, thumb=thumb)
    return await anyio.to_thread.run_sync(functools.partial(write_gallery, out, grid))


def render_result(result: GalleryResult) -> str:
    """A few lines for `zbatch gallery`'s stdout: what was written and how it is laid out."""
    rows = f"{result.rows} rows by {result.y}" if result.y else "1 row"
    columns = f"{result.columns} columns by {result.x}" if result.x else "1 column"
    filters = ", ".join(result.filters) or "none"
    return "\n".join(
        [
            f"gallery     {result.index}",
            f"            {result.index.resolve().as_uri()}",
            f"sheet       {result.sheet}",
            f"grid        {rows} x {columns}; filters: {filters}",
            f"shows       {result.images} images of {result.cells} cells, "
            f"{result.total_buzz} Buzz charged",
        ]
    )
