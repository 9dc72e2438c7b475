"""Reading input fields, axes, seeds, prompt sources and variables from manifest YAML nodes.

``FieldReader`` turns one node into a checked, normalized value and reports every problem
at its node. Normalized means: ``size`` -> ``(width, height)``; ``loras`` -> a tuple of
``(air, strength)`` pairs sorted by AIR; a whole float (cfgScale, a LoRA strength) -> int, so
``1`` and ``1.0`` are the same value; ``seed: random`` -> ``RANDOM``. A value that failed its
check is ``BAD`` (already reported). Every prompt read is checked as a template, and the
first use of each variable is remembered for the "variable without values" check.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from runner import contract
from runner.contract import shown
from runner.manifest import _prompts as prompts
from runner.manifest._yaml import (
    Location,
    Node,
    Report,
    Scalars,
    entries,
    item,
    join,
    kind,
    known,
)

INPUT_KEYS: tuple[str, ...] = (*contract.FIELDS, "size")
PROMPT_FIELDS = ("prompt", "negativePrompt")
MAX_AXIS_VALUES = 1_000_000
MAX_PROBLEMS_PER_SOURCE = 20
SEED_FORMS = "an int64, random, a list of int64s, {count: N} or {range: [A, B]}"


class Seed(enum.Enum):
    """The seed written as ``random``: pinned per cell at expansion (grid.py)."""

    RANDOM = "random"

    def __repr__(self) -> str:
        return "RANDOM"


RANDOM = Seed.RANDOM


class _Bad(enum.Enum):
    BAD = "bad"


BAD = _Bad.BAD


@dataclass(frozen=True)
class ReadAxis:
    """An axis as read: its values and, for lists, the node of each value."""

    name: str
    values: tuple[object, ...]
    nodes: tuple[Node | None, ...]
    paths: tuple[str, ...]


def empty_prompt(raw: object) -> str | None:
    """What is wrong with a prompt that is empty or only spaces (the service would take it, and
    charge for a picture of nothing), or None."""
    if isinstance(raw, str) and not raw.strip():
        return (
            f"{shown(raw)} is an empty prompt (allowed: text with at least one visible character)"
        )
    return None


def normalize_number(value: int | float) -> int | float:
    """A whole float as an int: ``1.0`` -> ``1``, ``4.5`` stays."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FieldReader:
    """Reads the input fields of one manifest, reporting problems to ``report``."""

    def __init__(self, report: Report, base_dir: Path, seed_base: int) -> None:
        self.report = report
        self.scalars = Scalars()
        self.base_dir = base_dir
        self.seed_base = seed_base
        self.var_uses: dict[str, tuple[Location | None, str]] = {}
        # prompt templates that are only variables and spaces: empty if their values are
        self.bare_prompts: list[tuple[str, tuple[str, ...], Location | None, str]] = []
        self.var_keys: dict[str, tuple[Node, str]] = {}

    # --- single values -------------------------------------------------------------------

    def value(self, name: str, node: Node, path: str, where: str) -> object:
        """One value of field ``name`` (``where`` says why a list is not allowed here)."""
        if name == "loras":
            return self.loras(node, path, where)
        if not isinstance(node, yaml.ScalarNode):
            self.report.error(node, path, f"{kind(node)} is not allowed here ({where})")
            return BAD
        raw = self.scalars.value(node)
        if name == "seed":
            return self._seed(raw, node, path)
        problem = contract.check_field(name, raw)
        if problem is None and name == "prompt":
            problem = empty_prompt(raw)
        if problem is not None:
            self.report.error(node, path, problem)
            return BAD
        if name in PROMPT_FIELDS and isinstance(raw, str):
            self.template(raw, self.report.at(node), path, prompt=name == "prompt")
        if name == "size":
            return contract.parse_size(raw)
        if name == "cfgScale":
            assert isinstance(raw, int | float)
            return normalize_number(raw)
        return raw

    def _seed(self, raw: object, node: Node, path: str) -> object:
        if raw == "random":
            return RANDOM
        if contract.check_field("seed", raw) is None:
            return raw
        self.report.error(node, path, f"{shown(raw)} is not a seed (allowed: {SEED_FORMS})")
        return BAD

    def loras(self, node: Node, path: str, where: str) -> object:
        """A ``{air: strength}`` mapping as sorted ``(air, strength)`` pairs."""
        if not isinstance(node, yaml.MappingNode):
            raw = self.scalars.value(node) if isinstance(node, yaml.ScalarNode) else None
            text = shown(raw) if isinstance(node, yaml.ScalarNode) else kind(node)
            message = (
                f"{text} is not a mapping of AIR URN to strength"
                f" (e.g. {{{contract.AIR_EXAMPLE}: 0.8}}; {where})"
            )
            self.report.error(node, path, message)
            return BAD
        pairs: list[tuple[str, int | float]] = []
        ok = True
        for air, key_node, value_node in entries(node, path, self.report):
            at = f"{path}[{air!r}]"
            strength = self.scalars.value(value_node)
            problem = contract.check_lora_key(air)
            if problem is not None:
                self.report.error(key_node, at, problem)
            strength_problem = contract.check_lora_strength(strength)
            if strength_problem is not None:
                self.report.error(value_node, at, strength_problem)
            if problem or strength_problem:
                ok = False
                continue
            assert isinstance(strength, int | float)
            pairs.append((air, normalize_number(strength)))
        return tuple(sorted(pairs)) if ok else BAD

    # --- templates -------------------------------------------------------------------------

    def template(
        self, text: str, location: Location | None, path: str, *, prompt: bool = False
    ) -> bool:
        """Check ``text`` as a template; remember where each variable is first used, and
        (a ``prompt``) whether it is nothing but variables and spaces."""
        try:
            compiled = prompts.compile_template(text)
        except prompts.TemplateError as exc:
            self.report.error_at(location, path, f"{shown(text)}: {exc}")
            return False
        names = prompts.template_names(compiled)
        for name in names:
            self.var_uses.setdefault(name, (location, path))
        if prompt and names and not prompts.render(compiled, dict.fromkeys(names, "")).strip():
            self.bare_prompts.append((text, names, location, path))
        return True

    # --- axes -----------------------------------------------------------------------------

    def grid_value(self, name: str, node: Node, path: str) -> object:
        """A grid field: a ``ReadAxis`` for a list, a source or a seed form; else a value."""
        if name == "seed" and isinstance(node, yaml.MappingNode):
            return self.seed_form(node, path)
        if name in PROMPT_FIELDS and isinstance(node, yaml.MappingNode):
            return self.source_axis(name, node, path)
        if isinstance(node, yaml.SequenceNode):
            return self.list_axis(name, node, path)
        return self.value(name, node, path, "allowed: a single value or a list")

    def list_axis(self, name: str, node: yaml.SequenceNode, path: str) -> object:
        if not node.value:
            self.report.error(node, path, "empty axis (allowed: a list of at least one value)")
            return BAD
        where = "allowed in a list: " + ("mappings" if name == "loras" else "single values")
        values, nodes, paths = [], [], []
        for index, child in enumerate(node.value):
            at = item(path, index)
            value = self.value(name, child, at, where)
            if value is RANDOM:
                message = f"random is not allowed in a seed list (allowed: {SEED_FORMS})"
                self.report.error(child, at, message)
                value = BAD
            values.append(value)
            nodes.append(child)
            paths.append(at)
        if BAD in values:
            return BAD
        return ReadAxis(name, tuple(values), tuple(nodes), tuple(paths))

    def seed_form(self, node: Node, path: str) -> object:
        """``{count: N}`` or ``{range: [A, B]}`` as a seed axis."""
        pairs = known(entries(node, path, self.report), ("count", "range"), path, self.report)
        if len(pairs) != 1:
            if not self.report.errors or pairs:
                self.report.error(node, path, f"give one of count or range (allowed: {SEED_FORMS})")
            return BAD
        form, (_, value_node) = next(iter(pairs.items()))
        at = join(path, form)
        if form == "count":
            count = self.scalars.value(value_node)
            if not contract.is_integer(count) or not 1 <= count <= MAX_AXIS_VALUES:  # type: ignore[operator]
                message = f"{shown(count)} is not a seed count (allowed 1..{MAX_AXIS_VALUES})"
                self.report.error(value_node, at, message)
                return BAD
            assert isinstance(count, int)
            first, last = self.seed_base, self.seed_base + count - 1
        else:
            bounds = self._seed_range(value_node, at)
            if bounds is None:
                return BAD
            first, last = bounds
        if last > contract.INT64[1]:
            message = f"the seeds would pass the int64 maximum ({shown(first)}..{shown(last)})"
            self.report.error(value_node, at, message)
            return BAD
        values = tuple(range(first, last + 1))
        return ReadAxis("seed", values, (None,) * len(values), (at,) * len(values))

    def _seed_range(self, node: Node, path: str) -> tuple[int, int] | None:
        pair = (
            [self.scalars.value(child) for child in node.value]
            if isinstance(node, yaml.SequenceNode)
            else None
        )
        allowed = f"allowed: [A, B], int64s with A <= B and at most {MAX_AXIS_VALUES} seeds"
        if (
            pair is None
            or len(pair) != 2
            or any(contract.check_field("seed", bound) is not None for bound in pair)
        ):
            shown_value = shown(pair) if pair is not None else kind(node)
            self.report.error(node, path, f"{shown_value} is not a seed range ({allowed})")
            return None
        low, high = pair
        assert isinstance(low, int)
        assert isinstance(high, int)
        if not low <= high or high - low + 1 > MAX_AXIS_VALUES:
            self.report.error(node, path, f"[{low}, {high}] is not a seed range ({allowed})")
            return None
        return (low, high)

    # --- prompt sources -------------------------------------------------------------------

    def source_axis(self, name: str, node: Node, path: str) -> object:
        """A prompt source (``{file: …}``, ``{csv: …, column: …}``, ``{jsonl: …, field: …}``)."""
        texts = self.source_texts(node, path, check_prompt=name)
        if texts is None:
            return BAD
        return ReadAxis(name, texts, (None,) * len(texts), (path,) * len(texts))

    def source_texts(
        self, node: Node, path: str, check_prompt: str | None
    ) -> tuple[str, ...] | None:
        """The texts of a prompt source, each checked (as a prompt when ``check_prompt``)."""
        spec = self._source_spec(node, path)
        if spec is None:
            return None
        kind_name, name, column, name_node = spec
        try:
            file = prompts.source_path(self.base_dir, name)
        except prompts.SourceError as exc:
            self.report.error(name_node, join(path, kind_name), exc.message)
            return None
        shown_file = self.report.file.parent / name
        texts: list[str] = []
        failures = 0
        try:
            for line, text in prompts.read_source(file, kind_name, column):
                location = Location(shown_file, line, 1)
                ok = self._source_text(text, location, path, check_prompt, failures)
                failures += not ok
                if ok:
                    texts.append(text)
        except prompts.SourceError as exc:
            at = self.report.at(name_node)
            if exc.line:
                at = Location(shown_file, exc.line, exc.column)
            self.report.error_at(at, join(path, kind_name), f"{shown(name)} {exc.message}")
            return None
        if failures > MAX_PROBLEMS_PER_SOURCE:
            more = failures - MAX_PROBLEMS_PER_SOURCE
            self.report.error(name_node, path, f"{shown(name)}: {more} more problems not shown")
        if not texts and not failures:
            self.report.error(name_node, path, f"empty axis: {shown(name)} holds no values")
        return tuple(texts) if not failures and texts else None

    def _source_text(
        self, text: str, location: Location, path: str, check_prompt: str | None, failures: int
    ) -> bool:
        quiet = failures >= MAX_PROBLEMS_PER_SOURCE
        report = Report(self.report.file) if quiet else self.report
        if check_prompt is not None:
            problem = contract.check_field(check_prompt, text)
            if problem is not None:
                report.error_at(location, path, problem)
                return False
            saved, self.report = self.report, report
            try:
                return self.template(text, location, path, prompt=check_prompt == "prompt")
            finally:
                self.report = saved
        return True

    def _source_spec(self, node: Node, path: str) -> tuple[str, str, str | None, Node] | None:
        allowed = ("file", "csv", "column", "jsonl", "field")
        pairs = known(entries(node, path, self.report), allowed, path, self.report)
        kinds = [key for key in prompts.SOURCE_KINDS if key in pairs]
        forms = "{file: F}, {csv: F, column: C} or {jsonl: F, field: K}"
        if len(kinds) != 1:
            self.report.error(node, path, f"give one prompt source (allowed: {forms})")
            return None
        kind_name = kinds[0]
        wanted = prompts.SOURCE_KINDS[kind_name]
        extra = [key for key in ("column", "field") if key in pairs and key != wanted]
        for unused in extra:
            message = f"not used by {kind_name} ({forms})"
            self.report.error(pairs[unused][0], join(path, unused), message)
        strings: dict[str, str] = {}
        for key in [kind_name] + ([wanted] if wanted else []):
            if key not in pairs:
                self.report.error(node, join(path, key), f"missing ({forms})")
                continue
            value = self.scalars.value(pairs[key][1])
            if not isinstance(value, str) or not value:
                self.report.error(pairs[key][1], join(path, key), f"{shown(value)} is not a name")
                continue
            strings[key] = value
        if extra or len(strings) != (2 if wanted else 1):
            return None
        column = strings[wanted] if wanted else None
        return (kind_name, strings[kind_name], column, pairs[kind_name][1])

    # --- variables ------------------------------------------------------------------------

    def variables(self, node: Node, path: str, reserved: Mapping[str, object]) -> list[ReadAxis]:
        """``grid.vars``: each variable an axis of strings named ``vars.<name>``."""
        axes: list[ReadAxis] = []
        for name, key_node, value_node in entries(node, path, self.report):
            at = join(path, name)
            if not prompts.NAME.match(name) or name in reserved:
                why = "an input field's name" if name in reserved else "not a name"
                message = f"{name!r} is {why} (allowed: letters, digits and _, not a field)"
                self.report.error(key_node, at, message)
                continue
            self.var_keys[name] = (key_node, at)
            values = self._var_values(value_node, at)
            if values is not None:
                axes.append(values)
        return axes

    def _var_values(self, node: Node, path: str) -> ReadAxis | None:
        name = "vars." + path.rsplit(".", 1)[-1]
        if isinstance(node, yaml.MappingNode):
            texts = self.source_texts(node, path, check_prompt=None)
            if texts is None:
                return None
            return ReadAxis(name, texts, (None,) * len(texts), (path,) * len(texts))
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            what = "empty axis" if isinstance(node, yaml.SequenceNode) else kind(node)
            message = f"{what} is not a variable's values (allowed: a list or a prompt source)"
            self.report.error(node, path, message)
            return None
        values = [self.var_value(child, item(path, i)) for i, child in enumerate(node.value)]
        if None in values:
            return None
        nodes = tuple(node.value)
        paths = tuple(item(path, i) for i in range(len(values)))
        return ReadAxis(name, tuple(values), nodes, paths)

    def var_value(self, node: Node, path: str) -> str | None:
        """One variable value: text; a number is taken as written (``1.50`` stays ``1.50``)."""
        raw = self.scalars.value(node) if isinstance(node, yaml.ScalarNode) else node
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            assert isinstance(node, yaml.ScalarNode)
            return str(node.value)
        text = shown(raw) if isinstance(node, yaml.ScalarNode) else kind(node)
        self.report.error(node, path, f"{text} is not a variable value (allowed: text)")
        return None
