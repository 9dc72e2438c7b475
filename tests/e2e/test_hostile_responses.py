"""Hostile responses (issue 9, item 2) and where the token goes (item 3), against the runner.

Each hostile kind: the client or the image fetcher classifies it (retry, then a clear stop or
a recorded loss), never a traceback; then a whole run under jobs/faults/hostile.yaml over a
real socket with a CDN origin accounts for every cell, makes no duplicate, and the CDN never
sees the token. The emulator side of each kind: tests/emulator/test_hostile.py.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runner.api._client import Client
from runner.api._models import WorkflowStatus
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    load_faults,
    make_app,
    running_hosts,
    running_server,
)
from runner.emulator.config import HOSTILE_FAULT_KINDS
from runner.emulator.service import Emulator
from runner.engine._downloader import FetchedImage, ImageFetcher
from runner.engine._pacing import Backoff, retrying
from runner.errors import ApiError, RetryableError, UnusableAnswerError
from runner.manifest._load import parse_manifest
from runner.ops._run import run_batch
from tests.cells import FOX_INPUT, first_image

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "sentinel-token-7f3a9c1e5b"
GET_ROUTE = "GET /v2/consumer/workflows/{workflowId}"
FAST = Backoff(base_s=0.001, cap_s=0.001)
INPUT = dict(FOX_INPUT)
STEP = [{"$type": "imageGen", "input": INPUT}]


def emulator_app(**rules: FaultRule) -> Any:
    config = EmulatorConfig(
        time_scale=0, submit_limit=None, read_limit=None, faults=FaultProfile(**rules)
    )
    return make_app(config, clock=ManualClock())


def in_process(app: Any, base_url: str = "http://api.emulator.test", **kw: Any) -> Client:
    return Client(base_url=base_url, token=SENTINEL, transport=EmulatorTransport(app), **kw)


def service(app: Any) -> Emulator:
    emulator: Emulator = app.state.emulator
    return emulator


# -- hostile JSON answers: retried, then a clear stop -----------------------------------

READS = {
    "read_malformed_json": "the body is not JSON",
    "read_wrong_shape": "workflow has no string 'status'",
    "read_huge_body": "the body exceeds 100000 bytes",
    "read_redirect_other_host": "an unexpected redirect to http://other-host.invalid/",
}


@pytest.mark.parametrize("kind", READS)
async def test_a_hostile_answer_now_and_then_is_retried(kind: str) -> None:
    """Twice in a row, then a good answer: the poll's retry loop gets the workflow."""
    app = emulator_app(**{kind: FaultRule(p=1.0, times=2, size_bytes=200_000)})
    with anyio.fail_after(10):
        async with in_process(app, max_response_bytes=100_000) as client:
            wf = await client.submit(STEP, external_id="h-1")
            assert wf.id is not None
            wf_id = wf.id
            errors: list[RetryableError] = []
            got = await retrying(
                lambda: client.get(wf_id), backoff=FAST, what="poll", on_retry=errors.append
            )
    assert got.status is WorkflowStatus.SUCCEEDED
    assert [type(e) for e in errors] == [UnusableAnswerError] * 2
    assert all(READS[kind] in str(e) for e in errors)
    assert service(app).state()["requests"]["by_route"][GET_ROUTE] == 3


@pytest.mark.parametrize("kind", READS)
async def test_a_hostile_answer_every_time_stops_the_run_after_five(kind: str) -> None:
    """Five unusable answers in a row: a plain ApiError (not retryable), which the engine
    treats as stop-the-run; the message names the problem and how to resume."""
    app = emulator_app(**{kind: FaultRule(p=1.0, size_bytes=200_000)})
    with anyio.fail_after(10):
        async with in_process(app, max_response_bytes=100_000) as client:
            wf = await client.submit(STEP, external_id="h-2")
            assert wf.id is not None
            wf_id = wf.id
            with pytest.raises(ApiError) as info:
                await retrying(lambda: client.get(wf_id), backoff=FAST, what="poll")
    assert not info.value.retryable
    assert READS[kind] in str(info.value)
    assert "5 unusable answers in a row" in str(info.value)
    assert SENTINEL not in str(info.value)
    assert SENTINEL not in repr(info.value)
    requests = service(app).state()["requests"]
    assert requests["by_route"][GET_ROUTE] == 5
    assert "other-host.invalid" not in requests["by_host"]  # the redirect was never followed


