"""The wire under the client: one request out, one answer back, nothing decided here.

`Client` keeps its rules itself (`_http.py`: the token's origin, the redirect hops, the
deadline, the body limits) and hands each hop to a wire:

- `AiohttpWire`, the one a run uses: an `aiohttp.ClientSession` made on first use (inside the
  event loop) with no cookie jar, certificates verified (httpx's context: certifi, or
  `SSL_CERT_FILE`/`SSL_CERT_DIR`), no connection limit (the engine's slots are the limit),
  redirects never followed by aiohttp, and the proxy picked here per host: loopback never
  through one, any other host through `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` unless
  `NO_PROXY` names it (aiohttp's own `trust_env` stays off: it would also read `~/.netrc`).
  httpx's request and response objects around aiohttp cost ~1.5-2x aiohttp's own CPU per
  call (docs/performance.md, lever e).
- `HttpxWire`, for an httpx transport given to `Client(transport=...)`: the in-process
  emulator (`runner.emulator.EmulatorTransport`) and the tests' `httpx.MockTransport` fakes.

Both speak httpx's exception vocabulary (`httpx.ConnectError`, `ReadTimeout`, ...), which
`_errors.translate` classifies: aiohttp's failures are mapped to it once, at this boundary
(`as_httpx`), with aiohttp's own text and the aiohttp error as the cause.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpWire", "Answer", "HttpxWire", "Request", "Wire", "as_httpx", "is_loopback"]


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


class Request:
    """One hop's request: the client's own, cheaper than httpx's (no header model, one URL
    parse). `headers` is a plain dict the client builds fresh for each request."""

    __slots__ = ("body", "headers", "method", "url")

    def __init__(
        self, method: str, url: URL, headers: dict[str, str], body: bytes | None = None
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Request {self.method}>"  # no URL: it may hold a signature


class Answer:
    """One answer: status, reason, headers (case-insensitive `get` and `in`), the request it
    answers, and its body, read once with `read_some` (b"" at the end), then `aclose`d."""

    __slots__ = ("headers", "reason_phrase", "request", "status_code")

    def __init__(
        self, request: Request, status_code: int, reason_phrase: str, headers: Mapping[str, str]
    ) -> None:
        self.request = request
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def read_some(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class Wire(Protocol):
    async def send(self, request: Request, *, connect_s: float, read_s: float) -> Answer: ...

    async def aclose(self) -> None: ...


# -- aiohttp -------------------------------------------------------------------------------


def as_httpx(exc: aiohttp.ClientError) -> httpx.TransportError:
    """aiohttp's failure as the httpx error `translate` classifies (same text, not chained:
    the caller raises it `from exc`). Connect failures (refused, no such host, TLS, connect
    timeout) are `ConnectError`/`ConnectTimeout`: before the service first answered they
    mean it is out of reach (`ServiceUnreachable`)."""
    text = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        kind = httpx.ProxyError
    elif isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientSSLError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # dropped, or an answer that is not HTTP
    else:  # the body cut short (ClientPayloadError), a reset: a read that failed
        kind = httpx.ReadError
    return kind(text)


class AiohttpAnswer(Answer):
    __slots__ = ("_response",)

    def __init__(self, request: Request, response: aiohttp.ClientResponse) -> None:
        super().__init__(request, response.status, response.reason or "", response.headers)
        self._response = response

    async def read_some(self) -> bytes:
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise as_httpx(exc) from exc

    async def aclose(self) -> None:
        # read to the end: the connection goes back to the pool; else it is closed
        self._response.release()


class AiohttpWire:
    """Requests on one aiohttp session (see the module docstring); `trust_env=False` reads
    no proxy from the environment."""

    def __init__(self, *, trust_env: bool = True) -> None:
        # httpx's verifying context (certifi or SSL_CERT_FILE/DIR), as before this wire
        self.ssl_context: ssl.SSLContext = httpx.create_ssl_context()
        self._proxies = urllib.request.getproxies_environment() if trust_env else {}
        self._proxy_of: dict[tuple[str, str], tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.ssl_context),
            cookie_jar=aiohttp.DummyCookieJar(),  # no request carries a cookie
            trust_env=False,  # the proxy is ours to pick (`proxy_for`); no ~/.netrc
        )
        return self._session

    def proxy_for(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy for `url`'s host, and its credentials: none for loopback, else the
        environment's for the scheme (or ALL_PROXY) unless NO_PROXY names the host."""
        key = (url.scheme, url.host or "")
        found = self._proxy_of.get(key)
        if found is None:
            found = (None, None)
            proxy = self._proxies.get(key[0]) or self._proxies.get("all")
            if proxy and not is_loopback(key[1]) and not _bypassed(key[1], self._proxies):
                parsed = URL(proxy if "://" in proxy else f"http://{proxy}")
                auth = aiohttp.BasicAuth.from_url(parsed)
                found = (parsed.with_user(None), auth)
            self._proxy_of[key] = found
        return found

    def _timeout(self, connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get((connect_s, read_s))
        if timeout is None:
            # no total: the client's own deadline bounds the whole call (`Client._send`)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)
            self._timeouts[connect_s, read_s] = timeout
        return timeout

    async def send(self, request: Request, *, connect_s: float, read_s: float) -> Answer:
        session = self._session or self._open()
        proxy, proxy_auth = self.proxy_for(request.url)
        try:
            response = await session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
                timeout=self._timeout(connect_s, read_s),
            )
        except aiohttp.ClientError as exc:
            raise as_httpx(exc) from exc
        return AiohttpAnswer(request, response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _bypassed(host: str, proxies: Mapping[str, str]) -> bool:
    """NO_PROXY names `host` (urllib's reading of it: suffixes, `*`, host:port)."""
    if "no" not in proxies:
        return False
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return bool(bypass(host, dict(proxies)))


# -- an httpx transport (the in-process emulator, the tests' fakes) ----------------------


class HttpxAnswer(Answer):
    __slots__ = ("_chunks", "_response")

    def __init__(self, request: Request, response: httpx.Response) -> None:
        super().__init__(request, response.status_code, response.reason_phrase, response.headers)
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()  # decoded, like aiohttp's

    async def read_some(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxWire:
    """Requests through an httpx transport (`Client(transport=...)`): each `Request` becomes
    an `httpx.Request` with the same method, URL, headers and body."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(self, request: Request, *, connect_s: float, read_s: float) -> Answer:
        timeout = {"connect": connect_s, "read": read_s, "write": connect_s, "pool": connect_s}
        sent = httpx.Request(
            request.method,
            str(request.url),
            headers=request.headers,
            content=request.body,
            extensions={"timeout": timeout},
        )
        response = await self.transport.handle_async_request(sent)
        response.request = sent
        return HttpxAnswer(request, response)

    async def aclose(self) -> None:
        await self.transport.aclose()
