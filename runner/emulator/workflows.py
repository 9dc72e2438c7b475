"""One workflow's life: its seeded schedule, its status at any instant, and its JSON.

Nothing here runs in the background. A workflow is planned once, at creation (phase
boundaries, one job after another, the outcome and when it happens); every read asks
`status(now_s)` and renders what the plan says for that instant. A cancel only moves the
terminal instant earlier.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.emulator.blobs import SignedUrl
from runner.emulator.clock import iso_utc
from runner.emulator.faults import derive_bytes, derive_unit

TERMINAL = frozenset({"succeeded", "failed", "expired", "canceled"})
# Seconds per 1024x1024 image at the model's default steps (seed-zimage.md, Runtime).
RUNTIME_S = {"turbo": (3.0, 8.0), "base": (8.0, 20.0)}
DEFAULT_STEPS = {"turbo": 9, "base": 20}
QUEUE_PHASES_S = ((0.1, 0.5), (0.1, 0.5), (0.2, 1.0))  # unassigned, preparing, scheduled
DEFAULT_TIMEOUT = "00:20:00"
FAILED_ERROR = "Could not generate images: the provider failed (emulated step_fail fault)."
EXPIRED_ERROR = "The step did not complete before its timeout."
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")

SignUrl = Callable[[str], SignedUrl]


def parse_timespan_s(text: str) -> float:
    """A .NET TimeSpan (`[d.]hh:mm:ss[.fff]`) in seconds; ValueError when it is not one."""
    match = _TIMESPAN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a TimeSpan (allowed: [d.]hh:mm:ss[.fff])")
    days, hours, minutes, seconds, frac = match.groups()
    total_s = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total_s + (float("0." + frac) if frac else 0.0)


@dataclass(frozen=True)
class JobPlan:
    """One image's job: its id, when it runs (clock seconds) and its complexity score."""

    id: str
    start_s: float
    end_s: float
    cost: float


@dataclass
class WorkflowRecord:
    """A created workflow, as planned at creation plus what happened to it since."""

    id: str
    seq: int
    account: str
    external_id: str | None
    created_s: float
    template: dict[str, Any]
    step: dict[str, Any]
    input: dict[str, Any]
    cost: dict[str, Any]
    transactions: list[dict[str, Any]]
    blob_ids: list[str]
    jobs: list[JobPlan]
    prep_s: float
    sched_s: float
    proc_s: float
    outcome: str
    outcome_s: float
    fail_job: int | None = None
    blocked: bool = False
    hang: bool = False
    canceled_s: float | None = None
    deleted_s: float | None = None
    refunded: bool = False
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal_s(self) -> float:
        """The clock second the workflow reaches its final status."""
        return self.canceled_s if self.canceled_s is not None else self.outcome_s

    def status(self, now_s: float) -> str:
        """The workflow (and step) status at `now_s`."""
        if now_s >= self.terminal_s:
            return "canceled" if self.canceled_s is not None else self.outcome
        if now_s < self.prep_s:
            return "unassigned"
        if now_s < self.sched_s:
            return "preparing"
        if now_s < self.proc_s or self.hang:
            return "scheduled"
        return "processing"

    def started(self, at_s: float) -> bool:
        """Whether processing had begun by `at_s` (what decides a refund on cancel)."""
        return not (self.hang or self.blocked) and at_s >= self.proc_s

    def refund_due(self) -> bool:
        """Whether the final status earns a full refund: failed, expired, or canceled unstarted."""
        if self.canceled_s is not None:
            return not self.started(self.canceled_s)
        return self.outcome in ("failed", "expired")

    def job_status(self, index: int, now_s: float) -> str:
        """The status of job `index` at `now_s`."""
        job, end_s = self.jobs[index], self.terminal_s
        if now_s >= end_s:
            return self._final_job_status(index, job, end_s)
        if now_s < self.proc_s or self.hang:
            return self.status(now_s)
        if now_s < job.start_s:
            return "scheduled"
        return "processing" if now_s < job.end_s else "succeeded"

    def _final_job_status(self, index: int, job: JobPlan, end_s: float) -> str:
        if self.blocked and self.canceled_s is None:
            return "failed"
        if self.hang and self.canceled_s is None:
            return "expired"
        before_failure = self.fail_job is None or index < self.fail_job
        if job.end_s <= end_s and before_failure and self.started(job.start_s):
            return "succeeded"
        if self.fail_job == index and self.canceled_s is None:
            return "failed"
        final = self.status(end_s)
        return "canceled" if final == "failed" else final


