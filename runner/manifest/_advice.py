"""The seed page's advice about a manifest, as warnings located where each value was written.

Advice depends on merged values (turbo with cfgScale 4 is advised against; base with 4 is
not), so it is computed per model over the combinations of the axes that advice reads
(cfgScale, steps, quantity, size, width, height and whether a negativePrompt is given), each
axis reduced to its distinct values. When those combinations exceed ``MAX_COMBINATIONS``,
each axis is varied alone instead. A warning is reported at the node of the value it is
about (``contract.Advice.field``), once per place and text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

from runner import contract
from runner.manifest._checks import Level, Sections
from runner.manifest._fields import ReadAxis
from runner.manifest._yaml import Node, Report

ADVISED_AXES = (
    "model",
    "cfgScale",
    "steps",
    "quantity",
    "size",
    "width",
    "height",
    "negativePrompt",
)
MAX_COMBINATIONS = 4096

Source = tuple[Node | None, str] | None
Choice = tuple[tuple[str, object, Source], ...]  # (field, value, source) set by one axis value


def advise_manifest(report: Report, sections: Sections) -> None:
    """Add a warning to ``report`` for every piece of advice the manifest's cells draw."""
    defaults, models, constants = sections.defaults, sections.models, sections.constants
    if sections.has_grid_cells:
        choices = [_choices(axis) for axis in sections.axes if axis.name in ADVISED_AXES]
        for combination in _combinations(choices):
            fields = _layered(defaults, models, [constants], combination)
            _warn(report, fields)
    for entry in sections.include:
        _warn(report, _layered(defaults, models, [constants, entry], ()))


def _choices(axis: ReadAxis) -> list[Choice]:
    """The axis's values that advice can tell apart, each with where it was written."""
    seen: dict[object, Choice] = {}
    for value, node, path in zip(axis.values, axis.nodes, axis.paths, strict=True):
        source: Source = (node, path)
        if axis.name == "negativePrompt":
            key: object = bool(value)
            choice: Choice = (("negativePrompt", value, source),)
        elif axis.name == "size":
            key = value
            assert isinstance(value, tuple)
            choice = (("width", value[0], source), ("height", value[1], source))
        else:
            key = value
            choice = ((axis.name, value, source),)
        seen.setdefault(key, choice)
    return list(seen.values())


def _combinations(choices: list[list[Choice]]) -> Iterator[tuple[Choice, ...]]:
    total = 1
    for options in choices:
        total *= len(options)
    if total <= MAX_COMBINATIONS:
        yield from itertools.product(*choices)
        return
    for index, options in enumerate(choices):
        firsts = [other[0] for other in choices]
        for option in options:
            yield tuple(firsts[:index] + [option] + firsts[index + 1 :])


def _layered(
    defaults: Level,
    models: Mapping[str, Level],
    levels: Sequence[Level],
    combination: tuple[Choice, ...],
) -> dict[str, tuple[object, Source]]:
    """Each field's merged value and source: model defaults < defaults < models < levels."""
    chosen = {name: (value, source) for choice in combination for name, value, source in choice}
    model = chosen.get("model", (None, None))[0]
    for level in reversed(levels):
        model = model or level[0].get("model")
    model = str(model or defaults[0].get("model", contract.MODELS[0]))
    fields: dict[str, tuple[object, Source]] = {
        name: (value, None) for name, value in contract.MODEL_DEFAULTS[model].items()
    }
    for values, sources in (defaults, models.get(model, ({}, {})), *levels):
        for name, value in values.items():
            fields[name] = (value, sources.get(name))
    fields.update(chosen)
    fields["model"] = (model, fields.get("model", (None, None))[1])
    return fields


def _warn(report: Report, fields: Mapping[str, tuple[object, Source]]) -> None:
    request = {name: value for name, (value, _) in fields.items()}
    for advice in contract.advise(request):
        source = fields.get(advice.field, (None, None))[1]
        node, path = source if source is not None else (None, advice.field)
        report.warn(node, path, advice.message)
