"""When the world is wrong (issue 15, items 5 and 7): a proxy in the environment, a service
that cannot be reached at start, an outage once a run has worked."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import socket
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
from anyio.abc import SocketStream
from rich.console import Console

from runner.api._client import Client
from runner.api._http import is_loopback
from runner.cli._main import main
from runner.cli._options import GIVE_UP_AFTER_DEFAULT, duration
from runner.cli._progress import Snapshot, render_line, render_panel
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app, running_server
from runner.engine._pacing import DEFAULT_GIVE_UP_AFTER_S, Backoff, Outage, retrying
from runner.errors import (
    ExitCode,
    NotFoundError,
    RetryableError,
    ServiceOutage,
    ServiceUnreachable,
)
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import RunOverrides, run_batch
from runner.store import Budget
from runner.store._store import Store

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_manifest(tmp_path: Path, *, cells: int = 3) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"name: w\nout: out\nbudget: 50\ndefaults: {{size: 64x64}}\n"
        f"grid: {{prompt: p, seed: {{count: {cells}}}}}\n",
        encoding="utf-8",
    )
    return manifest


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every proxy variable points at a closed loopback port; NO_PROXY is unset."""
    url = f"http://127.0.0.1:{closed_port()}"
    for name in PROXY_VARS:
        monkeypatch.setenv(name, url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return url


# -- item 7: loopback never goes through a proxy ---------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("emulator.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("::2", False),
        ("orchestration.civitai.com", False),
        ("localhost.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_run_on_the_embedded_emulator_ignores_a_dead_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dead_proxy: str
) -> None:
    """HTTP_PROXY without NO_PROXY: the embedded emulator's loopback traffic goes direct, and
    the run finishes (it used to retry forever against the proxy)."""
    code = main(
        ["run", str(small_manifest(tmp_path)), "--emulator", "--time-scale", "0", "--quiet"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Done: 3 of 3 cells succeeded." in captured.out
    assert "retry" not in captured.err


async def test_other_hosts_still_go_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy is honoured for every host but loopback: a request for a name that does not
    resolve reaches the (fake) proxy, whose answer comes back."""
    seen: list[bytes] = []

    async def proxy(stream: SocketStream) -> None:
        async with stream:
            seen.append(await stream.receive())
            await stream.send(
                b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    for name in PROXY_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, proxy)
            async with Client(base_url="http://api.zbatch-test.invalid", token="t") as api:
                with pytest.raises(RetryableError) as info:
                    await api.get("wf-1")
            tg.cancel_scope.cancel()
    assert info.value.status == 503
    assert seen
    assert seen[0].startswith(b"GET http://api.zbatch-test.invalid/v2/consumer/workflows/wf-1")


# -- item 5: a service out of reach at the start ---------------------------------------------

REAL_TOKEN = "civ_world_T0KEN_9f8e7d6c5b4a"


def run_against(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, float]:
    """`zbatch run` against `url`: its exit code, stderr and how long it took."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", REAL_TOKEN)
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    manifest = small_manifest(tmp_path)
    started = time.monotonic()
    code = main(["run", str(manifest), "--api-url", url, "--quiet"])
    return code, "", time.monotonic() - started


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("closed-port", "connection refused: nothing listens there"),
        ("no-such-host", "no such host: the name does not resolve"),
        ("tls", "the TLS handshake failed"),
    ],
)
def test_a_service_out_of_reach_at_the_start_is_one_error_naming_the_url(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    why: str,
) -> None:
    """Refused, no such host (.invalid never resolves: no traffic leaves), TLS refused: exit 2
    within seconds, one line naming the URL; no batch record is made, nothing is retried."""
    with contextlib.ExitStack() as stack:
        if kind == "closed-port":
            url = f"http://127.0.0.1:{closed_port()}"
        elif kind == "no-such-host":
            url = "http://nonexistent.invalid"
        else:  # https to a server that speaks plain http
            plain = stack.enter_context(running_server(EmulatorConfig(time_scale=0)))
            url = plain.replace("http://", "https://")
        code, _, took_s = run_against(tmp_path, url, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("zbatch")]
    assert '"retry"' not in err  # no retry warning: refused at once
    assert len(errors) == 1
    assert f"cannot reach the orchestration API at {url}: {why}" in errors[0]
    assert "nothing was submitted or spent" in errors[0]
    assert REAL_TOKEN not in err
    assert took_s < 15
    assert not (tmp_path / "out" / "batch.sqlite").exists()


