"""The operations on a batch: run, retry, cancel, adopt, verify, and plan's `--whatif`. Each
talks to the API through a `Target` the CLI gives it.
"""

from runner.ops._adopt import render_adoption
from runner.ops._cancel import cancel_out, render_cancel
from runner.ops._compare import compare_out, comparison_json, render_comparison
from runner.ops._retry import RetrySettings, execute_retry, render_retry
from runner.ops._run import RunOutcome, RunOverrides, Target, execute
from runner.ops._verify import VerifyReport, render_verify, verify_out
from runner.ops._whatif import plan_with_whatif
from runner.ops._worker import execute_worker

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
