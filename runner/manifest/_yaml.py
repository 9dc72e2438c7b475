"""YAML nodes with their positions: composing a manifest safely and reporting problems at them.

``compose`` parses YAML into PyYAML's node tree (``yaml.SafeLoader``), which keeps every
value's line and column. It rejects, as located problems rather than crashes: syntax errors
(tabs in the indentation named as such), characters YAML forbids, more than one document,
nesting deeper than ``MAX_DEPTH`` (stopped while composing, before Python's recursion limit),
aliases that refer to themselves, alias "bombs" that would expand to more than
``MAX_VALUES`` values, tags other than the plain ones (``!!python/…``, ``!foo``,
``!!binary``, ``!!set``…), and text holding a lone UTF-16 surrogate (``"\\ud800"``: YAML's
escapes can write one; it is not Unicode, and the service refuses it with a 400), located at
the escape that wrote it. ``Report`` collects the problems and warnings of one manifest;
``entries`` reads a mapping node's keys (strings, no duplicates, no ``<<`` merge keys) and
``known`` flags unknown keys with "did you mean". ``InvalidManifest`` carries them out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.contract import shown, suggestion

MAX_DEPTH = 32
MAX_VALUES = 1_000_000
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
# Tags a manifest may carry (implicitly or written): plain values, lists, mappings, << keys.
PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge")
)

Node = yaml.Node


@dataclass(frozen=True)
class Location:
    """A position in a file, 1-based; ``str()`` is ``file:line:column``."""

    file: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One error or warning: where, the field path, and what is wrong and allowed."""

    location: Location | None
    path: str  # e.g. "grid.steps[2]"; "" for the document itself
    message: str

    def __str__(self) -> str:
        parts = [str(self.location)] if self.location is not None else []
        if self.path:
            parts.append(self.path)
        return ": ".join([*parts, self.message])


@dataclass
class Report:
    """The problems and warnings found in one manifest, in the order they were found."""

    file: Path
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def at(self, node: Node | None) -> Location | None:
        if node is None:
            return None
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node: Node | None, path: str, message: str) -> None:
        self.errors.append(Problem(self.at(node), path, message))

    def error_at(self, location: Location | None, path: str, message: str) -> None:
        self.errors.append(Problem(location, path, message))

    def warn(self, node: Node | None, path: str, message: str) -> None:
        problem = Problem(self.at(node), path, message)
        if problem not in self.warnings:
            self.warnings.append(problem)


def join(path: str, key: str) -> str:
    """``grid`` + ``steps`` -> ``grid.steps``."""
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    """``grid.steps`` + 2 -> ``grid.steps[2]``."""
    return f"{path}[{index}]"


def compose(text: str, report: Report) -> Node | None:
    """The document's root node, or None (with the reason in ``report``) if it is unusable."""
    try:
        root: Node | None = yaml.compose(text, Loader=_Loader)
    except _TooDeep as exc:
        report.error_at(_location(report, exc.mark), "", _TOO_DEEP)
        return None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
        message = (
            f"the character U+{code:04X} is not allowed in YAML"
            f' (allowed: printable text; in a double-quoted string write "\\u{code:04x}")'
        )
        report.error_at(Location(report.file, line, column), "", message)
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in what:
            what = "a tab (allowed: spaces for indentation; YAML does not allow tabs there)"
        report.error_at(_location(report, mark), "", f"YAML syntax error: {what}")
        return None
    except RecursionError:
        report.error_at(None, "", _TOO_DEEP)
        return None
    except yaml.YAMLError as exc:
        report.error_at(None, "", f"YAML error: {exc}")
        return None
    if root is not None and not _bounded(root, report, text):
        return None
    return root


_TOO_DEEP = f"YAML nesting is too deep (allowed {MAX_DEPTH} levels)"


