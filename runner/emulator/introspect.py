"""What the emulated service saw and charged, as one JSON-ready dict (test-only)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.emulator.service import Emulator


def state(emulator: Emulator) -> dict[str, Any]:
    """The introspection snapshot served at GET /_emulator/state (see docs/emulator.md)."""
    emulator.settle()
    now_s = emulator.clock.now()
    by_key: dict[str, dict[str, Any]] = {}
    for (_, external_id), known in emulator._by_key.items():
        entry = by_key.setdefault(external_id, {"ids": [], "whatif_preview": False})
        if isinstance(known, dict):
            entry["whatif_preview"] = True
        else:
            entry["ids"].append(known)
    statuses = Counter(r.status(now_s) for r in emulator.records.values())
    by_route: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    for (route, code), count in emulator.requests.items():
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
        for acct, a in emulator.ledger.accounts.items()
    }
    return {
        "now_s": now_s,
        "workflows": by_key,
        "workflow_count": len(emulator.records),
        "deleted_count": sum(1 for r in emulator.records.values() if r.deleted_s is not None),
        "statuses": dict(statuses),
        "accounts": accounts,
        "buzz": emulator.ledger.totals(),
        "requests": {
            "by_route": dict(by_route),
            "by_status": dict(by_status),
            "by_route_status": {f"{r} {c}": n for (r, c), n in emulator.requests.items()},
            "with_authorization": dict(emulator.authorized_requests),
            "by_host": dict(emulator.host_requests),
            "with_authorization_by_host": dict(emulator.authorized_hosts),
        },
        "submit_attempts": dict(emulator.submit_attempts),
        "faults_fired": dict(emulator.faults.fired),
        "fault_events": list(emulator.faults.events),
        "rate_limited": emulator.limiter.throttled,
        "images_rendered": emulator.images.renders,
    }
