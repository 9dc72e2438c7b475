"""Trim Civitai's orchestration OpenAPI document to the schemas zbatch's emulator ships.

Usage (from the repository root):

    python scripts/trim_openapi.py [SOURCE] [--out PATH] [--date YYYY-MM-DD]

SOURCE defaults to ``../shared/civitai-orchestration-openapi.json`` and the output to
``runner/contract/openapi-subset.json``. The subset holds the named ``ROOTS`` plus every
schema they ``$ref``, with each discriminator mapping pruned to the members zbatch uses
(``KEEP``), so the closure stays small: no other step types, engines or ecosystems. It also
holds the ``paths`` of the ``OPERATIONS`` the emulator serves (parameters, request body
media types and schemas, responses; the request examples are dropped), from which the
emulator binds query parameters and its property test draws requests. The output is
deterministic for a given source and date (sorted keys, ``indent=1``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "civitai-orchestration-openapi.json"
DEFAULT_OUT = REPO_ROOT / "runner" / "contract" / "openapi-subset.json"
REF_PREFIX = "#/components/schemas/"

# The component schemas zbatch reads or writes; their $ref closure comes along.
ROOTS: tuple[str, ...] = (
    "WorkflowTemplate",
    "WorkflowStepTemplate",
    "ImageGenStepTemplate",
    "ImageGenInput",
    "SdCppImageGenInput",
    "ZImageImageGenInput",
    "ZImageTurboImageGenInput",
    "ZImageBaseImageGenInput",
    "ZImageTurboCreateImageGenInput",
    "ZImageBaseCreateImageGenInput",
    "SdCppSampleMethod",
    "SdCppSchedule",
    "ImageGenOutputFormat",
    "Workflow",
    "WorkflowStep",
    "ImageGenStep",
    "WorkflowStepJob",
    "WorkflowStepJobQueuePosition",
    "ImageGenOutput",
    "ImageBlob",
    "Blob",
    "WorkflowCost",
    "WorkflowCostTips",
    "WorkflowTips",
    "TransactionSummary",
    "TransactionInfo",
    "ProblemDetails",
    "ValidationProblemDetails",
    "NSFWLevel",
    "Priority",
    "BuzzClientAccount",
    "WorkflowUpgradeMode",
    "WorkflowCallback",
    "CursedArrayOfTelemetryCursorAndWorkflow",
    "UpdateWorkflowRequest",
    "WorkflowStatus",
)

# The operations the emulator serves: (path, method). Their parameters, bodies and
# responses are kept under ``paths``.
OPERATIONS: tuple[tuple[str, str], ...] = (
    ("/v2/consumer/workflows", "post"),
    ("/v2/consumer/workflows", "get"),
    ("/v2/consumer/workflows/{workflowId}", "get"),
    ("/v2/consumer/workflows/{workflowId}", "put"),
    ("/v2/consumer/workflows/{workflowId}", "delete"),
    ("/v2/consumer/blobs/{blobId}", "get"),
    ("/v2/consumer/blobs/{blobId}", "head"),
    ("/v2/consumer/blobs/{blobId}/refresh", "post"),
    ("/v2/consumer/blobs/content/{encryptedToken}", "get"),
)

# Discriminator mappings keep only these members (schema name -> mapping keys kept).
KEEP: dict[str, frozenset[str]] = {
    "WorkflowStep": frozenset({"imageGen"}),
    "WorkflowStepTemplate": frozenset({"imageGen"}),
    "ImageGenInput": frozenset({"sdcpp"}),
    "SdCppImageGenInput": frozenset({"zImage"}),
    "ZImageImageGenInput": frozenset({"turbo", "base"}),
    "ZImageTurboImageGenInput": frozenset({"createImage"}),
    "ZImageBaseImageGenInput": frozenset({"createImage"}),
    "Blob": frozenset({"image"}),
}


class TrimError(Exception):
    """The source document lacks a schema the subset needs, or has an unpruned discriminator."""


def _levels(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schema itself and its inline ``allOf`` parts: where a discriminator may sit."""
    yield schema
    for part in schema.get("allOf", []):
        if "$ref" not in part:
            yield part


