"""The HTTP rules the client keeps on every hop: whose requests carry the token, which
redirects a download may follow, how a redirect's connection goes back to the pool, and
that loopback never goes through a proxy.

`HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are honoured (httpx's `trust_env`), but a request for
a loopback host (`localhost`, 127.0.0.0/8, `::1`) is sent directly, whatever `NO_PROXY`
says: a proxy elsewhere cannot reach this machine's loopback, so the embedded emulator (or a
local `zbatch emulator`) would only ever answer through it with errors (`is_loopback`).

The bytes move through aiohttp (`AiohttpClient`: httpx's API and rules on top, httpx-aiohttp's
transport underneath): httpx's own transport spent ~10x the CPU per request (issue 14,
docs/performance.md). Every rule here is httpx's (auth flow, redirects, timeouts, limits);
aiohttp only carries the request, with no cookie jar of its own, no proxy from the
environment but the one httpx picked, and certificates verified.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Generator
from typing import Any, Final

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from runner.api._errors import body_error, read_limited
from runner.log import redact_url

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
REDIRECT_BODY_MAX_BYTES: Final = 64 * 1024  # a redirect body read to keep its connection


def aiohttp_transport(*, proxy: httpx.Proxy | None = None) -> AiohttpTransport:
    """An httpx transport over an aiohttp session made on first use (inside the event loop):
    certificates verified, no cookie jar, no proxy but `proxy`, no connection limit (the
    engine's slots are the limit)."""

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=transport.ssl_context),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        )

    # its `ssl_context` is httpx's verifying one (certifi, SSL_CERT_FILE), which every
    # connection of the session uses
    transport = AiohttpTransport(client=session, proxy=proxy)
    return transport


class NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: no request of the client carries a cookie, and no
    response pays for being read into a jar (httpx's `extract_cookies` built two urllib
    objects per response: ~8% of a request's CPU, `bench/client_micro.py`)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class AiohttpClient(httpx.AsyncClient):
    """`httpx.AsyncClient` whose transports (the direct one and each proxy's that httpx
    mounts from the environment) are `aiohttp_transport`s; a given transport is kept.
    It has no cookie jar (`NoCookies`): the service's API sets none, and a download carries
    none."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = NoCookies()

    async def _send_handling_redirects(
        self, request: httpx.Request, follow_redirects: bool, history: list[httpx.Response]
    ) -> httpx.Response:
        """Without redirects followed or event hooks, one request: httpx would otherwise
        build the next hop's request for every redirect it hands back unfollowed (its
        `next_request`, which nothing here reads: `exchange` builds the hop after
        `next_hop`'s checks), ~8% of a download's CPU (`bench/client_micro.py`)."""
        hooks = self._event_hooks
        if follow_redirects or hooks["request"] or hooks["response"]:
            return await super()._send_handling_redirects(request, follow_redirects, history)
        return await self._send_single_request(request)

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        given: httpx.AsyncBaseTransport | None = kwargs.get("transport")
        return given if given is not None else aiohttp_transport()

    def _init_proxy_transport(
        self, proxy: httpx.Proxy, *args: Any, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return aiohttp_transport(proxy=proxy)


class BearerAuth(httpx.Auth):
    """Adds `Authorization: Bearer …` to requests for the API origin, and to nothing else."""

    def __init__(self, token: str, origin: tuple[str, str, int]) -> None:
        self._token = token
        self._origin = origin

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=<hidden>)"


def next_hop(response: httpx.Response, hop: int, max_redirects: int) -> httpx.URL:
    """Where a download redirect points, if it may be followed.

    Never more than `max_redirects`, never from https to plain http, never to a scheme
    other than http(s). It carries no token (downloads never do) and no cookies.
    """
    location = response.headers.get("Location")
    if not location:
        raise body_error(response, "a redirect without a Location header", unusable=True)
    if location.startswith(("https://", "http://")):
        target = httpx.URL(location)  # absolute: one parse, not join's two and a merge
    else:
        target = response.request.url.join(location)
    if hop >= max_redirects:
        raise body_error(response, f"more than {max_redirects} redirects", unusable=True)
    if target.scheme not in ("http", "https"):
        raise body_error(
            response, f"a redirect to {target.scheme}: refused (http or https only)",
            unusable=True,
        )  # fmt: skip
    if response.request.url.scheme == "https" and target.scheme == "http":
        shown = redact_url(target)
        raise body_error(
            response, f"a redirect from https to plain http ({shown}): refused",
            unusable=True,
        )  # fmt: skip
    return target


class RedactedUrl:
    """A URL for a log line, redacted (`redact_url`) only when a line is written: a debug
    event that no handler keeps costs no redaction."""

    __slots__ = ("_url",)

    def __init__(self, url: object) -> None:
        self._url = url

    def __str__(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return repr(redact_url(self._url))


async def drain(response: httpx.Response) -> None:
    """Read a redirect's (small) body, so that its connection goes back to the pool: a
    response closed unread closes its connection, and every download paid a new one."""
    if response.is_stream_consumed:  # already read (a test's preloaded answer)
        return
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > REDIRECT_BODY_MAX_BYTES:
            return  # not worth reading: the connection is closed with the response


def origin(url: httpx.URL) -> tuple[str, str, int]:
    default_port = 443 if url.scheme == "https" else 80
    return url.scheme, url.host.lower(), url.port or default_port


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """`localhost` (and `*.localhost`), 127.0.0.0/8 or ::1: this machine, never a proxy's."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def exchange(
    pool_for: Callable[[httpx.URL], httpx.AsyncClient],
    request: httpx.Request,
    *,
    auth: httpx.Auth | None,
    max_redirects: int,
    max_bytes: int,
    sent: list[httpx.Request],
) -> tuple[httpx.Response, bytes]:
    """Send `request` on the pool `pool_for` picks for its URL, follow up to `max_redirects`
    redirects (`next_hop` checks each), and read at most `max_bytes` of the final body.
    Each hop's request is appended to `sent`, so a failure can name the one that failed."""
    for hop in range(max_redirects + 1):
        sent.append(request)
        http = pool_for(request.url)
        response = await http.send(request, auth=auth, follow_redirects=False, stream=True)
        try:
            if max_redirects and response.status_code in REDIRECT_STATUSES:
                target = next_hop(response, hop, max_redirects)
                request = http.build_request("GET", target, headers={"Accept": "*/*"})
                await drain(response)
                continue
            return response, await read_limited(response, max_bytes)
        finally:
            await response.aclose()
    raise AssertionError("next_hop refuses the hop past max_redirects")
