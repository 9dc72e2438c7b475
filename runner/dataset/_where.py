"""`--where FIELD=VALUE` of `zbatch export` and `zbatch gallery`: keep the rows (cells) whose
input FIELD is VALUE. FIELD is `model`, a request field (`steps`, `cfgScale`, `prompt`, ...)
or `vars.<name>`; several `--where` must all hold. Numbers compare as numbers (`1` is
`1.0`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.contract import FIELDS
from runner.errors import UsageError

Where = tuple[tuple[str, str], ...]


def parse_where(texts: Sequence[str]) -> Where:
    """`["model=base", "steps=12"]` -> the conditions; UsageError naming what is allowed."""
    conditions = []
    for text in texts:
        field, sep, value = text.partition("=")
        field = field.strip()
        if not sep or not field:
            raise UsageError(f"--where {text!r} is not FIELD=VALUE (e.g. --where model=base)")
        if field != "model" and not field.startswith("vars.") and field not in FIELDS:
            allowed = ", ".join(["model", *sorted(FIELDS), "vars.<name>"])
            raise UsageError(f"--where: {field!r} is not a field (allowed: {allowed})")
        conditions.append((field, value.strip()))
    return tuple(conditions)


def matches(
    where: Where, model: str, request: Mapping[str, Any], variables: Mapping[str, Any]
) -> bool:
    """Whether a cell of `model`, `request` and template `variables` meets every condition."""
    for field, want in where:
        if field == "model":
            got: Any = model
        elif field.startswith("vars."):
            got = variables.get(field[len("vars.") :])
        else:
            got = request.get(field)
        if not _same(got, want):
            return False
    return True


def _same(got: Any, want: str) -> bool:
    if got is None:
        return want == ""
    if isinstance(got, int | float) and not isinstance(got, bool):
        try:
            return float(want) == float(got)
        except ValueError:
            return False
    return str(got) == want
