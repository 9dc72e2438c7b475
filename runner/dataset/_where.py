"""`--where FIELD=VALUE` of `zbatch export` and `zbatch gallery`: keep the rows (cells) whose
input FIELD is VALUE. FIELD is `model`, a request field or a template variable, named as its
dataset column (`steps`, `cfg_scale`, `prompt`, `var_<name>`) or as the manifest writes it
(`cfgScale`, `vars.<name>`); several `--where` must all hold. Numbers compare as numbers
(`1` is `1.0`). `input_field` is also how `export --subsets` names its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from runner.contract import FIELDS
from runner.errors import UsageError
from runner.manifest import VAR_COLUMN_PREFIX

Where = tuple[tuple[str, str], ...]
MANIFEST_VAR = "vars."
# A request field's dataset column: the API's camelCase in snake_case (cfgScale: cfg_scale).
COLUMN_OF = {name: re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower() for name in FIELDS}
_FIELD_OF = {column: name for name, column in COLUMN_OF.items()}


def input_field(name: str) -> str | None:
    """The input `name` stands for, as the record spells it (`model`, a request field,
    `vars.<name>`), or None. `name` is a dataset column (`cfg_scale`, `var_style`) or the
    manifest's own spelling (`cfgScale`, `vars.style`)."""
    if name == "model" or name in FIELDS:
        return name
    for prefix in (MANIFEST_VAR, VAR_COLUMN_PREFIX):
        if name.startswith(prefix) and len(name) > len(prefix):
            return MANIFEST_VAR + name[len(prefix) :]
    return _FIELD_OF.get(name)


def allowed_fields() -> str:
    """The field names `input_field` takes, as a message lists them."""
    return ", ".join(["model", *sorted(set(_FIELD_OF) - {"model"}), f"{VAR_COLUMN_PREFIX}<name>"])


def parse_where(texts: Sequence[str]) -> Where:
    """`["model=base", "steps=12"]` -> the conditions; UsageError naming what is allowed."""
    conditions = []
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--where {text!r} is not FIELD=VALUE (e.g. --where model=base)")
        field = input_field(name)
        if field is None:
            raise UsageError(f"--where: {name!r} is not a field (allowed: {allowed_fields()})")
        conditions.append((field, value.strip()))
    return tuple(conditions)


def field_value(
    field: str, model: str, request: Mapping[str, Any], variables: Mapping[str, Any]
) -> Any:
    """The value of `field` (as `input_field` returns it) for a cell."""
    if field == "model":
        return model
    if field.startswith(MANIFEST_VAR):
        return variables.get(field[len(MANIFEST_VAR) :])
    return request.get(field)


def matches(
    where: Where, model: str, request: Mapping[str, Any], variables: Mapping[str, Any]
) -> bool:
    """Whether a cell of `model`, `request` and template `variables` meets every condition."""
    return all(_same(field_value(f, model, request, variables), want) for f, want in where)


def _same(got: Any, want: str) -> bool:
    if got is None:
        return want == ""
    if isinstance(got, int | float) and not isinstance(got, bool):
        try:
            return float(want) == float(got)
        except ValueError:
            return False
    return str(got) == want
