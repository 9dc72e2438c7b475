"""YAML manifest -> a checked, typed ``Manifest``; every problem names file:line:column.

``load_manifest(path)`` reads the file; ``parse_manifest(text, path=…)`` parses text (prompt
files are still read relative to ``path.parent``). Nothing is spent or written. Every
problem found is reported at once, as ``InvalidManifest`` (a ``ManifestError``, exit code 2)
whose message has one ``str(Problem)`` per line and whose ``problems`` holds them. Advice from
the seed page comes back as ``Manifest.warnings``, located where the value was written.

Normalized values (see ``runner.manifest_fields``): in ``defaults``, ``models``,
``constants``, ``include`` and ``exclude`` a ``size`` is stored as ``width`` and ``height``;
``loras`` are tuples of ``(air, strength)`` sorted by AIR; whole floats are ints; ``seed:
random`` is ``RANDOM``. Variable keys in ``include``/``exclude`` entries are ``vars.<name>``.
An axis keeps ``size`` as ``(width, height)`` tuples. The format is docs/manifest.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner import manifest_checks as checks
from runner import zimage
from runner.errors import ManifestError
from runner.manifest_advice import advise_manifest
from runner.manifest_fields import (
    BAD,
    INPUT_KEYS,
    RANDOM,
    FieldReader,
    ReadAxis,
    Seed,
)
from runner.manifest_yaml import (
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
from runner.zimage import shown

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
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
CAPTIONS = ("none", "txt")
IN_GRID = "a list is an axis: put it under grid"


@dataclass(frozen=True)
class Limits:
    """How hard the runner may push: workflows in flight, submissions/s, downloads at once."""

    in_flight: int = 8
    submit_per_s: float = 2.0
    downloads: int = 4


@dataclass(frozen=True)
class Retries:
    """Attempts per cell for failed or expired workflows."""

    attempts: int = 3


# (minimum, maximum) of each runner setting; bool: whether it must be an integer.
SETTING_RANGES: Mapping[str, tuple[float, float, bool]] = {
    "in_flight": (1, 10_000, True),
    "submit_per_s": (0.01, 1_000, False),
    "downloads": (1, 256, True),
    "attempts": (1, 100, True),
    "repeat": (1, 1_000, True),
}


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
    captions: str = "none"
    warnings: tuple[Problem, ...] = ()

    @property
    def var_names(self) -> tuple[str, ...]:
        """The template variables, in manifest order (without the ``vars.`` prefix)."""
        return tuple(a.name.removeprefix("vars.") for a in self.axes if a.name.startswith("vars."))


class InvalidManifest(ManifestError):
    """The manifest has problems; the message lists each, one per line."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems: tuple[Problem, ...] = tuple(problems)


