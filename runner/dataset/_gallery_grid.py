"""The gallery's X/Y grid: a batch's axes found from its cells, two of them laid out, costs summed.

Pure: no I/O. `gallery.py` reads the cells from the store (`Store.gallery_cells`: the
store's `GalleryCell` and `GalleryImage` rows, used here as they are); `gallery_html.py` and
`gallery_sheet.py` draw the `Grid` this module builds.

**Axes.** The gallery works from OUT alone, without the manifest: an axis is any request
field (``size`` standing for width x height) or template variable (``vars.<name>``) whose
value differs between cells. Its values keep the order in which the grid first meets them,
which is the manifest's order. Replicas and the images of one request (``quantity``) are not
axes: they sit side by side in their grid cell.

**Twins.** Axes that split the cells the same way (``steps`` and ``cfgScale`` when each model
keeps its own) are one axis under the name first chosen or preferred; the others' values
are shown beside its labels. Twins are never laid out against each other.

**The default X and Y** are the two axes that make the fullest grid, then the largest: the
pair whose values co-occur in the most of their combinations (1.0 for a full product such as
``model x prompt``), then a pair without ``seed`` (seeds are samples of one request: they
sit side by side in a position, labelled), then with the most combinations, then in the
preference order ``vars.*``, model, prompt, size, steps ... seed. So a random seed that
differs in every cell is not picked over the axes the manifest actually crossed. A prompt
that the template variables render (one prompt per combination of their values) is left out
of the default choice: its variables are the axes to lay out, not 60 long texts against the
seeds. Of the two, the one with more values runs down the rows (Y; pages scroll down, and a
prompt label has room on the left), the other across the columns (X). ``--x``/``--y``
choose either or both. The other axes are
filters, unless they never split a grid position (then they would only pick positions).

**Cost.** A cell's Buzz is what all its attempts were charged (refunds already deducted);
a grid position's, a row's and a column's are sums over the cells they hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from runner import contract
from runner.errors import GalleryError
from runner.identity import canonical_json
from runner.store import GalleryCell as GalleryCell  # the store's rows, used as they are
from runner.store import GalleryImage as GalleryImage
from runner.store import ImageState

# Request fields that can be an axis, in the order ties are broken and filters are shown.
FIELD_AXES: tuple[str, ...] = (
    "model",
    "prompt",
    "size",
    "steps",
    "cfgScale",
    "sampleMethod",
    "schedule",
    "loras",
    "negativePrompt",
    "seed",
    "quantity",
    "outputFormat",
)
ALIASES: Mapping[str, str] = {"width": "size", "height": "size", "sampler": "sampleMethod"}
DEFAULT_STATES: frozenset[str] = frozenset({ImageState.DOWNLOADED.value})
NONE_LABEL = "(none)"
ALL_LABEL = "all"


@dataclass(frozen=True)
class GridAxis:
    """An axis: its name, its distinct values' labels, and each cell's value (an index)."""

    name: str  # "" for the one-value axis used when nothing is left to lay out
    labels: tuple[str, ...]
    coords: tuple[int, ...]  # per cell of the gallery, in order: an index into labels

    @property
    def size(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Grid:
    """Cells laid out in rows (Y) and columns (X), the other axes as filters, with Buzz sums."""

    name: str  # the batch's
    cells: tuple[GalleryCell, ...]
    x: GridAxis
    y: GridAxis
    filters: tuple[GridAxis, ...]  # one per group of twins; X's and Y's twins are left out
    twins: Mapping[str, tuple[GridAxis, ...]]  # axis name -> the axes that vary exactly with it
    positions: tuple[tuple[tuple[int, ...], ...], ...]  # [row][column] -> indices into cells
    states: frozenset[str]  # image states shown
    cell_buzz: tuple[tuple[int, ...], ...]  # [row][column]
    row_buzz: tuple[int, ...]
    col_buzz: tuple[int, ...]
    total_buzz: int
    thumb_px: int | None = None  # --thumb: each image's width; None: a position's width shared

    def shown(self, cell: GalleryCell) -> tuple[GalleryImage, ...]:
        """The cell's images in the states shown, in index order."""
        return tuple(image for image in cell.images if image.state in self.states)

    @property
    def image_count(self) -> int:
        return sum(len(self.shown(cell)) for cell in self.cells)

    def image_label(self, n: int, image: GalleryImage) -> str:
        """What tells image `image` of cell `n` from the others in its grid position: the
        values of the filters that differ there (``seed 42``), the replica when replicas
        share it, the image's number when its cell has several; "" when it is alone."""
        slot = self.positions[self.y.coords[n]][self.x.coords[n]]
        parts = [
            f"{axis.name.removeprefix('vars.')} {shorten(axis.labels[axis.coords[n]], 24)}"
            for axis in self.filters
            if len({axis.coords[m] for m in slot}) > 1
        ]
        cell = self.cells[n]
        if len({self.cells[m].replica for m in slot}) > 1:
            parts.append(f"replica {cell.replica}")
        if len(self.shown(cell)) > 1:
            parts.append(f"#{image.index}")
        return " · ".join(parts)

    def widest_position(self) -> int:
        """The most images side by side in one grid position (its near-square tiling)."""
        counts = (
            sum(len(self.shown(self.cells[n])) for n in slot)
            for row in self.positions
            for slot in row
        )
        return max((tiling(count)[0] for count in counts), default=1)

    def twin_names(self, axis: GridAxis) -> tuple[str, ...]:
        """The names of the axes that vary exactly with `axis` (steps and cfgScale with model)."""
        return tuple(twin.name for twin in self.twins.get(axis.name, ()))

    def twin_labels(self, axis: GridAxis, value: int) -> tuple[str, ...]:
        """`name label` of each twin at the cells where `axis` has its value number `value`."""
        twins = self.twins.get(axis.name, ())
        if not twins:
            return ()
        n = axis.coords.index(value)
        return tuple(f"{twin.name} {twin.labels[twin.coords[n]]}" for twin in twins)