def plan_jobs(
    seed: int, key: str, inp: dict[str, Any], start_s: float, time_scale: float
) -> list[JobPlan]:
    """The quantity's jobs one after another from `start_s`, seeded runtimes, scaled."""
    model = str(inp.get("model", "turbo"))
    lo_s, hi_s = RUNTIME_S.get(model, RUNTIME_S["turbo"])
    pixels = int(inp["width"]) * int(inp["height"]) / 1024**2
    steps = int(inp["steps"]) / DEFAULT_STEPS.get(model, 9)
    jobs, at_s = [], start_s
    for index in range(int(inp["quantity"])):
        base_s = lo_s + (hi_s - lo_s) * derive_unit(seed, key, "runtime", index)
        run_s = base_s * pixels * steps * time_scale
        job_id = str(uuid.UUID(bytes=derive_bytes(seed, key, "job", index)[:16]))
        jobs.append(JobPlan(job_id, at_s, at_s + run_s, round(pixels * steps, 4)))
        at_s += run_s
    return jobs


def queue_phases(seed: int, key: str, created_s: float, time_scale: float) -> list[float]:
    """The instants the step leaves unassigned, preparing and scheduled."""
    bounds, at_s = [], created_s
    for index, (lo_s, hi_s) in enumerate(QUEUE_PHASES_S):
        at_s += (lo_s + (hi_s - lo_s) * derive_unit(seed, key, "phase", index)) * time_scale
        bounds.append(at_s)
    return bounds


def render(record: WorkflowRecord, now_s: float, epoch_s: float, sign: SignUrl) -> dict[str, Any]:
    """The Workflow JSON the service would return for `record` at `now_s`."""
    status = record.status(now_s)
    terminal = status in TERMINAL
    ran = record.started(min(now_s, record.terminal_s))
    body = _common(record.template, record.cost)
    body.update(
        id=record.id,
        createdAt=iso_utc(epoch_s + record.created_s),
        transactions={"list": list(record.transactions)},
        metadata=record.metadata,
        status=status,
        startedAt=iso_utc(epoch_s + record.proc_s) if ran else None,
        completedAt=iso_utc(epoch_s + record.terminal_s) if terminal else None,
        tags=record.tags,
        steps=[_render_step(record, now_s, epoch_s, sign)],
        externalId=record.external_id,
    )
    if record.deleted_s is not None:
        body["deletedAt"] = iso_utc(epoch_s + record.deleted_s)
    return body


def render_preview(
    template: dict[str, Any],
    step: dict[str, Any],
    inp: dict[str, Any],
    cost: dict[str, Any],
    transactions: dict[str, Any],
    jobs: list[JobPlan],
    created_s: float,
    epoch_s: float,
) -> dict[str, Any]:
    """The Workflow-shaped whatif answer: price and transactions, id null, nothing billed."""
    body = _common(template, cost)
    step_body = {**_step_head(step, "unassigned"), "input": inp, "startedAt": None}
    step_body["jobs"] = [
        {"id": job.id, "status": "unassigned", "cost": job.cost}
        | {"queuePosition": _queue_position(jobs, index, epoch_s)}
        for index, job in enumerate(jobs)
    ]
    body.update(
        id=None,
        createdAt=iso_utc(epoch_s + created_s),
        transactions=transactions,
        metadata=template.get("metadata") or {},
        status="unassigned",
        startedAt=None,
        completedAt=None,
        tags=list(template.get("tags") or []),
        steps=[step_body],
        externalId=template.get("externalId"),
    )
    return body