def _prune(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` whose discriminator mappings keep only the ``KEEP`` members."""
    pruned = copy.deepcopy(schema)
    for level in _levels(pruned):
        mapping = level.get("discriminator", {}).get("mapping")
        if mapping is None:
            continue
        if name not in KEEP:
            raise TrimError(f"{name} has a discriminator mapping; add it to KEEP")
        missing = KEEP[name] - set(mapping)
        if missing:
            raise TrimError(f"{name}: discriminator lacks {sorted(missing)}")
        level["discriminator"]["mapping"] = {k: v for k, v in mapping.items() if k in KEEP[name]}
    return pruned


def _refs(node: Any) -> Iterator[str]:
    """Every component name ``node`` references through ``$ref`` (mappings included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
                yield value.removeprefix(REF_PREFIX)
            elif key == "mapping" and isinstance(value, dict):
                for target in value.values():
                    yield str(target).removeprefix(REF_PREFIX)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _without_examples(operation: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``operation`` whose request and response media types carry no examples."""
    trimmed = copy.deepcopy(operation)
    bodies = [trimmed.get("requestBody", {}), *trimmed.get("responses", {}).values()]
    for body in bodies:
        for media in body.get("content", {}).values():
            media.pop("examples", None)
            media.pop("example", None)
    return trimmed


def _paths(source: dict[str, Any]) -> dict[str, Any]:
    """The ``OPERATIONS`` of ``source``, examples dropped, grouped by path."""
    paths: dict[str, Any] = {}
    for path, method in OPERATIONS:
        operation = source["paths"].get(path, {}).get(method)
        if operation is None:
            raise TrimError(f"the source has no operation {method.upper()} {path}")
        paths.setdefault(path, {})[method] = _without_examples(operation)
    return paths


def trim(
    source: dict[str, Any], *, source_name: str, source_sha256: str, trimmed_on: dt.date
) -> dict[str, Any]:
    """The subset document: ``ROOTS``, ``OPERATIONS`` and their pruned ``$ref`` closure."""
    schemas: dict[str, Any] = source["components"]["schemas"]
    paths = _paths(source)
    kept: dict[str, Any] = {}
    todo = [*ROOTS, *_refs(paths)]
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        if name not in schemas:
            raise TrimError(f"the source has no component schema {name!r}")
        kept[name] = _prune(name, schemas[name])
        todo.extend(_refs(kept[name]))
    return {
        "openapi": source["openapi"],
        "info": {
            "title": "zbatch subset of " + str(source["info"]["title"]),
            "source": source_name,
            "sourceVersion": source["info"]["version"],
            "sourceSha256": source_sha256,
            "trimmedOn": trimmed_on.isoformat(),
            "trimmedBy": "scripts/trim_openapi.py",
        },
        "components": {"schemas": kept},
        "paths": paths,
    }


def render(document: dict[str, Any]) -> str:
    """The canonical text of a subset document: sorted keys, ``indent=1``, final newline."""
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def trim_file(source_path: Path, *, trimmed_on: dt.date) -> str:
    """Read ``source_path`` and return the subset's canonical text."""
    raw = source_path.read_bytes()
    return render(
        trim(
            json.loads(raw),
            source_name=source_path.name,
            source_sha256=hashlib.sha256(raw).hexdigest(),
            trimmed_on=trimmed_on,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Write the subset; the exit status is 0 on success and 1 on a ``TrimError``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date.today())
    args = parser.parse_args(argv)
    try:
        text = trim_file(args.source, trimmed_on=args.date)
    except TrimError as exc:
        sys.stderr.write(f"trim_openapi: {exc}\n")
        return 1
    args.out.write_text(text, encoding="utf-8")
    sys.stderr.write(f"trim_openapi: wrote {args.out} from {args.source}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
