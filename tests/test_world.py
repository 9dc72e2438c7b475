"""When the world is wrong (issue 15, items 5 and 7): a proxy in the environment, a service
that cannot be reached at start, an outage once a run has worked."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from runner.api._client import Client
from runner.api._http import is_loopback
from runner.cli._main import main
from runner.emulator import EmulatorConfig, running_server
from runner.engine._pacing import Backoff, retrying
from runner.errors import (
    ExitCode,
    NotFoundError,
    RetryableError,
    ServiceUnreachable,
)

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