def _common(template: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    tips = template.get("tips") or {"civitai": 0, "creators": 0}
    return {
        "arguments": template.get("arguments") or {},
        "callbacks": list(template.get("callbacks") or []),
        "tips": tips,
        "cost": cost,
        "experimental": template.get("experimental"),
        "allowMatureContent": template.get("allowMatureContent"),
        "upgradeMode": template.get("upgradeMode") or "manual",
        "currencies": list(template.get("currencies") or []),
        "forceRefunded": False,
    }


def _step_head(step: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "$type": "imageGen",
        "name": step.get("name") or "$0",
        "priority": step.get("priority") or "normal",
        "timeout": step.get("timeout") or DEFAULT_TIMEOUT,
        "retries": step.get("retries") or 0,
        "status": status,
        "metadata": step.get("metadata") or {},
    }


def _render_step(
    record: WorkflowRecord, now_s: float, epoch_s: float, sign: SignUrl
) -> dict[str, Any]:
    status = record.status(now_s)
    terminal = status in TERMINAL
    body = _step_head(record.step, status)
    ran = record.started(min(now_s, record.terminal_s))
    body["startedAt"] = iso_utc(epoch_s + record.proc_s) if ran else None
    body["completedAt"] = iso_utc(epoch_s + record.terminal_s) if terminal else None
    body["estimatedProgressRate"] = None if terminal else _progress(record, now_s)
    body["jobs"] = [_render_job(record, i, now_s, epoch_s) for i in range(len(record.jobs))]
    body["input"] = record.input
    images = [_render_image(record, i, now_s, epoch_s, sign) for i in range(len(record.jobs))]
    body["output"] = {"images": images, "errors": _errors(record, status)}
    return body


def _progress(record: WorkflowRecord, now_s: float) -> float:
    if record.hang or now_s < record.proc_s or not record.jobs:
        return 0.0
    span_s = record.jobs[-1].end_s - record.proc_s
    return 1.0 if span_s <= 0 else round(min(1.0, (now_s - record.proc_s) / span_s), 4)


def _errors(record: WorkflowRecord, status: str) -> list[str] | None:
    if status == "failed":
        return ["blocked"] if record.blocked else [FAILED_ERROR]
    if status == "expired":
        return [EXPIRED_ERROR]
    return None


def _render_job(record: WorkflowRecord, index: int, now_s: float, epoch_s: float) -> dict[str, Any]:
    job = record.jobs[index]
    status = record.job_status(index, now_s)
    # A job that ran to its end (succeeded, or failed by the step_fail fault) started, even
    # when it took no time at all (time_scale 0: start, end and terminal are one instant).
    ended = status in ("succeeded", "failed") and job.end_s <= record.terminal_s
    ran = (
        now_s >= job.start_s
        and record.started(job.start_s)
        and (job.start_s < record.terminal_s or ended)
    )
    body: dict[str, Any] = {
        "id": job.id,
        "status": status,
        "cost": job.cost,
        "startedAt": iso_utc(epoch_s + job.start_s) if ran else None,
        "completedAt": iso_utc(epoch_s + min(job.end_s, record.terminal_s))
        if status in TERMINAL
        else None,
    }
    if status in ("unassigned", "preparing", "scheduled"):
        if record.hang:
            body["queuePosition"] = {"support": "unavailable"}
        else:
            body["queuePosition"] = _queue_position(record.jobs, index, epoch_s)
    return body


def _queue_position(jobs: list[JobPlan], index: int, epoch_s: float) -> dict[str, Any]:
    job = jobs[index]
    return {
        "support": "available",
        "precedingJobs": index,
        "startAt": iso_utc(epoch_s + job.start_s),
        "completeAt": iso_utc(epoch_s + job.end_s),
    }


def _render_image(
    record: WorkflowRecord, index: int, now_s: float, epoch_s: float, sign: SignUrl
) -> dict[str, Any]:
    blob_id = record.blob_ids[index]
    signed = sign(blob_id)
    body: dict[str, Any] = {
        "type": "image",
        "id": blob_id,
        "available": record.job_status(index, now_s) == "succeeded",
        "url": signed.url,
        "urlExpiresAt": iso_utc(signed.expires_unix_s),
        "jobId": record.jobs[index].id,
        "nsfwLevel": "pg",
        "width": int(record.input["width"]),
        "height": int(record.input["height"]),
    }
    if record.blocked and record.canceled_s is None and now_s >= record.terminal_s:
        body["blockedReason"] = "blocked"
    return body