def value_label(name: str, value: object) -> str:
    """A value as the gallery writes it: text as is, numbers as a person writes them."""
    if value is None:
        return NONE_LABEL
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return contract.number_text(value)
    if isinstance(value, Mapping):
        if not value:
            return NONE_LABEL
        return ", ".join(f"{air} @ {value_label('', w)}" for air, w in value.items())
    return canonical_json(value)


def axis_value(cell: GalleryCell, name: str) -> tuple[str, str]:
    """The (identity, label) of the cell's value on axis `name`."""
    if name.startswith("vars."):
        text = cell.vars.get(name.removeprefix("vars."))
        return canonical_json(text), NONE_LABEL if text is None else text
    if name == "size":
        width, height = cell.request.get("width"), cell.request.get("height")
        return canonical_json(
            [width, height]
        ), f"{value_label('', width)}x{value_label('', height)}"
    value = cell.request.get(name)
    return canonical_json(value), value_label(name, value)


def candidate_names(cells: Iterable[GalleryCell]) -> tuple[str, ...]:
    """Every name that could be an axis: the cells' template variables, then FIELD_AXES."""
    var_names: dict[str, None] = {}
    for cell in cells:
        var_names.update(dict.fromkeys(cell.vars))
    return (*(f"vars.{name}" for name in var_names), *FIELD_AXES)


def make_axis(cells: Sequence[GalleryCell], name: str) -> GridAxis:
    """The axis `name` over `cells`, its values in the order the cells first hold them."""
    index: dict[str, int] = {}
    labels: list[str] = []
    coords: list[int] = []
    for cell in cells:
        identity, label = axis_value(cell, name)
        at = index.get(identity)
        if at is None:
            at = index[identity] = len(labels)
            labels.append(label)
        coords.append(at)
    return GridAxis(name, tuple(labels), tuple(coords))


def detect_axes(cells: Sequence[GalleryCell]) -> tuple[GridAxis, ...]:
    """The axes of the batch: every candidate whose value is not the same in every cell."""
    axes = (make_axis(cells, name) for name in candidate_names(cells))
    return tuple(axis for axis in axes if axis.size > 1)


