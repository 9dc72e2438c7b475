"""The intent is durable before its request leaves, with intents reserved in groups.

The submitter reserves the free slots' intents together (`Store.reserve_many`, one group
commit) and sends them after. At the moment each submit is sent, a SECOND connection to
the record (another reader, seeing only what is committed, not the writer thread's open
transaction) must find that attempt `submitting` with its Buzz reserved: on batch.sqlite,
and on PostgreSQL (`zbatch run --store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.manifest._load import parse_manifest
from runner.ops._run import RunOverrides, run_batch
from tests.services import StoreBackend

FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}
MANIFEST = """
name: durable
out: out
budget: 100000
seed_base: 3
defaults: {{size: 64x64, quantity: 1}}
grid:
  model: [turbo, base]
  prompt: ["a fox", "a lighthouse", "a bowl of ramen"]
  seed: {{count: 15}}
limits: {{in_flight: {in_flight}, submit_per_s: 1000, downloads: 4}}
"""
CELLS = 2 * 3 * 15


@pytest.mark.parametrize("in_flight", [1, 64])
async def test_every_submit_leaves_with_its_intent_already_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int, store_backend: StoreBackend
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(in_flight=in_flight))
    m = parse_manifest(path.read_text(), path=path)
    if store_backend.name == "sqlite":  # the run keeps its record in OUT
        record, overrides = StoreBackend("sqlite", m.out / "batch.sqlite"), RunOverrides()
    else:
        record, overrides = store_backend, RunOverrides(store=str(store_backend.location))
    seen: list[tuple[str, int, int, int]] = []  # state, reserved, committed, submitting
    real_submit = Client.submit

    async def watched_submit(self: Client, steps: Any, **kw: Any) -> Any:
        external_id = kw.get("external_id")
        if external_id is not None:  # a real submit, not a whatif price
            rows = record.rows(
                "SELECT a.state, a.reserved_buzz, b.committed_buzz,"
                " (SELECT COUNT(*) FROM attempts WHERE state = 'submitting')"
                " FROM attempts a, batch b WHERE a.external_id = ?",
                external_id,
            )
            assert rows, f"{external_id} left before its attempt was on disk"
            ((state, reserved, committed, submitting),) = rows
            seen.append((str(state), int(str(reserved)), int(str(committed)), int(str(submitting))))
        return await real_submit(self, steps, **kw)

    monkeypatch.setattr(Client, "submit", watched_submit)
    app = make_app(EmulatorConfig(time_scale=0))
    with anyio.fail_after(60):
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:
            outcome = await run_batch(m, client, tuning=FAST, overrides=overrides)
    assert outcome.counts["succeeded"] == CELLS
    assert len(seen) == CELLS  # each sent once, and each looked at as it left
    for state, reserved, committed, _ in seen:
        assert state == "submitting"
        assert reserved > 0
        assert committed >= reserved
    most_at_once = max(s[3] for s in seen)
    if in_flight == 1:
        assert most_at_once == 1
    else:  # the first free slots' intents were reserved in one group, before any was sent
        assert seen[0][3] == in_flight
