"""A manifest's top-level settings: name, out, budget, seed_base, repeat, limits, retries, captions.

``SettingsReader`` is mixed into the manifest parser (``runner.manifest._load``); each method
reads one setting from the top-level pairs, reports a problem at its node and returns a
usable default, so every problem in a manifest is found in one pass.

``out`` may point anywhere (``jobs/demo.yaml`` writes to ``../out/demo``): it is where the
user asks zbatch to write, unlike prompt files, which are read and must stay inside the
manifest's folder. It must not be an existing file, nor lie under one. The Buzz cap is at
most ``MAX_BUDGET_BUZZ``, so the ledger's sums stay far inside SQLite's int64.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from runner import contract
from runner.contract import shown
from runner.manifest._captions import (
    DEFAULT_CAPTION_TEMPLATE,
    caption_problem,
    may_render_empty,
)
from runner.manifest._fields import FieldReader
from runner.manifest._yaml import Node, Report, entries, join, known

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
CAPTIONS = ("none", "txt")


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


MAX_BUDGET_BUZZ = 10**12


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot be the output folder (an existing file, or under one), or None."""
    for candidate in (out, *out.parents):
        try:
            is_dir = candidate.is_dir()
            exists = is_dir or candidate.exists()
        except OSError as exc:  # a name too long, a loop of symlinks …
            return f"cannot be used ({exc.strerror or exc}; allowed: a folder path)"
        if not exists:
            continue
        if is_dir:
            return None
        if candidate == out:
            return "is an existing file (allowed: a folder, or a path that does not exist yet)"
        return f"lies under {candidate}, which is a file (allowed: a folder path)"
    return None


class SettingsReader:
    """Reads the top-level settings of one manifest into ``report``."""

    report: Report
    path: Path
    reader: FieldReader

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
        if "\0" in value:
            message = f"{shown(value)} holds a NUL character (allowed: a path)"
            self.report.error(node, "out", message)
            return None
        out = Path(os.path.normpath(self.path.parent.absolute() / value))
        problem = out_problem(out)
        if problem is not None:
            self.report.error(node, "out", f"{shown(value)} {problem}")
            return None
        return out

    def _budget(self, pairs: Mapping[str, tuple[Node, Node]], root: Node) -> int | None:
        found = self._scalar(pairs, "budget")
        if found is None:
            self._missing(root, "budget", "the Buzz cap, a whole number > 0")
            return None
        value, node = found
        if contract.is_integer(value) and 0 < value <= MAX_BUDGET_BUZZ:  # type: ignore[operator]
            assert isinstance(value, int)
            return value
        message = f"{shown(value)} is not a Buzz cap (allowed: a whole number 1..{MAX_BUDGET_BUZZ})"
        self.report.error(node, "budget", message)
        return None

    def _seed_base(self, pairs: Mapping[str, tuple[Node, Node]]) -> int:
        found = self._scalar(pairs, "seed_base")
        if found is None:
            return 0
        value, node = found
        problem = contract.check_field("seed", value)
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
        ok = contract.is_integer(value) if whole else contract.is_number(value)
        if ok and low <= value <= high:  # type: ignore[operator]
            assert isinstance(value, int | float)
            return value
        what = "a whole number" if whole else "a number"
        message = (
            f"{shown(value)} is not allowed (allowed: {what} {contract.number_text(low)}..{high})"
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

    def _captions(self, node: Node | None, var_names: tuple[str, ...]) -> tuple[str, str]:
        """`captions`: a mode (`none`, `txt`) or `{template: TEXT, files: txt | none}` (files
        `txt` unless it says `none`); returns (files, template). `captions: txt` is
        `{files: txt}`: the template `{prompt}`."""
        if node is None:
            return "none", DEFAULT_CAPTION_TEMPLATE
        if not isinstance(node, yaml.MappingNode):
            return self._caption_files(node, "captions"), DEFAULT_CAPTION_TEMPLATE
        pairs = self._sub(node, "captions", ("template", "files"))
        files = "txt"
        if "files" in pairs:
            files = self._caption_files(pairs["files"][1], "captions.files")
        if "template" not in pairs:
            return files, DEFAULT_CAPTION_TEMPLATE
        template_node = pairs["template"][1]
        value = self.reader.scalars.value(template_node)
        if not isinstance(value, str):
            problem: str | None = (
                f"{shown(value)} is not a caption template (allowed: text with"
                " {fields}, e.g. '{prompt}' or 'mytoken, {prompt}')"
            )
        else:
            problem = caption_problem(value, var_names)
            problem = None if problem is None else f"{shown(value)}: {problem}"
        if problem is not None:
            self.report.error(template_node, "captions.template", problem)
            return files, DEFAULT_CAPTION_TEMPLATE
        assert isinstance(value, str)
        if may_render_empty(value):
            message = (
                f"{shown(value)} may make an empty caption (a cell whose fields here are empty),"
                " which kohya-ss refuses; add text or {prompt}"
            )
            self.report.warn(template_node, "captions.template", message)
        return files, value

    def _caption_files(self, node: Node, path: str) -> str:
        value = self.reader.scalars.value(node)
        if isinstance(value, str) and value in CAPTIONS:
            return value
        hint = contract.suggestion(value, CAPTIONS) if isinstance(value, str) else ""
        allowed = ", ".join(CAPTIONS)
        if path == "captions":
            allowed += ", or {template: ..., files: ...}"
        message = f"{shown(value)} is not a captions mode{hint} (allowed: {allowed})"
        self.report.error(node, path, message)
        return "none"