async def test_before_the_service_answers_a_failed_connection_is_not_retried() -> None:
    """Every command (cancel, verify --repair, adopt: they call `retrying`) gets
    `ServiceUnreachable`, not a `RetryableError` to retry forever, until the service has
    answered once; after that, the same failure is retryable (an outage)."""
    answers = iter(["refuse", "answer", "refuse"])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(answers) == "refuse":
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return httpx.Response(404, json={"title": "Not Found", "status": 404})

    calls: list[int] = []

    async def get() -> None:
        calls.append(1)
        await api.get("wf-1")

    with anyio.fail_after(5):
        async with Client(
            base_url="http://api.example", token=REAL_TOKEN, transport=httpx.MockTransport(handler)
        ) as api:
            with pytest.raises(ServiceUnreachable, match="http://api.example: connection refused"):
                await retrying(get, backoff=Backoff(base_s=0.001, cap_s=0.001), what="get")
            assert len(calls) == 1  # not retried
            with pytest.raises(NotFoundError):
                await api.get("wf-1")  # the service answers: it is there
            with pytest.raises(RetryableError):
                await api.get("wf-1")  # now an outage: retryable
    assert ServiceUnreachable.exit_code == ExitCode.USAGE


# -- item 5: an outage once the run has worked -----------------------------------------------

OUTAGE_MANIFEST = """
name: outage
out: out
budget: 1000
defaults: {size: 64x64}
grid: {prompt: ["a fox", "a lighthouse"], seed: {count: 6}}
retries: {attempts: 2}
limits: {in_flight: 4, submit_per_s: 1000, downloads: 2}
"""
FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.002}


class Cable(httpx.AsyncBaseTransport):
    """The line between the runner and the emulator: cut after `cut_after` acknowledged
    submits (every request then fails to connect, as to a service that went away), and
    mended after `mend_after` failed requests (None: never)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, cut_after: int, mend_after: int | None):
        self.inner = inner
        self.cut_after = cut_after
        self.mend_after = mend_after
        self.acknowledged = 0
        self.refused = 0
        self.cut = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            self.refused += 1
            if self.mend_after is not None and self.refused >= self.mend_after:
                self.cut = False
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        submit = request.method == "POST" and request.url.params.get("whatif") == "false"
        if submit and response.status_code < 300:
            self.acknowledged += 1
            self.cut = self.cut or self.acknowledged == self.cut_after  # cut once
        return response


class FakeClock:
    """Monotonic seconds that move 10 minutes at each reading: an outage's hours pass in a
    few dozen failed calls, without a wall-clock sleep."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        self.now_s += 600.0
        return self.now_s


def outage_manifest(tmp_path: Path) -> Manifest:
    path = tmp_path / "m.yaml"
    path.write_text(OUTAGE_MANIFEST, encoding="utf-8")
    return parse_manifest(path.read_text(), path=path)


async def run_through(m: Manifest, app: Any, cable: httpx.AsyncBaseTransport, **kw: Any) -> Any:
    async with Client(base_url="http://emulator", token=REAL_TOKEN, transport=cable) as client:
        return await run_batch(m, client, **kw)


async def test_an_outage_after_the_start_ends_by_give_up_after_and_resumes(
    tmp_path: Path,
) -> None:
    """The service answers, then goes away: the run waits it out with backoff (logging
    "service unreachable since HH:MM"), gives up after --give-up-after (exit 130, the
    run's outcome attached), and counts as submitted only what the service acknowledged.
    The same command then finishes the batch, one workflow per externalId."""
    m = outage_manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    cable = Cable(EmulatorTransport(app), cut_after=3, mend_after=None)
    tuning = {**FAST, "outage_clock": FakeClock()}
    with anyio.fail_after(30), structlog.testing.capture_logs() as logs:
        with pytest.raises(ServiceOutage) as info:
            await run_through(
                m, app, cable, tuning=tuning, overrides=RunOverrides(give_up_after_s=2 * 3600)
            )
    error = info.value
    assert error.exit_code == ExitCode.INTERRUPTED
    assert "unreachable since" in str(error)
    assert "--give-up-after 2h" in str(error)
    assert "run the same command again to resume" in str(error)
    down = [e for e in logs if e["event"] == "service_unreachable"]
    assert len(down) == 1
    assert re.fullmatch(r"\d\d:\d\d", down[0]["since"])
    assert cable.refused >= 3  # waited out with retries before giving up
    outcome = error.outcome
    assert outcome is not None
    assert outcome.stats.submitted == cable.acknowledged == 3
    assert outcome.stats.submitted < 12
    assert app.state.emulator.state()["workflow_count"] == 3

    with anyio.fail_after(30):  # the same command, the service back: the batch finishes
        healthy = Cable(EmulatorTransport(app), cut_after=10**6, mend_after=None)
        again = await run_through(m, app, healthy, tuning=FAST)
    assert again.counts["succeeded"] == 12
    # the intents the outage left are resubmitted (same externalId), the rest submitted
    assert again.stats.submitted + again.stats.resubmitted == 12 - 3
    assert app.state.emulator.state()["workflow_count"] == 12
    for entry in app.state.emulator.state()["workflows"].values():
        assert len(entry["ids"]) == 1


