"""YAML manifest -> a checked, typed ``Manifest``; every problem names file:line:column.

``load_manifest(path)`` reads the file; ``parse_manifest(text, path=…)`` parses text (prompt
files are still read relative to ``path.parent``). Nothing is spent or written. Every
problem found is reported at once, as ``InvalidManifest`` (a ``ManifestError``, exit code 2)
whose message has one ``str(Problem)`` per line and whose ``problems`` holds them. Advice from
the seed page comes back as ``Manifest.warnings``, located where the value was written.

Normalized values (see ``runner.manifest._fields``): in ``defaults``, ``models``,
``constants``, ``include`` and ``exclude`` a ``size`` is stored as ``width`` and ``height``;
``loras`` are tuples of ``(air, strength)`` sorted by AIR; whole floats are ints; ``seed:
random`` is ``RANDOM``. Variable keys in ``include``/``exclude`` entries are ``vars.<name>``.
An axis keeps ``size`` as ``(width, height)`` tuples. The format is docs/manifest.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner import contract
from runner.errors import InvalidManifest
from runner.manifest import _checks as checks
from runner.manifest import _textfile as textfile
from runner.manifest._advice import advise_manifest
from runner.manifest._captions import DEFAULT_CAPTION_TEMPLATE
from runner.manifest._fields import (
    BAD,
    INPUT_KEYS,
    RANDOM,
    FieldReader,
    ReadAxis,
    Seed,
)
from runner.manifest._settings import Limits, Retries, SettingsReader
from runner.manifest._yaml import (
    Location,
    Node,
    Problem,
    Report,
    compose,
    entries,
    item,
    join,
    known,
)

__all__ = [
    "RANDOM",
    "Axis",
    "InvalidManifest",
    "Limits",
    "Location",
    "Manifest",
    "Problem",
    "Retries",
    "Seed",
    "decode_manifest",
    "load_manifest",
    "parse_manifest",
]

TOP_KEYS = (
    "name",
    "out",
    "budget",
    "seed_base",
    "defaults",
    "models",
    "grid",
    "include",
    "exclude",
    "repeat",
    "limits",
    "retries",
    "captions",
)
IN_GRID = "a list is an axis: put it under grid"
MAX_MANIFEST_BYTES = 4 * 2**20  # long prompt lists belong in prompt files


@dataclass(frozen=True)
class Axis:
    """One grid axis: a field (``model``, ``size``, ``seed`` …) or ``vars.<name>``."""

    name: str
    values: tuple[object, ...]


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: what the batch is, before anything is expanded or spent."""

    path: Path
    name: str
    out: Path  # absolute
    budget_buzz: int
    seed_base: int
    defaults: Mapping[str, object]
    models: Mapping[str, Mapping[str, object]]
    axes: tuple[Axis, ...]  # in manifest order; constants are not axes
    constants: Mapping[str, object]  # the grid's scalar fields
    include: tuple[Mapping[str, object], ...]
    exclude: tuple[Mapping[str, object], ...]
    repeat: int = 1
    limits: Limits = field(default_factory=Limits)
    retries: Retries = field(default_factory=Retries)
    captions: str = "none"  # the caption files beside the images: none | txt
    caption_template: str = DEFAULT_CAPTION_TEMPLATE  # what a caption holds (`_captions.py`)
    warnings: tuple[Problem, ...] = ()

    @property
    def var_names(self) -> tuple[str, ...]:
        """The template variables, in manifest order (without the ``vars.`` prefix)."""
        return tuple(a.name.removeprefix("vars.") for a in self.axes if a.name.startswith("vars."))


def load_manifest(path: Path | str) -> Manifest:
    """Read and check the manifest at ``path``; raises ``InvalidManifest`` listing problems."""
    path = Path(path)
    try:
        data = textfile.read_bytes(
            path, max_bytes=MAX_MANIFEST_BYTES, allowed="a YAML manifest file"
        )
    except textfile.TextFileError as exc:
        raise InvalidManifest([Problem(None, "", f"{path}: {exc.message}")]) from None
    return parse_manifest(decode_manifest(data, path), path=path)


