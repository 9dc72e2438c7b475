"""Test helper: check a JSON value against a flattened Civitai OpenAPI component schema.

``assert_schema("Workflow", body)`` validates with ``jsonschema`` (Draft 2020-12) against
``runner.contract._schema.flatten(name)``, so allOf chains and discriminators behave as the
API means them. ``format`` is an annotation only (not asserted): the API's own formats such
as ``date-span`` and ``int32`` have no standard checker. On failure the message lists every
violation with its JSON path, e.g. ``steps[0].output.images[0]: 'blobId' …``.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft202012Validator

from runner.contract import _schema as schema


@functools.cache
def _validator(name: str) -> Any:
    flat = schema.flatten(name)
    Draft202012Validator.check_schema(flat)
    return Draft202012Validator(flat)


def _where(error: Any) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "$"


def schema_errors(name: str, data: object) -> list[str]:
    """Every violation of component schema ``name`` by ``data``, as ``path: message``."""
    errors = sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{_where(error)}: {error.message}" for error in errors]


def assert_schema(name: str, data: object) -> None:
    """Fail with a readable list of violations unless ``data`` is a valid ``name``."""
    problems = schema_errors(name, data)
    if problems:
        listing = "\n  ".join(problems)
        raise AssertionError(f"not a valid {name} ({len(problems)} problems):\n  {listing}")