def unit_axis(count: int) -> GridAxis:
    """The one-value axis: a single row or column holding every cell."""
    return GridAxis("", (ALL_LABEL,), (0,) * count)


def _fill(a: GridAxis, b: GridAxis) -> float:
    return len(set(zip(a.coords, b.coords, strict=True))) / (a.size * b.size)


def _pair_key(a: GridAxis, b: GridAxis, rank: Mapping[str, int]) -> tuple[float, bool, int, int]:
    seedless = "seed" not in (a.name, b.name)  # seeds are samples: they share a position
    return (_fill(a, b), seedless, a.size * b.size, -(rank[a.name] + rank[b.name]))


def _oriented(a: GridAxis, b: GridAxis, rank: Mapping[str, int]) -> tuple[GridAxis, GridAxis]:
    """(x, y) of a default pair: the axis with more values (then the preferred one) is Y."""
    if (b.size, -rank[b.name]) > (a.size, -rank[a.name]):
        a, b = b, a
    return b, a


def _named(
    axes: Sequence[GridAxis], flag: str, wanted: str, cells: Sequence[GalleryCell]
) -> GridAxis:
    name = ALIASES.get(wanted, wanted)
    for axis in axes:
        if axis.name == name:
            return axis
    allowed = ", ".join(axis.name for axis in axes)
    varying = f"axes that vary in this batch: {allowed}" if axes else "no field varies in it"
    if name in candidate_names(cells) and cells:
        same = axis_value(cells[0], name)[1]
        raise GalleryError(
            f"{flag} {wanted}: '{name}' is {shorten(same)!r} in every cell, so it is not an "
            f"axis; {varying}"
        )
    raise GalleryError(f"{flag} {wanted}: the batch has no field '{name}'; {varying}")


def rendered_by_vars(axis: GridAxis, axes: Sequence[GridAxis]) -> bool:
    """Whether `axis` (a prompt) is a function of the template variables that vary: each
    combination of their values gives one value of it. Such a prompt is what the variables
    render (60 prompts from 3 animals x 20 places), so the variables are the axes to lay out,
    not the 60 long texts; it is still an axis for --x/--y."""
    if axis.name not in ("prompt", "negativePrompt"):
        return False
    var_axes = [a for a in axes if a.name.startswith("vars.")]
    if not var_axes:
        return False
    combos = list(zip(*(a.coords for a in var_axes), strict=True))
    return len(set(zip(combos, axis.coords, strict=True))) == len(set(combos))


def choose_axes(
    cells: Sequence[GalleryCell],
    axes: Sequence[GridAxis],
    x: str | None = None,
    y: str | None = None,
) -> tuple[GridAxis, GridAxis]:
    """(X, Y): the axes asked for, or the default pair (see the module docstring)."""
    rank = {name: n for n, name in enumerate(candidate_names(cells))}
    x_axis = _named(axes, "--x", x, cells) if x is not None else None
    y_axis = _named(axes, "--y", y, cells) if y is not None else None
    if x_axis is None or y_axis is None:  # the default choices skip what the vars render
        axes = [a for a in axes if not rendered_by_vars(a, axes)]
    if x_axis is not None and y_axis is not None:
        if x_axis.name == y_axis.name:
            others = ", ".join(a.name for a in axes if a.name != x_axis.name) or "none"
            raise GalleryError(
                f"--x and --y are both '{x_axis.name}': choose two different axes "
                f"(the others that vary: {others})"
            )
        return x_axis, y_axis
    fixed = x_axis or y_axis
    if fixed is not None:
        partners = [a for a in axes if a.coords != fixed.coords]  # not itself nor its twins
        if not partners:
            return (fixed, unit_axis(len(cells))) if x_axis else (unit_axis(len(cells)), fixed)
        best = max(partners, key=lambda a: _pair_key(fixed, a, rank))
        return (fixed, best) if x_axis else (best, fixed)
    if not axes:
        return unit_axis(len(cells)), unit_axis(len(cells))
    pairs = [(a, b) for n, a in enumerate(axes) for b in axes[n + 1 :] if a.coords != b.coords]
    if not pairs:  # one axis, perhaps with twins (model with its steps and cfgScale)
        return unit_axis(len(cells)), max(axes, key=lambda a: (a.size, -rank[a.name]))
    a, b = max(pairs, key=lambda pair: _pair_key(pair[0], pair[1], rank))
    return _oriented(a, b, rank)


