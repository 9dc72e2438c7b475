"""The emulated orchestration service: workflows, idempotency, billing, queries and blobs.

`Emulator` is the whole in-memory service model, independent of HTTP: `app.py` parses a
request, calls one method here and renders its answer or its `Problem`. Statuses are
computed lazily from the clock on every read; refunds that fall due are settled at the
start of each call (`settle`). Tests may call these methods directly (`app.state.emulator`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from runner.emulator import hostile, pricing
from runner.emulator.blobs import BlobSigner, ImageCache, SignedUrl, new_blob_id
from runner.emulator.clock import Clock, MonotonicClock, iso_utc
from runner.emulator.config import EmulatorConfig
from runner.emulator.faults import FaultInjector, derive_int
from runner.emulator.images import extension
from runner.emulator.ledger import Ledger
from runner.emulator.problems import Problem, validation_problem
from runner.emulator.ratelimit import RateLimiter
from runner.emulator.validation import normalized_input, output_format, validate_template
from runner.emulator.workflows import (
    DEFAULT_TIMEOUT,
    TERMINAL,
    WorkflowRecord,
    parse_timespan_s,
    plan_jobs,
    queue_phases,
    render,
    render_preview,
)

MAX_SEED = 2**32


@dataclass(frozen=True)
class Reply:
    """A JSON answer: status code and body; `drop` asks the app to cut the connection;
    `fault` names a hostile read fault the app sends instead (`hostile.READ_KINDS`)."""

    status: int
    body: Any
    drop: bool = False
    fault: str | None = None


class Emulator:
    """The service: one instance per app, state in memory, time from `clock`."""

    def __init__(self, config: EmulatorConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock: Clock = clock or MonotonicClock()
        self.ledger = Ledger(self.config)
        limits = {"submit": self.config.submit_limit, "read": self.config.read_limit}
        self.limiter = RateLimiter(self.clock, limits)
        self.faults = FaultInjector(self.config.faults, self.config.seed)
        self.signer = BlobSigner(self.config.seed)
        self.images = ImageCache(self.config.image_cache_entries)
        self.records: dict[str, WorkflowRecord] = {}
        self._by_key: dict[tuple[str, str], str | dict[str, Any]] = {}
        self._by_account: dict[str, list[str]] = {}
        self._blobs: dict[str, tuple[str, int]] = {}
        self._refunds: list[tuple[float, int, str]] = []
        self._seq = itertools.count(1)
        self.submit_attempts: Counter[str] = Counter()
        self.revision = 0  # moves with every change of the durable state (persist.Saver)
        self.requests: Counter[tuple[str, int]] = Counter()
        self.authorized_requests: Counter[str] = Counter()  # route -> with Authorization
        self.host_requests: Counter[str] = Counter()  # Host header -> requests
        self.authorized_hosts: Counter[str] = Counter()  # Host header -> with Authorization
        words = sorted(self.config.blocked_words)
        alternatives = "|".join(re.escape(w) for w in words if w)
        self._blocked = re.compile(rf"\b(?:{alternatives})\b", re.I) if alternatives else None

    # -- time, auth, limits -------------------------------------------------------------

    def now_unix_s(self) -> float:
        """The wall-clock instant the emulator's clock stands at."""
        return self.config.epoch_unix_s + self.clock.now()

    def authenticate(self, authorization: str | None) -> str:
        """The account behind an `Authorization: Bearer <token>` header; 401 otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(401, "A bearer token is required: send 'Authorization: Bearer <token>'.")
        if self.config.tokens is not None and token not in self.config.tokens:
            raise Problem(401, "The bearer token is not valid.")
        return self.ledger.open(token)

    def throttle(self, account: str, kind: str) -> None:
        """Spend one request from the account's `kind` bucket; 429 with Retry-After if empty."""
        retry_after_s = self.limiter.acquire(account, kind)
        if retry_after_s is not None:
            detail = f"Too many {kind} requests; retry after {retry_after_s} s."
            raise Problem(429, detail, headers={"Retry-After": str(retry_after_s)})

    def record_request(
        self, route: str, status: int, *, authorized: bool = False, host: str = ""
    ) -> None:
        """Count one answered request, per route and per host (for the introspection route)."""
        self.requests[(route, status)] += 1
        self.host_requests[host] += 1
        if authorized:
            self.authorized_requests[route] += 1
            self.authorized_hosts[host] += 1

    def settle(self, now_s: float | None = None) -> None:
        """Post the refund of every failed or expired workflow whose end has passed by `now_s`."""
        if now_s is None:
            now_s = self.clock.now()
        while self._refunds and self._refunds[0][0] <= now_s:
            _, _, wf_id = heapq.heappop(self._refunds)
            record = self.records[wf_id]
            if not record.refunded and record.refund_due() and now_s >= record.terminal_s:
                self._refund(record)

    def _refund(self, record: WorkflowRecord) -> None:
        record.transactions.extend(self.ledger.refund(record.account, record.transactions))
        record.refunded = True
        self.revision += 1

    # -- submit ---------------------------------------------------------------------------

    async def submit(
        self, account: str, body: object, *, base_url: str, wait_s: float, whatif: bool
    ) -> Reply:
        """SubmitWorkflow: validate, dedupe by externalId, price, charge, create, answer."""
        self.settle()
        errors = validate_template(body)
        if errors:
            raise validation_problem(errors)
        assert isinstance(body, dict)
        if len(body["steps"]) != 1:
            raise validation_problem({"steps": ["This emulator runs exactly one imageGen step."]})
        external_id = body.get("externalId")
        subject = external_id or f"unkeyed:{account}"
        if external_id:
            self.submit_attempts[external_id] += 1
        if self.faults.fires("submit_5xx_before", subject):
            status = self.faults.status_for("submit_5xx_before", subject)
            raise Problem(status, "The service failed before accepting the workflow (fault).")
        if external_id and (account, external_id) in self._by_key:
            return await self._existing(account, external_id, base_url, wait_s)
        if whatif:
            return self._whatif(account, body)
        record = self._create(account, body)
        if self.faults.fires("submit_5xx_after", record.id):
            status = self.faults.status_for("submit_5xx_after", record.id)
            raise Problem(status, "The gateway failed after the workflow was accepted (fault).")
        if self.faults.fires("submit_drop_after", record.id):
            return Reply(202, self.render_for(record, base_url), drop=True)
        return await self._answer(record, base_url, wait_s)

    async def _existing(
        self, account: str, external_id: str, base_url: str, wait_s: float
    ) -> Reply:
        known = self._by_key[(account, external_id)]
        if isinstance(known, dict):
            return Reply(200, known)  # a whatif preview burned this key: hand it back
        return await self._answer(self.records[known], base_url, wait_s)

    async def _answer(self, record: WorkflowRecord, base_url: str, wait_s: float) -> Reply:
        await self._wait_terminal(record, wait_s)
        await self._maybe_slow(record.external_id or record.id)
        now_s = self.clock.now()
        terminal = record.status(now_s) in TERMINAL
        return Reply(200 if terminal else 202, self.render_for(record, base_url, now_s))

    def _prepare(self, account: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        """The step's normalized input with the seed filled in (seeded by `key`)."""
        inp = normalized_input(body["steps"][0]["input"])
        if inp.get("seed") is None:
            inp["seed"] = derive_int(self.config.seed, key, "seed") % MAX_SEED
        return inp

    def _whatif(self, account: str, body: dict[str, Any]) -> Reply:
        external_id = body.get("externalId")
        key = external_id or f"whatif:{next(self._seq)}"
        inp = self._prepare(account, body, key)
        cost = pricing.workflow_cost([inp])
        currencies = list(body.get("currencies") or [])
        entries, short = self.ledger.plan(account, int(cost["total"]), currencies)
        now_s = self.clock.now()
        proc_s = queue_phases(self.config.seed, key, now_s, self.config.time_scale)[-1]
        jobs = plan_jobs(self.config.seed, key, inp, proc_s, self.config.time_scale)
        transactions = {"list": entries, "insufficientBuzz": short}
        preview = render_preview(
            body, body["steps"][0], inp, cost, transactions, jobs, now_s, self.config.epoch_unix_s
        )
        if external_id:
            self._by_key[(account, external_id)] = preview
            self.revision += 1
        return Reply(200, preview)

    def _create(self, account: str, body: dict[str, Any]) -> WorkflowRecord:
        seq = next(self._seq)
        external_id = body.get("externalId")
        wf_id = self._new_id(account, external_id, seq)
        key = external_id or wf_id
        inp = self._prepare(account, body, key)
        cost = pricing.workflow_cost([inp])
        price_buzz = int(cost["total"])
        currencies = list(body.get("currencies") or [])
        entries, short = self.ledger.plan(account, price_buzz, currencies)
        if short:
            raise self._insufficient(account, price_buzz, currencies)
        record = self._plan(wf_id, seq, account, body, inp, cost)
        record.transactions.extend(self.ledger.debit(account, entries))
        self.ledger.accounts[account].workflows += 1
        self.records[wf_id] = record
        self._by_account.setdefault(account, []).append(wf_id)
        if external_id:
            self._by_key[(account, external_id)] = wf_id
        for index, blob_id in enumerate(record.blob_ids):
            self._blobs[blob_id] = (wf_id, index)
        if record.refund_due():
            heapq.heappush(self._refunds, (record.terminal_s, seq, wf_id))
        self.revision += 1
        self.settle()
        return record

    def _insufficient(self, account: str, price_buzz: int, currencies: list[str]) -> Problem:
        available = self.ledger.available(account, currencies)
        names = ", ".join(currencies) if currencies else "blue, green, yellow"
        detail = (
            f"This workflow costs {price_buzz} Buzz; the account has {available} Buzz"
            f" available in {names}."
        )
        status = self.config.insufficient_buzz_status
        return Problem(status, detail, title="Insufficient Buzz")

    def _new_id(self, account: str, external_id: str | None, seq: int) -> str:
        stamp = iso_utc(self.now_unix_s())
        digits = re.sub(r"\D", "", stamp)[:17]  # yyyyMMddHHmmssfff
        for attempt in itertools.count():
            number = derive_int(self.config.seed, "id", account, external_id, seq, attempt)
            wf_id = f"{1_000_000 + number % 9_000_000}-{digits}"
            if wf_id not in self.records:
                return wf_id
        raise AssertionError("unreachable")

    def _plan(
        self,
        wf_id: str,
        seq: int,
        account: str,
        body: dict[str, Any],
        inp: dict[str, Any],
        cost: dict[str, Any],
    ) -> WorkflowRecord:
        """Plan the workflow's whole life now: phases, jobs, faults, moderation, outcome."""
        seed, scale, now_s = self.config.seed, self.config.time_scale, self.clock.now()
        key = body.get("externalId") or wf_id
        step = body["steps"][0]
        prep_s, sched_s, proc_s = queue_phases(seed, key, now_s, scale)
        jobs = plan_jobs(seed, key, inp, proc_s, scale)
        deadline_s = now_s + parse_timespan_s(step.get("timeout") or DEFAULT_TIMEOUT) * scale
        blocked = bool(self._blocked and self._blocked.search(str(inp.get("prompt", ""))))
        hang = not blocked and self.faults.fires("step_expire", key)
        fail = not blocked and not hang and self.faults.fires("step_fail", key)
        fail_job = derive_int(seed, key, "fail_job") % len(jobs) if fail else None
        outcome, outcome_s = "succeeded", jobs[-1].end_s
        if blocked:
            outcome, outcome_s = "failed", proc_s
        elif hang:
            outcome, outcome_s = "expired", max(deadline_s, now_s)
        elif fail_job is not None:
            outcome, outcome_s = "failed", jobs[fail_job].end_s
        if not blocked and not hang and outcome_s > deadline_s:
            outcome, outcome_s = "expired", deadline_s
        ext = extension(output_format(inp))
        return WorkflowRecord(
            id=wf_id,
            seq=seq,
            account=account,
            external_id=body.get("externalId"),
            created_s=now_s,
            template=body,
            step=step,
            input=inp,
            cost=cost,
            transactions=[],
            blob_ids=[new_blob_id(seed, wf_id, i, ext) for i in range(len(jobs))],
            jobs=jobs,
            prep_s=prep_s,
            sched_s=sched_s,
            proc_s=proc_s,
            outcome=outcome,
            outcome_s=outcome_s,
            fail_job=fail_job,
            blocked=blocked,
            hang=hang,
            tags=list(body.get("tags") or []),
            metadata=dict(body.get("metadata") or {}),
        )

    # -- reading --------------------------------------------------------------------------

    def sign(self, base_url: str, blob_id: str) -> SignedUrl:
        """A fresh signed URL for `blob_id`, valid for at least `url_ttl_s` from now.

        URLs carry whole unix seconds: the expiry is rounded up, so a short TTL is never
        expired at birth."""
        expires_unix_s = math.ceil(self.now_unix_s() + self.config.url_ttl_s)
        return self.signer.blob_url(base_url, blob_id, expires_unix_s)

    def render_for(
        self, record: WorkflowRecord, base_url: str, now_s: float | None = None
    ) -> dict[str, Any]:
        """The workflow's JSON at one instant: refunds due by then are posted first, so a
        terminal failed workflow never shows its debit without its credit."""
        if now_s is None:
            now_s = self.clock.now()
        self.settle(now_s)
        return render(
            record,
            now_s,
            self.config.epoch_unix_s,
            lambda blob_id: self.sign(base_url, blob_id),
        )

    def visible(self, account: str, wf_id: str) -> WorkflowRecord:
        """The account's undeleted workflow `wf_id`; 404 for unknown, deleted or foreign."""
        record = self.records.get(wf_id)
        if record is None or record.account != account or record.deleted_s is not None:
            raise Problem(404, f"Workflow {wf_id!r} was not found.")
        return record

    async def get(self, account: str, wf_id: str, *, base_url: str, wait_s: float) -> Reply:
        """GetWorkflow: 200 when terminal, else 202; `wait_s` long-polls on the clock."""
        self.settle()
        record = self.visible(account, wf_id)
        if self.faults.fires("read_5xx", wf_id):
            raise Problem(self.faults.status_for("read_5xx", wf_id), "Read failed (fault).")
        reply = await self._answer(record, base_url, wait_s)
        body = hostile.unknown_status(self.faults, reply.body)
        return Reply(reply.status, body, fault=hostile.draw_read_fault(self.faults, wf_id))

    async def _wait_terminal(self, record: WorkflowRecord, wait_s: float) -> None:
        deadline_s = self.clock.now() + max(0.0, min(wait_s, self.config.max_wait_s))
        while record.status(self.clock.now()) not in TERMINAL:
            now_s = self.clock.now()
            if now_s >= deadline_s:
                break
            await self.clock.sleep(min(deadline_s, record.terminal_s) - now_s)
        self.settle()

    async def _maybe_slow(self, subject: str) -> None:
        if self.faults.fires("slow", subject):
            await self.clock.sleep(self.config.faults.slow.delay_s)

    def account_records(self, account: str) -> list[WorkflowRecord]:
        """The account's undeleted workflows, oldest first."""
        records = (self.records[i] for i in self._by_account.get(account, []))
        return [r for r in records if r.deleted_s is None]

    def blob(self, blob_id: str) -> tuple[WorkflowRecord, int]:
        """The workflow and image index behind `blob_id`; 404 if unknown or deleted."""
        owner = self._blobs.get(blob_id)
        if owner is None or self.records[owner[0]].deleted_s is not None:
            raise Problem(404, f"Blob {blob_id!r} was not found.")
        return self.records[owner[0]], owner[1]

    # -- writing --------------------------------------------------------------------------

    def cancel(self, record: WorkflowRecord) -> None:
        """Cancel now: refund in full if processing had not begun; no-op when terminal."""
        now_s = self.clock.now()
        if record.status(now_s) in TERMINAL:
            return
        record.canceled_s = now_s
        if not record.refunded and record.refund_due():
            self._refund(record)

    def update(self, account: str, wf_id: str, changes: dict[str, Any]) -> None:
        """UpdateWorkflow (already validated): cancel, and replace metadata / tags."""
        self.settle()
        record = self.visible(account, wf_id)
        self.revision += 1
        if changes.get("metadata") is not None:
            record.metadata = dict(changes["metadata"])
        if changes.get("tags") is not None:
            record.tags = list(changes["tags"])
        if changes.get("allowMatureContent") is not None:
            record.template = {
                **record.template,
                "allowMatureContent": changes["allowMatureContent"],
            }
        if changes.get("status") == "canceled":
            self.cancel(record)

    def delete(self, account: str, wf_id: str) -> None:
        """DeleteWorkflow: cancel (refund if unstarted), then hide it from reads and queries."""
        self.settle()
        record = self.visible(account, wf_id)
        self.cancel(record)
        record.deleted_s = self.clock.now()
        self.revision += 1

    # -- introspection --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The snapshot GET /_emulator/state serves (docs/emulator.md): ids per externalId,
        statuses, Buzz per account, requests by route, host and status, faults fired."""
        self.settle()
        now_s = self.clock.now()
        by_key: dict[str, dict[str, Any]] = {}
        for (_, external_id), known in self._by_key.items():
            entry = by_key.setdefault(external_id, {"ids": [], "whatif_preview": False})
            if isinstance(known, dict):
                entry["whatif_preview"] = True
            else:
                entry["ids"].append(known)
        statuses = Counter(r.status(now_s) for r in self.records.values())
        by_route: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        for (route, code), count in self.requests.items():
            by_route[route] += count
            by_status[str(code)] += count
        accounts = {
            acct: {
                "balance": dict(a.balance),
                "charged_buzz": a.charged_buzz,
                "refunded_buzz": a.refunded_buzz,
                "net_buzz": a.charged_buzz - a.refunded_buzz,
                "workflows": a.workflows,
            }
            for acct, a in self.ledger.accounts.items()
        }
        return {
            "now_s": now_s,
            "workflows": by_key,
            "workflow_count": len(self.records),
            "deleted_count": sum(1 for r in self.records.values() if r.deleted_s is not None),
            "statuses": dict(statuses),
            "accounts": accounts,
            "buzz": self.ledger.totals(),
            "requests": {
                "by_route": dict(by_route),
                "by_status": dict(by_status),
                "by_route_status": {f"{r} {c}": n for (r, c), n in self.requests.items()},
                "with_authorization": dict(self.authorized_requests),
                "by_host": dict(self.host_requests),
                "with_authorization_by_host": dict(self.authorized_hosts),
            },
            "submit_attempts": dict(self.submit_attempts),
            "faults_fired": dict(self.faults.fired),
            "fault_events": list(self.faults.events),
            "rate_limited": self.limiter.throttled,
            "images_rendered": self.images.renders,
        }

    def balance(self, token: str) -> dict[str, int]:
        """The current balance per currency of the account behind `token`."""
        return dict(self.ledger.accounts[self.ledger.open(token)].balance)

    def workflow_ids(self, external_id: str) -> list[str]:
        """Every workflow id created under `external_id` (any account); at most one per account."""
        return [r.id for r in self.records.values() if r.external_id == external_id]
