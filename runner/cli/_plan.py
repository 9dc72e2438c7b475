"""`zbatch plan`: what a manifest will do and cost, before anything is spent."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from runner.cli._command import Command
from runner.errors import ApiError, ExitCode, StoreError, UsageError
from runner.log import TOKEN_ENV

if TYPE_CHECKING:
    from runner.manifest import Manifest
    from runner.plan import Plan
    from runner.store import Comparison


def cmd_plan(args: argparse.Namespace) -> int:
    """Show what a manifest will do and cost, before anything is spent.

    Reads the manifest and its prompt files, expands the grid once and prints the axes and
    their sizes, the cells and images (duplicates removed, exclusions, inclusions), the Buzz
    by shape and by model against the budget (and, when over, how many cells fit before the
    run would stop), an estimated wall time at the manifest's limits, and the number of
    warnings (the warnings themselves go to stderr). It writes nothing and spends nothing.

    When the manifest's `out` already holds a batch, it compares the two: the new cells and
    their Buzz, the cells kept, and the cells the manifest no longer lists (which
    `zbatch run` refuses to leave behind without --replace or --keep).

    --whatif also asks the API (CIVITAI_API_TOKEN; CIVITAI_API_BASE_URL, e.g. a running
    `zbatch emulator`) for the exact price once per distinct shape, without any cell's
    externalId, and reports where it differs from the formula.

    Example:
        zbatch init && zbatch plan demo.yaml
        zbatch plan demo.yaml --json | jq .buzz.total
        CIVITAI_API_TOKEN=... zbatch plan demo.yaml --whatif
    """
    from runner.manifest import load_manifest
    from runner.plan import make_plan

    if args.whatif and not os.environ.get(TOKEN_ENV, "").strip():
        raise UsageError(f"--whatif needs {TOKEN_ENV} (your Civitai API key)")
    manifest = load_manifest(args.manifest)
    for warning in manifest.warnings:
        print(f"zbatch: warning: {warning}", file=sys.stderr)
    _warn_about_out(manifest)
    if args.whatif:
        try:
            plan = anyio.run(_plan_with_whatif, manifest, backend="asyncio")
        except ApiError as exc:
            print(f"zbatch: error: the whatif price check failed: {exc}", file=sys.stderr)
            return ExitCode.ERROR
    else:
        plan = make_plan(manifest)
    print(_json(plan, manifest) if args.json else _text(plan, manifest))
    return ExitCode.AUTH_OR_FUNDS if plan.over_budget else ExitCode.OK


def _warn_about_out(manifest: Manifest) -> None:
    """An out folder `zbatch run` would refuse (a broken symlink, /proc, mode 0777, ...)."""
    from runner.disk import out_folder_problem

    problem = out_folder_problem(manifest.out)
    if problem is not None:
        print(f"zbatch: warning: `zbatch run` would refuse this out folder: {problem}",
              file=sys.stderr)  # fmt: skip


def _text(plan: Plan, manifest: Manifest) -> str:
    from runner.plan import render_text

    comparison = _comparison(manifest)
    if comparison is None:
        return render_text(plan)
    from runner.ops import render_comparison

    return render_text(plan) + "\n" + render_comparison(manifest, comparison)


def _json(plan: Plan, manifest: Manifest) -> str:
    from runner.plan import to_json

    doc = to_json(plan)
    comparison = _comparison(manifest)
    if comparison is not None:
        from runner.ops import comparison_json

        doc["batch"] = comparison_json(manifest, comparison)
    return json.dumps(doc, indent=2)


def _comparison(manifest: Manifest) -> Comparison | None:
    """The manifest against the batch its `out` holds (None when it holds none: then
    neither the operations nor the store are loaded). A record that cannot be read is a
    warning: the plan itself stands."""
    from runner.disk import OutFolder

    if not OutFolder(manifest.out).db.is_file():
        return None
    from runner.ops import compare_out

    try:
        return compare_out(manifest)
    except StoreError as exc:
        print(f"zbatch: warning: cannot compare with the batch in {manifest.out}: {exc}",
              file=sys.stderr)  # fmt: skip
        return None


async def _plan_with_whatif(manifest: Manifest) -> Plan:
    from runner.api import Client
    from runner.ops import plan_with_whatif

    async with Client() as client:
        return await plan_with_whatif(manifest, client)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the batch's YAML manifest")
    p.add_argument("--json", action="store_true", help="print a JSON document (for scripts)")
    p.add_argument(
        "--whatif",
        action="store_true",
        help="ask the API for the exact price of each distinct shape (needs CIVITAI_API_TOKEN; "
        "spends nothing)",
    )


PLAN = Command(
    "plan",
    cmd_plan,
    _arguments,
    exits=frozenset({ExitCode.AUTH_OR_FUNDS}),
    notes={
        ExitCode.OK: "within budget",
        ExitCode.ERROR: "or the --whatif price check failed",
        ExitCode.USAGE: "every problem of the manifest is listed; or --whatif without a token",
        ExitCode.AUTH_OR_FUNDS: "for plan: over budget; the plan is still printed",
    },
)