async def test_a_short_outage_is_waited_out_and_the_run_finishes(tmp_path: Path) -> None:
    """An outage shorter than --give-up-after: the run goes on when the service is back,
    says so in the log, and every cell succeeds."""
    m = outage_manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    cable = Cable(EmulatorTransport(app), cut_after=2, mend_after=20)
    tuning = {**FAST, "outage_clock": FakeClock()}
    with anyio.fail_after(30), structlog.testing.capture_logs() as logs:
        outcome = await run_through(
            m, app, cable, tuning=tuning, overrides=RunOverrides(give_up_after_s=6 * 3600)
        )
    assert outcome.counts["succeeded"] == 12
    assert outcome.counts["image:downloaded"] == 12  # no image lost to the outage
    assert cable.refused == 20
    events = [e["event"] for e in logs]
    assert "service_unreachable" in events
    assert "service_reachable_again" in events
    assert outcome.stats.submitted == 12


def test_the_outage_is_shown_as_since_when_and_retrying() -> None:
    """The display's words, from the wall time of the outage's first failure."""
    clock = FakeClock()
    outage = Outage(600, clock=clock, now=lambda: datetime(2026, 12, 4, 2, 13, 59))
    assert outage.describe() is None
    outage.failed(RetryableError("GET x: ConnectError"))
    assert outage.describe() == "service unreachable since 02:13, retrying"
    line = render_line(snapshot_with(outage.describe()))
    assert "service unreachable since 02:13, retrying" in line
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(render_panel(snapshot_with(outage.describe())))
    assert "service unreachable since 02:13, retrying" in console.export_text()
    assert "unreachable" not in render_line(snapshot_with(None))
    outage.failed(RetryableError("429", status=429))  # the service is there: no outage
    with pytest.raises(ServiceOutage):
        outage.failed(RetryableError("503", status=503))
    outage.succeeded()
    assert outage.describe() is None


def snapshot_with(service: str | None) -> Snapshot:
    return Snapshot(
        elapsed_s=10.0,
        total_cells=4,
        counts={"running": 2, "succeeded": 2},
        budget=Budget(cap_buzz=10, committed_buzz=2, charged_buzz=2, reserved_buzz=0),
        submitted=4,
        retries=9,
        cap_reached=False,
        stop_reason=None,
        submit_per_s=None,
        cells_per_min=None,
        service=service,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6h", 21600.0), ("90m", 5400.0), ("1h30m", 5400.0), ("45s", 45.0), ("120", 120.0)],
)
def test_give_up_after_takes_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "-1h", "1d", "800h"])
def test_give_up_after_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_the_documented_default_is_the_engines() -> None:
    assert duration(GIVE_UP_AFTER_DEFAULT) == DEFAULT_GIVE_UP_AFTER_S


def test_zbatch_run_gives_up_after_an_outage_with_exit_130_and_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real socket: the emulator stops once the first submit is acknowledged; with
    `--give-up-after 1s` the run ends with exit 130 (declared by `run`), the error says since
    when, and the summary counts as submitted exactly the attempts the record holds as sent."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", REAL_TOKEN)
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    server = running_server(EmulatorConfig(time_scale=0.5))
    url = server.__enter__()
    stopper = threading.Thread(target=server.__exit__, args=(None, None, None))
    real_mark_running = Store.mark_running

    async def mark_running(self: Store, *args: Any, **kw: Any) -> None:
        await real_mark_running(self, *args, **kw)
        if stopper.ident is None:
            stopper.start()  # the service goes away (off the runner's loop)

    monkeypatch.setattr(Store, "mark_running", mark_running)
    manifest = small_manifest(tmp_path, cells=8)
    try:
        code = main(["run", str(manifest), "--api-url", url, "--give-up-after", "1s", "--quiet"])
    finally:
        if stopper.ident is None:
            server.__exit__(None, None, None)
        else:
            stopper.join()
    captured = capsys.readouterr()
    assert code == 130, captured.err
    assert "zbatch: error: the service has been unreachable since" in captured.err
    assert "--give-up-after 1s" in captured.err
    said = re.search(r"this run +(\d+) submitted", captured.out)
    assert said is not None, captured.out
    db = sqlite3.connect(tmp_path / "out" / "batch.sqlite")
    (sent,) = db.execute("SELECT COUNT(*) FROM attempts WHERE workflow_id IS NOT NULL").fetchone()
    db.close()
    assert 1 <= int(said.group(1)) == sent < 8