def _splits_a_position(axis: GridAxis, positions: Sequence[Sequence[Sequence[int]]]) -> bool:
    """Whether some grid position holds cells with different values of `axis`.

    An axis that never does (a prompt rendered from the X and Y variables, a random seed
    with one cell per position) would only pick out positions: it is no filter.
    """
    return any(len({axis.coords[n] for n in slot}) > 1 for row in positions for slot in row)


def group_twins(
    axes: Sequence[GridAxis], first: Sequence[GridAxis] = ()
) -> dict[str, tuple[GridAxis, ...]]:
    """Axes that split the cells the same way, grouped: representative name -> the others.

    Values are numbered in the order the cells first hold them, so two axes split the cells
    alike exactly when their `coords` are equal. The axes in `first` represent their group;
    otherwise the earliest axis does.
    """
    groups: dict[tuple[int, ...], list[GridAxis]] = {}
    for axis in (*first, *axes):
        group = groups.setdefault(axis.coords, [])
        if axis.name and all(axis.name != member.name for member in group):
            group.append(axis)
    return {group[0].name: tuple(group[1:]) for group in groups.values() if group}


def parse_states(states: Iterable[str]) -> frozenset[str]:
    """The image states to show; raise GalleryError naming the allowed ones."""
    allowed = [s.value for s in ImageState]
    chosen = frozenset(s.strip() for s in states if s.strip())
    unknown = sorted(chosen.difference(allowed))
    if unknown or not chosen:
        shown = ", ".join(unknown) if unknown else "nothing"
        raise GalleryError(f"--state {shown}: image states are {', '.join(allowed)}")
    return chosen


def build_grid(
    name: str,
    cells: Sequence[GalleryCell],
    *,
    x: str | None = None,
    y: str | None = None,
    states: Iterable[str] = DEFAULT_STATES,
    thumb: int | None = None,
) -> Grid:
    """Lay `cells` out on X/Y (chosen or default) with the other axes as filters; `thumb`
    is each image's width in pixels (None: a grid position's width, shared by its images)."""
    shown_states = parse_states(states)
    cells = tuple(cells)
    axes = detect_axes(cells)
    x_axis, y_axis = choose_axes(cells, axes, x, y)
    twins = group_twins(axes, first=(x_axis, y_axis))
    slots: list[list[list[int]]] = [[[] for _ in x_axis.labels] for _ in y_axis.labels]
    for n in range(len(cells)):
        slots[y_axis.coords[n]][x_axis.coords[n]].append(n)
    positions = tuple(tuple(tuple(slot) for slot in row) for row in slots)
    chosen = {x_axis.name, y_axis.name}
    filters = tuple(
        a
        for a in axes
        if a.name in twins and a.name not in chosen and _splits_a_position(a, positions)
    )
    cell_buzz = tuple(
        tuple(sum(cells[n].charged_buzz for n in slot) for slot in row) for row in positions
    )
    return Grid(
        name=name,
        cells=cells,
        x=x_axis,
        y=y_axis,
        filters=filters,
        twins=twins,
        positions=positions,
        states=shown_states,
        cell_buzz=cell_buzz,
        row_buzz=tuple(sum(row) for row in cell_buzz),
        col_buzz=tuple(sum(row[c] for row in cell_buzz) for c in range(x_axis.size)),
        total_buzz=sum(cell.charged_buzz for cell in cells),
        thumb_px=thumb,
    )


def tiling(count: int) -> tuple[int, int]:
    """(columns, rows) for `count` images side by side in one grid position: near square."""
    if count <= 0:
        return 1, 1
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def shorten(text: str, limit: int = 60) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