async def test_an_unknown_status_is_polled_then_stops_the_run() -> None:
    """`archived` is not terminal: polled again; the 10th in a row for one workflow stops."""
    app = emulator_app(read_unknown_status=FaultRule(p=1.0))
    with anyio.fail_after(10):
        async with in_process(app) as client:
            wf = await client.submit(STEP, external_id="h-3")
            assert wf.id is not None
            seen = [await client.get(wf.id) for _ in range(9)]
            with pytest.raises(ApiError, match="status 'archived'.*10 times in a row") as info:
                await client.get(wf.id)
    assert {w.status for w in seen} == {WorkflowStatus.UNKNOWN}
    assert not any(w.is_terminal for w in seen)
    assert not info.value.retryable


async def test_an_unknown_status_between_known_ones_is_only_a_late_answer() -> None:
    app = emulator_app(read_unknown_status=FaultRule(p=1.0, times=9))
    with anyio.fail_after(10):
        async with in_process(app, max_unknown_status=10) as client:
            wf = await client.submit(STEP, external_id="h-4", tags=["t"])
            assert wf.id is not None
            for _ in range(5):
                await client.get(wf.id)
            page = await client.query(tags=["t"])  # counts too: 6 in a row
            assert page.items[0].status is WorkflowStatus.UNKNOWN
            for _ in range(3):
                await client.get(wf.id)
            assert (await client.get(wf.id)).status is WorkflowStatus.SUCCEEDED


async def test_a_drip_that_never_ends_is_cut_by_the_overall_deadline() -> None:
    """Over a real socket a byte comes every 0.05 s, so no single read times out (0.25 s);
    the whole call's deadline (2 x 0.25 s) cuts it: a RetryableError, not a hang."""
    config = EmulatorConfig(
        time_scale=0, faults=FaultProfile(read_drip=FaultRule(p=1.0, times=1, delay_s=0.05))
    )
    with running_server(config) as url:
        async with Client(base_url=url, token=SENTINEL, timeout_s=0.25) as client:
            with anyio.fail_after(10):
                wf = await client.submit(STEP, external_id="h-5")
                assert wf.id is not None
                with pytest.raises(RetryableError, match="deadline of 0.5 s") as info:
                    await client.get(wf.id)
                again = await client.get(wf.id)  # the fault fired once: the next is whole
    assert type(info.value) is RetryableError
    assert again.status is WorkflowStatus.SUCCEEDED


# -- hostile images: refetched, then recorded lost with the reason ----------------------

BLOBS = {
    "blob_not_image": "bytes are not a JPEG, PNG or WebP image",
    "blob_bomb": "a decompression bomb, refused undecoded",
    "blob_wrong_size": "image is 80x64, expected 64x64 (not decoded)",
    "blob_lying_length": "(Content-Length)",
    "blob_redirect_plain_http": "from https to plain http",
}


async def fetch_one(kind: str, rule: FaultRule) -> tuple[FetchedImage | str, Emulator]:
    app = emulator_app(**{kind: rule})
    # https: a downgrade to plain http is only a downgrade from https
    async with in_process(app, base_url="https://api.emulator.test") as client:
        wf = await client.submit(STEP, external_id=f"img-{kind}")
        assert wf.id is not None
        fetcher = ImageFetcher(client, FAST, max_bytes=1 << 20)
        fetcher.remember_urls(1, wf)
        item = first_image(wf, INPUT, cell_key="ab12cd34")
        with anyio.fail_after(20):
            return await fetcher.fetch(item), service(app)


@pytest.mark.parametrize("kind", BLOBS)
async def test_a_hostile_image_is_refetched_and_the_good_one_kept(kind: str) -> None:
    got, emulator = await fetch_one(kind, FaultRule(p=1.0, times=2))
    assert isinstance(got, FetchedImage), got
    assert (got.info.width, got.info.height, got.info.format) == (64, 64, "jpeg")
    assert emulator.faults.fired == {kind: 2}


@pytest.mark.parametrize("kind", BLOBS)
async def test_an_image_hostile_every_time_is_lost_with_its_reason(kind: str) -> None:
    """Never accepted: after every try the fetcher gives the reason, which the downloader
    records as the image's `lost` state (`zbatch retry OUT --state lost` remakes it)."""
    got, emulator = await fetch_one(kind, FaultRule(p=1.0))
    assert isinstance(got, str)
    assert BLOBS[kind] in got
    assert emulator.faults.fired[kind] == 8  # MAX_TRIES


# -- the token: a sentinel over a real socket, two hosts --------------------------------