def decode_manifest(data: bytes, path: Path) -> str:
    """A manifest file's bytes as text (UTF-8, a BOM skipped); raises ``InvalidManifest``."""
    try:
        return textfile.decode_text(data)
    except textfile.TextFileError as exc:
        where = Location(path, exc.line, exc.column)
        raise InvalidManifest([Problem(where, "", exc.message)]) from None


def parse_manifest(text: str, *, path: Path) -> Manifest:
    """Check manifest ``text`` as if read from ``path``; raises ``InvalidManifest``."""
    report = Report(Path(path))
    root = compose(text, report)
    if root is None and not report.errors:
        message = "the manifest is empty (required: name, out, budget)"
        report.error_at(Location(Path(path), 1, 1), "", message)
    if root is None or report.errors:
        raise InvalidManifest(report.errors)
    manifest = _Parser(report).parse(root)
    if report.errors or manifest is None:
        raise InvalidManifest(report.errors)
    return manifest


Level = checks.Level


class _Parser(SettingsReader):
    """One pass over a manifest's nodes; problems go to ``report``."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.path = report.file
        self.reader = FieldReader(report, self.path.parent, 0)

    def parse(self, root: Node) -> Manifest | None:
        pairs = known(entries(root, "", self.report), TOP_KEYS, "", self.report)
        nodes = {key: value_node for key, (_, value_node) in pairs.items()}
        if not isinstance(root, yaml.MappingNode):
            return None
        seed_base = self._seed_base(pairs)
        self.reader.seed_base = seed_base
        name, out = self._name(pairs, root), self._out(pairs, root)
        budget = self._budget(pairs, root)
        defaults = self._level(nodes.get("defaults"), "defaults", INPUT_KEYS, IN_GRID)
        models = self._models(nodes.get("models"))
        constants, axes = self._grid(nodes.get("grid"))
        var_names = tuple(a.name.removeprefix("vars.") for a in axes if a.name.startswith("vars."))
        include = self._entries(nodes.get("include"), "include", var_names)
        exclude = self._entries(nodes.get("exclude"), "exclude", var_names)
        repeat = int(self._setting(pairs, "repeat", 1, ""))
        limits = self._limits(nodes.get("limits"))
        retry_pairs = self._sub(nodes.get("retries"), "retries", ("attempts",))
        retries = Retries(int(self._setting(retry_pairs, "attempts", 3, "retries")))
        captions, caption_template = self._captions(nodes.get("captions"), var_names)
        if self.report.errors:
            return None
        sections = checks.Sections(defaults, models, constants, axes, include)
        checks.check_vars(self.report, self.reader, var_names)
        checks.check_rendered_prompts(self.report, self.reader, axes)
        checks.check_prompts(self.report, nodes.get("grid", root), sections)
        checks.check_size(self.report, nodes.get("grid", root), sections, repeat)
        if self.report.errors:
            return None
        assert name is not None
        assert out is not None
        assert budget is not None
        advise_manifest(self.report, sections)
        return Manifest(
            path=self.path,
            name=name,
            out=out,
            budget_buzz=budget,
            seed_base=seed_base,
            defaults=defaults[0],
            models={model: level[0] for model, level in models.items()},
            axes=tuple(Axis(a.name, a.values) for a in axes),
            constants=constants[0],
            include=tuple(entry[0] for entry in include),
            exclude=tuple(entry[0] for entry in exclude),
            repeat=repeat,
            limits=limits,
            retries=retries,
            captions=captions,
            caption_template=caption_template,
            warnings=tuple(self.report.warnings),
        )

    # --- field levels -------------------------------------------------------------------

    def _level(self, node: Node | None, path: str, allowed: tuple[str, ...], where: str) -> Level:
        values: dict[str, object] = {}
        sources: dict[str, tuple[Node, str]] = {}
        if node is None:
            return values, sources
        for key, (_, value_node) in known(
            entries(node, path, self.report), allowed, path, self.report
        ).items():
            value = self.reader.value(key, value_node, join(path, key), where)
            if value is not BAD:
                values[key] = value
                sources[key] = (value_node, join(path, key))
        self._split_size(values, sources, path)
        return values, sources

    def _split_size(
        self, values: dict[str, object], sources: dict[str, tuple[Node, str]], path: str
    ) -> None:
        if "size" not in values:
            return
        size_source = sources.pop("size")
        size = values.pop("size")
        clash = [name for name in ("width", "height") if name in values]
        if clash:
            message = f"size and {' and '.join(clash)} are both set (allowed: one of them)"
            self.report.error(size_source[0], join(path, "size"), message)
            return
        assert isinstance(size, tuple)
        values["width"], values["height"] = size
        sources["width"] = sources["height"] = size_source

    def _models(self, node: Node | None) -> dict[str, Level]:
        found: dict[str, Level] = {}
        if node is None:
            return found
        allowed = tuple(key for key in INPUT_KEYS if key != "model")
        for model, (_, value_node) in known(
            entries(node, "models", self.report), contract.MODELS, "models", self.report
        ).items():
            found[model] = self._level(value_node, join("models", model), allowed, IN_GRID)
        return found

    def _grid(self, node: Node | None) -> tuple[Level, list[ReadAxis]]:
        values: dict[str, object] = {}
        sources: dict[str, tuple[Node, str]] = {}
        axes: list[ReadAxis] = []
        if node is None:
            return (values, sources), axes
        pairs = known(
            entries(node, "grid", self.report), (*INPUT_KEYS, "vars"), "grid", self.report
        )
        for key, (_, value_node) in pairs.items():
            path = join("grid", key)
            if key == "vars":
                axes.extend(
                    self.reader.variables(
                        value_node, path, {k: None for k in (*INPUT_KEYS, "vars")}
                    )
                )
                continue
            value = self.reader.grid_value(key, value_node, path)
            if isinstance(value, ReadAxis):
                axes.append(value)
            elif value is not BAD:
                values[key] = value
                sources[key] = (value_node, path)
        self._split_size(values, sources, "grid")
        axis_names = {axis.name for axis in axes}
        if "size" in axis_names and axis_names & {"width", "height"} | values.keys() & {
            "width",
            "height",
        }:
            self.report.error(
                pairs["size"][0],
                "grid.size",
                "size and width/height are both set (allowed: one of them)",
            )
        return (values, sources), axes

    def _entries(self, node: Node | None, path: str, var_names: tuple[str, ...]) -> list[Level]:
        found: list[Level] = []
        if node is None:
            return found
        if not isinstance(node, yaml.SequenceNode):
            self.report.error(node, path, "is not a list (allowed: a list of mappings)")
            return found
        allowed = (*INPUT_KEYS, *var_names)
        where = f"an {path} entry is one cell: single values only"
        for index, entry in enumerate(node.value):
            at = item(path, index)
            values: dict[str, object] = {}
            sources: dict[str, tuple[Node, str]] = {}
            pairs = known(entries(entry, at, self.report), allowed, at, self.report)
            if not pairs and isinstance(entry, yaml.MappingNode) and path == "exclude":
                self.report.error(
                    entry, at, "an empty entry would drop every cell (allowed: field: value pairs)"
                )
            for key, (_, value_node) in pairs.items():
                key_path = join(at, key)
                if key in var_names:
                    value: object = self.reader.var_value(value_node, key_path)
                    key = "vars." + key
                    value = BAD if value is None else value
                else:
                    value = self.reader.value(key, value_node, key_path, where)
                if value is RANDOM and path == "exclude":
                    self.report.error(
                        value_node, key_path, "random matches no cell (allowed: an int64 seed)"
                    )
                    value = BAD
                if value is not BAD:
                    values[key] = value
                    sources[key] = (value_node, key_path)
            self._split_size(values, sources, at)
            sources[""] = (entry, at)  # the entry itself, for problems about the whole entry
            found.append((values, sources))
        return found

    # --- whole-manifest checks ------------------------------------------------------------
