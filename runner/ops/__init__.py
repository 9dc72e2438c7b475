"""The operations on a batch: run, retry, cancel, adopt, verify, and plan's `--whatif`. Each
talks to the API through a `Target` the CLI gives it.

Lazy: `zbatch run` needs `runner.ops._run` (and what it imports) only; the other operations
are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runner.ops._adopt import render_adoption
from runner.ops._run import RunOutcome, RunOverrides, Target, execute

if TYPE_CHECKING:
    from runner.ops._cancel import cancel_out, render_cancel
    from runner.ops._compare import compare_out, comparison_json, render_comparison
    from runner.ops._retry import RetrySettings, execute_retry, render_retry
    from runner.ops._verify import VerifyReport, render_verify, verify_out
    from runner.ops._whatif import plan_with_whatif
    from runner.ops._worker import execute_worker

_HOME = {
    "cancel_out": "_cancel",
    "render_cancel": "_cancel",
    "compare_out": "_compare",
    "comparison_json": "_compare",
    "render_comparison": "_compare",
    "RetrySettings": "_retry",
    "execute_retry": "_retry",
    "render_retry": "_retry",
    "VerifyReport": "_verify",
    "render_verify": "_verify",
    "verify_out": "_verify",
    "plan_with_whatif": "_whatif",
    "execute_worker": "_worker",
}

__all__ = [
    "RetrySettings",
    "RunOutcome",
    "RunOverrides",
    "Target",
    "VerifyReport",
    "cancel_out",
    "compare_out",
    "comparison_json",
    "execute",
    "execute_retry",
    "execute_worker",
    "plan_with_whatif",
    "render_adoption",
    "render_cancel",
    "render_comparison",
    "render_retry",
    "render_verify",
    "verify_out",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
