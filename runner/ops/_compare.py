"""`zbatch plan` on a manifest whose `out` already holds a batch: the manifest's cells against
the batch's (new, kept, left behind), read-only, so that a changed manifest is seen before
`zbatch run` refuses it (docs/operations.md, "A changed manifest")."""

from __future__ import annotations

from typing import Any

import anyio

from runner.disk import OutFolder
from runner.manifest import Manifest
from runner.ops._run import compare_batch
from runner.store import Comparison, Store


def compare_out(manifest: Manifest) -> Comparison | None:
    """The manifest's cells against the batch in its `out`, or None when `out` holds none.
    Blocking (it owns an event loop); opens the record read-only, so it works during a run.
    `StoreError` when the record cannot be read (damaged, or an older schema)."""
    db = OutFolder(manifest.out).db
    if not db.is_file():
        return None

    async def go() -> Comparison:
        async with await Store.open(db, read_only=True) as store:
            return await compare_batch(store, manifest)

    return anyio.run(go, backend="asyncio")


def render_comparison(manifest: Manifest, c: Comparison) -> str:
    """Two or three lines for `zbatch plan`: what a run of this manifest does to the batch."""
    lines = [
        f"batch       {manifest.out} holds batch {c.name!r} (manifest revision {c.revision}):"
        f" {c.new} new cells (about {c.new_buzz} Buzz) · {c.known} kept ·"
        f" {c.left_behind} left behind"
        + (f" · {c.set_aside} set aside earlier" if c.set_aside else ""),
    ]
    renamed = c.name != manifest.name
    if renamed:
        lines.append(
            f"            the manifest names the batch {manifest.name!r}: the name is part of"
            " every cell's key"
        )
    if renamed or c.left_behind:
        lines.append(
            f"            `zbatch run` refuses it: the {c.left_behind} cells left behind need"
            " --replace (they leave the dataset) or --keep (both stay)"
        )
    return "\n".join(lines)


def comparison_json(manifest: Manifest, c: Comparison) -> dict[str, Any]:
    """The comparison for `zbatch plan --json` (its `batch` member)."""
    return {
        "out": str(manifest.out),
        "name": c.name,
        "renamed": c.name != manifest.name,
        "revision": c.revision,
        "new": c.new,
        "new_buzz": c.new_buzz,
        "kept": c.known,
        "left_behind": c.left_behind,
        "set_aside": c.set_aside,
        "needs_replace_or_keep": c.name != manifest.name or c.left_behind > 0,
    }