def load_manifest(path: Path | str) -> Manifest:
    """Read and check the manifest at ``path``; raises ``InvalidManifest`` listing problems."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InvalidManifest([Problem(None, "", f"{path}: no such manifest file")]) from None
    except UnicodeDecodeError as exc:
        message = f"{path}: not UTF-8 text (byte {exc.start + 1})"
        raise InvalidManifest([Problem(None, "", message)]) from None
    except OSError as exc:
        message = f"{path}: cannot be read ({exc.strerror})"
        raise InvalidManifest([Problem(None, "", message)]) from None
    return parse_manifest(text, path=path)


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


class _Parser:
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
        captions = self._captions(nodes.get("captions"))
        if self.report.errors:
            return None
        sections = checks.Sections(defaults, models, constants, axes, include)
        checks.check_vars(self.report, self.reader, var_names)
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
            warnings=tuple(self.report.warnings),
        )

    # --- top-level scalars ------------------------------------------------------------------

    def _scalar(
        self, pairs: Mapping[str, tuple[Node, Node]], key: str
    ) -> tuple[object, Node] | None:
        if key not in pairs:
            return None
        node = pairs[key][1]
        return (self.reader.scalars.value(node), node)

    def _missing(self, root: Node, key: str, allowed: str) -> None:
        self.report.error(root, key, f"missing (required: {allowed})")

    def _name(self, pairs: Mapping[str, tuple[Node, Node]], root: Node) -> str | None:
        allowed = "1-64 characters of A-Z a-z 0-9 _ -"
        found = self._scalar(pairs, "name")
        if found is None:
            self._missing(root, "name", f"the batch name, {allowed}")
            return None
        value, node = found
        if isinstance(value, str) and NAME_PATTERN.match(value):
            return value
        self.report.error(node, "name", f"{shown(value)} is not a batch name (allowed: {allowed})")
        return None

    def _out(self, pairs: Mapping[str, tuple[Node, Node]], root: Node) -> Path | None:
        found = self._scalar(pairs, "out")
        if found is None:
            self._missing(root, "out", "the output folder, relative to this file")
            return None
        value, node = found
        if not isinstance(value, str) or not value.strip():
            message = f"{shown(value)} is not a folder (allowed: a path, relative to this file)"
            self.report.error(node, "out", message)
            return None
        return Path(os.path.normpath(self.path.parent.absolute() / value))

    def _budget(self, pairs: Mapping[str, tuple[Node, Node]], root: Node) -> int | None:
        found = self._scalar(pairs, "budget")
        if found is None:
            self._missing(root, "budget", "the Buzz cap, a whole number > 0")
            return None
        value, node = found
        if zimage.is_integer(value) and value > 0:  # type: ignore[operator]
            assert isinstance(value, int)
            return value
        message = f"{shown(value)} is not a Buzz cap (allowed: a whole number > 0)"
        self.report.error(node, "budget", message)
        return None

    def _seed_base(self, pairs: Mapping[str, tuple[Node, Node]]) -> int:
        found = self._scalar(pairs, "seed_base")
        if found is None:
            return 0
        value, node = found
        problem = zimage.check_field("seed", value)
        if problem is None:
            assert isinstance(value, int)
            return value
        self.report.error(node, "seed_base", problem)
        return 0

    def _sub(
        self, node: Node | None, path: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Node, Node]]:
        if node is None:
            return {}
        return known(entries(node, path, self.report), allowed, path, self.report)

    def _setting(
        self, pairs: Mapping[str, tuple[Node, Node]], key: str, default: float, path: str
    ) -> float:
        found = self._scalar(pairs, key)
        if found is None:
            return default
        value, node = found
        low, high, whole = SETTING_RANGES[key]
        ok = zimage.is_integer(value) if whole else zimage.is_number(value)
        if ok and low <= value <= high:  # type: ignore[operator]
            assert isinstance(value, int | float)
            return value
        what = "a whole number" if whole else "a number"
        message = (
            f"{shown(value)} is not allowed (allowed: {what} {zimage.number_text(low)}..{high})"
        )
        self.report.error(node, join(path, key), message)
        return default

    def _limits(self, node: Node | None) -> Limits:
        pairs = self._sub(node, "limits", ("in_flight", "submit_per_s", "downloads"))
        default = Limits()
        return Limits(
            in_flight=int(self._setting(pairs, "in_flight", default.in_flight, "limits")),
            submit_per_s=float(
                self._setting(pairs, "submit_per_s", default.submit_per_s, "limits")
            ),
            downloads=int(self._setting(pairs, "downloads", default.downloads, "limits")),
        )

    def _captions(self, node: Node | None) -> str:
        if node is None:
            return "none"
        value = self.reader.scalars.value(node)
        if isinstance(value, str) and value in CAPTIONS:
            return value
        hint = zimage.suggestion(value, CAPTIONS) if isinstance(value, str) else ""
        message = f"{shown(value)} is not a captions mode{hint} (allowed: {', '.join(CAPTIONS)})"
        self.report.error(node, "captions", message)
        return "none"

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
            entries(node, "models", self.report), zimage.MODELS, "models", self.report
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