def _location(report: Report, mark: yaml.Mark | None) -> Location | None:
    return Location(report.file, mark.line + 1, mark.column + 1) if mark else None


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark | None) -> None:
        super().__init__(_TOO_DEEP)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops composing past ``MAX_DEPTH`` levels (PyYAML's composer recurses)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(getattr(event, "start_mark", None))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _bounded(root: Node, report: Report, text: str) -> bool:
    """Whether the tree is shallow, acyclic, small once aliases are expanded, and Unicode."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise _Unbounded(node, "a YAML alias refers to a value that contains it")
        if depth > MAX_DEPTH:
            raise _Unbounded(node, _TOO_DEEP)
        if node.tag not in PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Unbounded(node, f"the YAML tag {tag} is not supported ({_TAGS_ALLOWED})")
        if isinstance(node, yaml.ScalarNode) and SURROGATE.search(str(node.value)):
            raise _Unbounded(node, lone_surrogate_message(node.value), _escape_at(node, text))
        active.add(id(node))
        children = _children(node)
        total = 1 + sum(size(child, depth + 1) for child in children)
        active.discard(id(node))
        if total > MAX_VALUES:
            message = f"the YAML expands to more than {MAX_VALUES} values (through aliases?)"
            raise _Unbounded(node, message)
        sizes[id(node)] = total
        return total

    try:
        size(root, 0)
    except _Unbounded as exc:
        if exc.location is not None:
            report.error_at(Location(report.file, *exc.location), "", exc.message)
        else:
            report.error(exc.node, "", exc.message)
        return False
    return True


SURROGATE = re.compile("[\ud800-\udfff]")
# A double-quoted scalar's escapes, one at a time (so "\\ud800" is a backslash and text).
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.S)


def lone_surrogate_message(text: str) -> str:
    """What is wrong with text holding a lone surrogate, and what to write instead."""
    bad = SURROGATE.search(text)
    code = ord(bad[0]) if bad else 0xD800
    return (
        f"the text holds a lone surrogate \\u{code:04x}: it is not Unicode and the service"
        " refuses it (allowed: Unicode text; write a character outside the BMP as itself or"
        " as one escape such as \\U0001F600, not as two \\u escapes)"
    )


def _escape_at(node: Node, text: str) -> tuple[int, int] | None:
    """The 1-based line and column of the escape that wrote a surrogate into ``node``."""
    start, end = node.start_mark.index, node.end_mark.index
    for match in _ESCAPE.finditer(text, start, end):
        digits = match[1][1:] if match[1][0] in "uU" and len(match[1]) > 1 else ""
        if digits and 0xD800 <= int(digits, 16) <= 0xDFFF:
            at = match.start()
            return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
    return None


_TAGS_ALLOWED = "allowed: values, lists and mappings without tags, or !!str"


class _Unbounded(Exception):
    def __init__(self, node: Node, message: str, location: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.location = location


def _children(node: Node) -> list[Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


@dataclass(frozen=True)
class Structure:
    """A list or mapping where a single value was read: shown in messages as its kind."""

    kind: str  # "a list" or "a mapping"

    def __repr__(self) -> str:
        return self.kind


class Scalars:
    """Builds Python values (int, float, bool, None, str, dates) from scalar nodes."""

    def __init__(self) -> None:
        self._loader = yaml.SafeLoader("")

    def value(self, node: Node) -> object:
        """The scalar's value; a mapping or sequence node yields a ``Structure``."""
        if not isinstance(node, yaml.ScalarNode):
            return Structure(kind(node))
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, OverflowError):
            # A value its tag cannot build (``!!int xx``, the date 2020-13-45): keep the text,
            # so the field's own check names it.
            return node.value


def kind(node: Node) -> str:
    """``a mapping``, ``a list`` or ``a single value``: for messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a single value"


def entries(node: Node, path: str, report: Report) -> list[tuple[str, Node, Node]]:
    """A mapping node's ``(key, key node, value node)``s; reports bad and repeated keys."""
    if not isinstance(node, yaml.MappingNode):
        report.error(node, path, f"{_brief(node)} is not a mapping (allowed: key: value pairs)")
        return []
    found: list[tuple[str, Node, Node]] = []
    seen: dict[str, Node] = {}
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            message = "YAML merge keys (<<) are not supported; write the keys out"
            report.error(key_node, path, message)
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
            text = key_node.value if isinstance(key_node, yaml.ScalarNode) else kind(key_node)
            message = f"key {text} is not a string (allowed: a name; quote it if need be)"
            report.error(key_node, path, message)
            continue
        key = str(key_node.value)
        if key in seen:
            first = report.at(seen[key])
            report.error(key_node, join(path, key), f"duplicate key (first given at {first})")
            continue
        seen[key] = key_node
        found.append((key, key_node, value_node))
    return found


def known(
    pairs: list[tuple[str, Node, Node]],
    allowed: Sequence[str],
    path: str,
    report: Report,
) -> dict[str, tuple[Node, Node]]:
    """The pairs whose key is in ``allowed``; the others are reported with "did you mean"."""
    result: dict[str, tuple[Node, Node]] = {}
    for key, key_node, value_node in pairs:
        if key in allowed:
            result[key] = (key_node, value_node)
            continue
        hint = suggestion(key, list(allowed))
        message = f"unknown key{hint} (allowed: {', '.join(allowed)})"
        report.error(key_node, join(path, key), message)
    return result


def _brief(node: Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return shown(node.value)
    return kind(node)
