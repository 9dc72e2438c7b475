"""The client's aiohttp wire over real loopback sockets (issue 14, lever e): what the run's
requests go through. The rules are the client's own (`runner/api/_http.py`, pinned with
fakes in tests/test_api.py and tests/test_api_hops.py); these tests pin what the wire adds
or must not add: no cookie, the token only on the API origin and never on a hop, bodies
within their limits, the per-call deadline over a drip, a redirect's connection kept, the
proxy the environment names (never for loopback), aiohttp's failures as the same errors.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web
from yarl import URL

from runner.api import Client
from runner.api._wire import AiohttpWire
from runner.errors import RetryableError, ServiceUnreachable, UnusableAnswerError

pytestmark = pytest.mark.anyio

TOKEN = "civ_wire_T0KEN_5e4d3c2b1a"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler, ports: int = 1) -> AsyncIterator[list[int]]:
    """`handler` for every path on `ports` loopback ports (two ports: two origins)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    found: list[int] = []
    try:
        for _ in range(ports):
            site = web.SockSite(runner, _listening_socket())
            await site.start()
            found.append(site._sock.getsockname()[1])
        yield found
    finally:
        await runner.cleanup()


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_no_request_carries_a_cookie_and_no_hop_the_token() -> None:
    """Two origins on `localhost` (a name, so a real cookie jar would keep what they set;
    cookies ignore the port): the API's answers and the CDN's set cookies, none comes back.
    The token goes on API calls only: not on the signed URL, not on its redirect hop."""
    seen: list[tuple[int, str, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        port = request.url.port or 0
        seen.append(
            (
                port,
                request.path,
                request.headers.get("Cookie"),
                request.headers.get("Authorization"),
            )
        )
        jar = {"Set-Cookie": f"session=s{len(seen)}; Path=/"}
        if port == cdn_port:
            return web.Response(body=b"image", headers=jar, content_type="image/jpeg")
        location = f"http://localhost:{cdn_port}/c?sig=1"
        return web.Response(status=302, headers={"Location": location} | jar)

    with anyio.fail_after(10):
        async with serving(handler, ports=2) as (api_port, cdn_port):
            base = f"http://localhost:{api_port}"
            async with Client(base_url=base, token=TOKEN, timeout_s=5) as api:
                for _ in range(2):
                    assert await api.blob_url("E8.jpeg") == f"http://localhost:{cdn_port}/c?sig=1"
                    got = await api.download(f"{base}/v2/consumer/blobs/E8.jpeg", max_bytes=99)
                    assert got.content == b"image"
                    await api.download(f"http://localhost:{cdn_port}/c", max_bytes=99)
    assert len(seen) == 8
    assert [cookie for _, _, cookie, _ in seen] == [None] * 8
    signed = [(port, path) for port, path, _, auth in seen if auth == f"Bearer {TOKEN}"]
    assert signed == [(api_port, "/v2/consumer/blobs/E8.jpeg")] * 2  # the blob_url calls only
    assert all(auth is None for port, _, _, auth in seen if port == cdn_port)


async def test_a_body_over_the_limit_is_unusable_and_a_short_one_retryable() -> None:
    """Over a real socket: an API answer declared or sent larger than the limit is refused
    as unusable; a body cut before its Content-Length is retryable."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/big"):
            response = web.StreamResponse(status=200)  # chunked: no Content-Length
            await response.prepare(request)
            await response.write(b"{" + b" " * 4096)
            await response.write_eof()
            return response
        if request.path.endswith("/declared"):
            return web.Response(body=b"{}" + b" " * 4096, content_type="application/json")
        response = web.StreamResponse(status=200, headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"\xff\xd8short")
        assert request.transport is not None
        request.transport.close()  # cut: 7 of 100 bytes
        return response

    with anyio.fail_after(10):
        async with serving(handler) as (port,):
            base = f"http://127.0.0.1:{port}"
            async with Client(base_url=base, token=TOKEN, max_response_bytes=1024) as api:
                for name, text in [("big", "exceeds 1024 bytes"), ("declared", "(4098 bytes)")]:
                    with pytest.raises(UnusableAnswerError, match=re.escape(text)):
                        await api.get(name)
                with pytest.raises(RetryableError):
                    await api.download(f"{base}/short", max_bytes=1000)


async def test_a_drip_is_cut_by_the_deadline_over_a_socket() -> None:
    """A body that drips a byte at a time, each sooner than the read timeout, never ends:
    the call's one deadline (wait + 2 x timeout) cuts it, as a retryable error."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.02)

    with anyio.fail_after(10):
        async with serving(handler) as (port,):
            async with Client(
                base_url=f"http://127.0.0.1:{port}", token=TOKEN, timeout_s=0.2
            ) as api:
                with pytest.raises(RetryableError, match="deadline of 0.4 s"):
                    await api.get("wf-1")


async def test_a_redirect_keeps_its_connection() -> None:
    """A redirect's body is read before the hop: a submit and three downloads (redirect,
    then content) share one socket on the aiohttp wire."""
    peers: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        if request.method == "POST":
            return web.json_response({"id": "wf", "status": "succeeded", "steps": []})
        if request.path.startswith("/blob"):
            response = web.StreamResponse(status=307, headers={"Location": "/content/x"})
            await response.prepare(request)
            await response.write(b"moved ")
            await asyncio.sleep(0.05)  # the rest comes later: released unread, it would close
            await response.write(b"here")
            await response.write_eof()
            return response
        return web.Response(body=b"x", content_type="image/jpeg")

    with anyio.fail_after(10):
        async with serving(handler) as (port,):
            base = f"http://127.0.0.1:{port}"
            async with Client(base_url=base, token=TOKEN) as api:
                await api.submit([{"$type": "imageGen", "input": {}}], external_id="k1")
                for n in range(3):
                    assert (await api.download(f"{base}/blob/{n}", max_bytes=9)).content == b"x"
    assert len(peers) == 1 + 2 * 3
    assert len(set(peers)) == 1


async def test_failures_to_connect_before_and_after_the_first_answer() -> None:
    """Refused before the service ever answered: `ServiceUnreachable` naming why; once it
    has answered, the same refusal is an outage, retryable, named as httpx named it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"title": "Not Found", "status": 404}, status=404)

    sock = _listening_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    base = f"http://127.0.0.1:{port}"
    with anyio.fail_after(10):
        async with Client(base_url=base, token=TOKEN, timeout_s=2) as api:
            with pytest.raises(ServiceUnreachable, match="connection refused"):
                await api.get("wf-1")
            api.answered = True  # as if it had answered once
            with pytest.raises(RetryableError, match=r"GET .*/wf-1: ConnectError: ") as info:
                await api.get("wf-1")
    assert TOKEN not in str(info.value)


def test_the_proxy_comes_from_the_environment_but_never_for_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY for https hosts (its credentials apart, not in the URL), HTTP_PROXY for
    http ones, none for NO_PROXY's hosts nor for loopback, none without trust_env."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.test:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.test:8080")
    monkeypatch.setenv("NO_PROXY", "internal.test")
    wire = AiohttpWire()
    proxy, auth = wire.proxy_for(URL("https://orchestration.civitai.com/v2/x"))
    assert proxy == URL("http://proxy.test:3128")
    assert auth is not None
    assert (auth.login, auth.password) == ("user", "pw")
    assert wire.proxy_for(URL("http://cdn.example/x"))[0] == URL("http://plain-proxy.test:8080")
    for url in ["https://api.internal.test/x", "http://127.0.0.1:8000/x", "http://localhost/x"]:
        assert wire.proxy_for(URL(url)) == (None, None), url
    assert AiohttpWire(trust_env=False).proxy_for(URL("https://a.test/")) == (None, None)