async def test_the_cdn_host_never_sees_the_token_over_a_real_socket() -> None:
    """The API host and the CDN host are two listeners (two origins) of one emulator. The
    API host sees the sentinel on every API call and on no signed blob URL; the CDN host,
    which a signed URL redirects to, never sees it; an API call redirected to the CDN host
    is not followed at all."""
    faults = FaultProfile(read_redirect_other_host=FaultRule(p=1.0, times=1))
    with running_hosts(EmulatorConfig(time_scale=0, faults=faults)) as hosts:
        api_host, cdn_host = (httpx.URL(u).netloc.decode() for u in (hosts.api, hosts.cdn))
        async with Client(base_url=hosts.api, token=SENTINEL, timeout_s=5) as client:
            with anyio.fail_after(20):
                wf = await client.submit(STEP, external_id="t-1")
                assert wf.id is not None
                with pytest.raises(UnusableAnswerError, match=re.escape(hosts.cdn)):
                    await client.get(wf.id)  # 307 to the CDN host: not followed
                url = wf.images[0].url
                assert url is not None
                assert url.startswith(hosts.api)
                got = await client.download(url, max_bytes=1 << 20)
                fresh = await client.blob_url(wf.images[0].blob_id)  # owned: with the token
                again = await client.download(fresh, max_bytes=1 << 20)
            async with httpx.AsyncClient() as plain:
                state = (await plain.get(f"{hosts.api}/_emulator/state")).json()
    assert got.content == again.content
    assert got.content_type == "image/jpeg"
    assert fresh.startswith(hosts.cdn)
    requests = state["requests"]
    assert requests["by_host"][cdn_host] == 2  # the two content fetches
    assert cdn_host not in requests["with_authorization_by_host"]
    # submit, the redirected GET and the owned blob route carried it; the signed URL did not
    assert requests["with_authorization_by_host"] == {api_host: 3}
    assert requests["by_host"][api_host] == 4


# -- a whole run under jobs/faults/hostile.yaml -----------------------------------------

MANIFEST = """
name: hostile
out: out
budget: 1000
seed_base: 11
defaults: {size: 64x64, quantity: 2}
grid:
  model: [turbo, base]
  prompt: ["a fox in the snow", "a red lighthouse", "a bowl of ramen"]
  seed: {count: 2}
retries: {attempts: 4}
limits: {in_flight: 6, submit_per_s: 1000, downloads: 4}
"""
TUNING = {"poll_min_s": 0.01, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}


async def test_a_run_under_the_hostile_profile_accounts_for_every_cell(tmp_path: Path) -> None:
    """Over a real socket, with a CDN host: every hostile kind in the profile may fire; the
    run ends normally with every cell succeeded, every image downloaded (or lost with a
    reason), one workflow per externalId, the ledger matching the service, and the sentinel
    token on no CDN request and in no file."""
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    m = parse_manifest(path.read_text(), path=path)
    faults = load_faults(ROOT / "jobs" / "faults" / "hostile.yaml")
    config = EmulatorConfig(time_scale=0.02, seed=9, faults=faults)
    with running_hosts(config) as hosts:
        async with Client(base_url=hosts.api, token=SENTINEL, timeout_s=1.0) as client:
            with anyio.fail_after(60):
                outcome = await run_batch(m, client, runtime_scale=0.02, tuning=TUNING)
        async with httpx.AsyncClient() as plain:
            state = (await plain.get(f"{hosts.api}/_emulator/state")).json()
    fired = set(state["faults_fired"])
    assert fired <= set(HOSTILE_FAULT_KINDS)
    # Which kinds fire depends on how many polls the socket's timing makes: 9 to 11 of the
    # 11 in 13 runs of seed 9. Each kind's own classification is proven above.
    assert len(fired) >= 7, f"only {sorted(fired)} fired"
    assert outcome.stats.stop_reason is None
    assert outcome.counts["succeeded"] == 12
    images = outcome.counts.get("image:downloaded", 0) + outcome.counts.get("image:lost", 0)
    assert images == 24
    assert all(len(entry["ids"]) == 1 for entry in state["workflows"].values())
    assert outcome.budget.charged_buzz == state["buzz"]["net_buzz"]
    cdn_host = httpx.URL(hosts.cdn).netloc.decode()
    assert state["requests"]["by_host"][cdn_host] >= 24
    assert cdn_host not in state["requests"]["with_authorization_by_host"]
    db = sqlite3.connect(m.out / "batch.sqlite")
    rows = db.execute("SELECT path, sha256 FROM images WHERE state = 'downloaded'").fetchall()
    db.close()
    for rel, sha in rows:
        assert hashlib.sha256((m.out / rel).read_bytes()).hexdigest() == sha
    for file in m.out.rglob("*"):
        if file.is_file():
            assert SENTINEL.encode() not in file.read_bytes(), file


# -- TLS ------------------------------------------------------------------------------


async def test_tls_verification_is_never_turned_off() -> None:
    """No module of the runner disables certificate checks, and the client verifies."""
    banned = re.compile(
        r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    )
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "runner").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if banned.search(line)
    ]
    assert hits == []
    async with Client(base_url="https://orchestration.example", token=SENTINEL) as client:
        context = client._wire.ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
