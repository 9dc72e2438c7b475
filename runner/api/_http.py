"""The HTTP rules the client keeps on every hop: whose requests carry the token, which
redirects a download may follow, how a redirect's connection goes back to the pool.

They are the client's own, above the wire (`_wire.py`: aiohttp for a run, an httpx transport
for the in-process emulator and the tests' fakes), so they hold whichever carries the bytes.
Loopback never goes through a proxy: `_wire.is_loopback`, which the aiohttp wire asks before
it picks a proxy from the environment.
"""

from __future__ import annotations

from typing import Final

from yarl import URL

from runner.api._errors import body_error, read_limited
from runner.api._wire import Answer, Request, Wire, is_loopback
from runner.log import redact_url

__all__ = [
    "REDIRECT_STATUSES",
    "BearerAuth",
    "RedactedUrl",
    "drain",
    "exchange",
    "is_loopback",
    "next_hop",
    "origin",
    "parse_url",
]

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
REDIRECT_BODY_MAX_BYTES: Final = 64 * 1024  # a redirect body read to keep its connection


class BearerAuth:
    """Adds `Authorization: Bearer …` to requests for the API origin, and to nothing else."""

    __slots__ = ("_header", "_origin")

    def __init__(self, token: str, origin: tuple[str, str, int]) -> None:
        self._header = f"Bearer {token}"
        self._origin = origin

    def apply(self, request: Request) -> None:
        """Sign `request` if its URL's origin (scheme, host, port) is the API's."""
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header

    def __repr__(self) -> str:
        return "BearerAuth(token=<hidden>)"


def next_hop(response: Answer, hop: int, max_redirects: int) -> URL:
    """Where a download redirect points, if it may be followed.

    Never more than `max_redirects`, never from https to plain http, never to a scheme
    other than http(s). It carries no token (downloads never do) and no cookies.
    """
    location = response.headers.get("Location")
    if not location:
        raise body_error(response, "a redirect without a Location header", unusable=True)
    if location.startswith(("https://", "http://")):
        target = URL(location)  # absolute: one parse, not join's two and a merge
    else:
        target = response.request.url.join(URL(location))
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


async def drain(response: Answer) -> None:
    """Read a redirect's (small) body, so that its connection goes back to the pool: a
    response closed unread closes its connection, and every download paid a new one."""
    size = 0
    while chunk := await response.read_some():
        size += len(chunk)
        if size > REDIRECT_BODY_MAX_BYTES:
            return  # not worth reading: the connection is closed with the response


def parse_url(text: str) -> URL | None:
    """`text` as a URL, or None if it is not one."""
    try:
        return URL(text)
    except (ValueError, TypeError):
        return None


def origin(url: URL) -> tuple[str, str, int]:
    default_port = 443 if url.scheme == "https" else 80
    return url.scheme, (url.host or "").lower(), url.port or default_port


async def exchange(
    wire: Wire,
    request: Request,
    *,
    auth: BearerAuth | None,
    headers: dict[str, str],
    max_redirects: int,
    max_bytes: int,
    connect_s: float,
    read_s: float,
    sent: list[Request],
) -> tuple[Answer, bytes]:
    """Send `request` on `wire` (signed by `auth` if its origin is the API's), follow up to
    `max_redirects` redirects (`next_hop` checks each; a hop's request carries `headers`
    and never the token), and read at most `max_bytes` of the final body. Each hop's
    request is appended to `sent`, so a failure can name the one that failed."""
    for hop in range(max_redirects + 1):
        sent.append(request)
        if auth is not None:
            auth.apply(request)
        response = await wire.send(request, connect_s=connect_s, read_s=read_s)
        try:
            if max_redirects and response.status_code in REDIRECT_STATUSES:
                target = next_hop(response, hop, max_redirects)
                request = Request("GET", target, dict(headers))
                auth = None  # a hop is never signed
                await drain(response)
                continue
            return response, await read_limited(response, max_bytes)
        finally:
            await response.aclose()
    raise AssertionError("next_hop refuses the hop past max_redirects")
