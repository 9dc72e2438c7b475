"""Whole-manifest checks that need every section read: variables, prompts, the cell count.

* every template variable used has values in ``grid.vars``, and every variable there is used;
* every cell has a prompt (from the grid, ``defaults`` or ``models.<model>``);
* an ``include`` entry gives a value for each variable its prompt uses, and no others;
* the manifest makes at most ``MAX_CELLS`` cells (axes × repeat, plus includes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runner import contract
from runner.contract import shown
from runner.manifest import _prompts as prompts
from runner.manifest._fields import PROMPT_FIELDS, FieldReader, ReadAxis
from runner.manifest._yaml import Node, Report, item

MAX_CELLS = 10_000_000

# A section's normalized values and, per field, the (node, path) it was written at.
Level = tuple[dict[str, object], dict[str, tuple[Node, str]]]


@dataclass(frozen=True)
class Sections:
    """The field-bearing sections of a manifest, as read (with their nodes)."""

    defaults: Level
    models: Mapping[str, Level]
    constants: Level
    axes: Sequence[ReadAxis]
    include: Sequence[Level]

    @property
    def has_grid_cells(self) -> bool:
        return has_grid_cells(self.axes, self.constants[0], self.include)


def has_grid_cells(
    axes: Sequence[object], constants: Mapping[str, object], include: Sequence[object]
) -> bool:
    """Whether the grid makes cells: it has axes or constants, or there is no ``include``.

    A manifest whose grid is empty and which lists ``include`` entries is made of exactly
    those entries (as a CI matrix with only ``include``).
    """
    return bool(axes) or bool(constants) or not include


def check_vars(report: Report, reader: FieldReader, var_names: tuple[str, ...]) -> None:
    """Every variable used has values, and every variable with values is used."""
    uses = reader.var_uses
    for name, (location, path) in uses.items():
        if name not in var_names:
            message = f"{{{name}}} has no values (add grid.vars.{name}: a list or a prompt source)"
            report.error_at(location, path, message)
    for name in var_names:
        if name not in uses:
            node, path = reader.var_keys[name]
            message = (
                f"no prompt uses {{{name}}} (allowed: variables a prompt or negativePrompt uses)"
            )
            report.error(node, path, message)


def check_rendered_prompts(report: Report, reader: FieldReader, axes: Sequence[ReadAxis]) -> None:
    """A prompt that is only variables (``"{subject}"``) must not render empty: when each of
    its variables has an empty value, the cell that takes them all would be paid for a
    picture of nothing. Reported where the prompt is written, naming the empty values."""
    blank: dict[str, tuple[str, str]] = {}  # variable -> (path, value) of its first empty one
    for axis in axes:
        if not axis.name.startswith("vars."):
            continue
        for value, path in zip(axis.values, axis.paths, strict=True):
            if isinstance(value, str) and not value.strip():
                blank[axis.name.removeprefix("vars.")] = (path, value)
                break
    for text, names, location, path in reader.bare_prompts:
        if all(name in blank for name in names):
            where = ", ".join(f"{blank[n][0]} is {shown(blank[n][1])}" for n in names)
            message = (
                f"{shown(text)} renders an empty prompt where {where} (allowed: values that"
                " leave the prompt at least one visible character)"
            )
            report.error_at(location, path, message)


def check_prompts(report: Report, grid: Node, sections: Sections) -> None:
    """Every grid cell and every include entry has a prompt; entries fill their variables."""
    defaults, models, constants = sections.defaults[0], sections.models, sections.constants[0]
    axis_names = {axis.name for axis in sections.axes}
    if sections.has_grid_cells and "prompt" not in axis_names | constants.keys():
        for model in _grid_models(defaults, constants, sections.axes):
            if "prompt" not in models.get(model, ({}, {}))[0] and "prompt" not in defaults:
                where = f"grid, defaults or models.{model}"
                message = f"no prompt for the {model} cells (required: a prompt in {where})"
                report.error(grid, "grid.prompt", message)
    for index, entry in enumerate(sections.include):
        _check_include(report, index, entry, sections)


def _check_include(report: Report, index: int, entry: Level, sections: Sections) -> None:
    values, sources = entry
    at = item("include", index)
    entry_node = sources[""][0] if "" in sources else None
    defaults, constants = sections.defaults[0], sections.constants[0]
    model = str(values.get("model") or constants.get("model") or defaults.get("model") or "turbo")
    levels = (values, constants, sections.models.get(model, ({}, {}))[0], defaults)
    texts = [
        next((level[name] for level in levels if name in level), None) for name in PROMPT_FIELDS
    ]
    if texts[0] is None:
        where = f"the entry, grid, defaults or models.{model}"
        report.error(entry_node, at, f"no prompt (required: a prompt in {where})")
        return
    used: set[str] = set()
    for text in texts:
        if isinstance(text, str):
            used |= set(prompts.template_names(prompts.compile_template(text)))
    given = {key.removeprefix("vars.") for key in values if key.startswith("vars.")}
    for name in sorted(used - given):
        message = f"the prompt uses {{{name}}} but the entry gives no {name} (required)"
        report.error(entry_node, at, message)
    for name in sorted(given - used):
        node, path = sources["vars." + name]
        report.error(node, path, f"the entry's prompt has no {{{name}}}")


def check_size(report: Report, node: Node, sections: Sections, repeat: int) -> None:
    """At most ``MAX_CELLS`` cells, counting replicas."""
    product = math.prod(len(axis.values) for axis in sections.axes)
    grid = product if sections.has_grid_cells else 0
    total = (grid + len(sections.include)) * repeat
    if total > MAX_CELLS:
        message = f"the manifest makes {total:,} cells (allowed at most {MAX_CELLS:,}: split it)"
        report.error(node, "grid", message)


def _grid_models(
    defaults: Mapping[str, object], constants: Mapping[str, object], axes: Sequence[ReadAxis]
) -> list[str]:
    for axis in axes:
        if axis.name == "model":
            return [str(value) for value in dict.fromkeys(axis.values)]
    return [str(constants.get("model") or defaults.get("model") or contract.MODELS[0])]
