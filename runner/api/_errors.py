"""HTTP failures and answers to `ApiError`s: the one place the API client classifies them.

`translate` maps a transport failure (in httpx's vocabulary, which `_wire.as_httpx` maps
aiohttp's to) or a failure status; `parse_body` decodes a success body;
`read_limited` reads a body within a byte limit and checks it against Content-Length.

- Transport: timeouts, connect/read/write errors, a dropped connection (RemoteProtocolError),
  proxy and decoding errors, the per-call deadline -> `RetryableError`. UnsupportedProtocol,
  LocalProtocolError and TooManyRedirects -> `ApiError`: our request is wrong, no retry heals.
- Status: 408, 429, 5xx -> `RetryableError(retry_after_s)`; 402, or a 400/403 whose problem
  names insufficient Buzz/funds -> `FundsError`; other 400 -> `RejectedError(errors)`;
  401/403 -> `AuthError` (`UrlExpiredError` from a signed blob URL); 404 -> `NotFoundError`;
  any other status the call does not expect (3xx, 409, …) -> `ApiError`.
- Body: a 2xx shorter or longer than its Content-Length -> `RetryableError` (a cut
  connection, a lying header). A 2xx that is not JSON, JSON of the wrong shape, a body over
  the byte limit, a redirect where none is expected -> `UnusableAnswerError`, a
  `RetryableError` (a proxy's page, a half-deployed service; every call is safe to repeat:
  a GET, or a submit with its externalId); `Client` turns the Nth in a row for one request
  into an `ApiError` that stops the run (the service has changed, or is broken: guessing
  would be worse than stopping).
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import httpx
from yarl import URL

from runner.api._models import ShapeError, parse_http_date, parse_problem, parse_retry_after
from runner.api._wire import Answer
from runner.errors import (
    ApiError,
    AuthError,
    FundsError,
    NotFoundError,
    RejectedError,
    RetryableError,
    ServiceUnreachable,
    UnusableAnswerError,
    UrlExpiredError,
)
from runner.log import REDACTED, redact, redact_url

T = TypeVar("T")

TOKEN_ENV: Final = "CIVITAI_API_TOKEN"
_FUNDS_RE = re.compile(r"(?i)insufficient\s+(buzz|funds?|balance)|not\s+enough\s+buzz")
_NEVER_HEALS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)
_DETAIL_MAX_CHARS: Final = 500


async def read_limited(response: Answer, max_bytes: int) -> bytes:
    """The body, checked against `max_bytes` and Content-Length (error bodies: truncated)."""
    declared = _content_length(response)
    if response.is_success and declared is not None and declared > max_bytes:
        raise body_error(
            response, f"the body ({declared} bytes) exceeds {max_bytes} bytes", unusable=True
        )
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.read_some():
        size += len(chunk)
        if size > max_bytes:
            if response.is_success:
                raise body_error(response, f"the body exceeds {max_bytes} bytes", unusable=True)
            break  # an error body: its first max_bytes say enough
        chunks.append(chunk)
    else:
        # Content-Length counts bytes on the wire: the body's, unless a Content-Encoding
        # applies (then the wire checks it: aiohttp raises for a body cut short).
        if declared is not None and size != declared and "Content-Encoding" not in response.headers:
            raise body_error(
                response,
                f"the body ended after {size} of {declared} bytes (Content-Length)",
                retryable=True,
            )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_error(
    response: Answer, text: str, *, retryable: bool = False, unusable: bool = False
) -> ApiError:
    """An error about `response`'s body: `unusable` (an `UnusableAnswerError`), `retryable`
    (a `RetryableError`), or else a plain `ApiError`."""
    method, shown = response.request.method, redact_url(response.request.url)
    kind = UnusableAnswerError if unusable else RetryableError if retryable else ApiError
    return kind(
        f"{method} {shown} -> {response.status_code}: {text}",
        status=response.status_code,
        method=method,
        url=shown,
    )


def translate(
    source: Answer | BaseException,
    *,
    method: str = "",
    url: object = "",
    body: bytes = b"",
    secrets: Sequence[str] = (),
    blob_content: bool = False,
    deadline_s: float | None = None,
) -> ApiError:
    """Map a transport failure, or an answer with a failure status, to the right `ApiError`.

    For a response, `method` and `url` come from its request and `body` is its (read) body;
    `blob_content` marks a download from a signed URL (401/403 mean the URL expired).
    `secrets` are scrubbed from every text taken from the service. See the module docstring.
    """
    if not isinstance(source, Answer):
        shown = redact_url(url)
        where: dict[str, Any] = {"method": method, "url": shown}
        if isinstance(source, TimeoutError):
            text = f"no complete answer within the deadline of {deadline_s or 0:g} s"
            return RetryableError(f"{method} {shown}: {text}", **where)
        text = scrub(f"{type(source).__name__}: {source}".rstrip(": "), secrets)
        if isinstance(source, _NEVER_HEALS) or not isinstance(source, httpx.HTTPError):
            return ApiError(f"{method} {shown}: {text}", detail=text, **where)
        return RetryableError(f"{method} {shown}: {text}", detail=text, **where)

    status = source.status_code
    method, shown = source.request.method, redact_url(source.request.url)
    problem = parse_problem(body)
    detail = scrub(problem.text, secrets)
    errors = {scrub(k, secrets): [scrub(m, secrets) for m in v] for k, v in problem.errors.items()}
    message = f"{method} {shown} -> {status} {source.reason_phrase}".rstrip()
    if detail:
        message += f": {detail}"
    if errors:
        message += " [" + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()) + "]"
    kw: dict[str, Any] = {"status": status, "method": method, "url": shown, "detail": detail}
    funds = bool(_FUNDS_RE.search(detail + " " + " ".join(sum(errors.values(), []))))
    if blob_content and status in (401, 403):
        return UrlExpiredError(f"{message} (the signed URL expired: refresh the blob)", **kw)
    if status in (408, 429) or status >= 500:
        # Against the server's own clock (its Date header), so our clock skew does not count.
        now = parse_http_date(source.headers.get("Date")) or datetime.now(UTC)
        retry_after_s = parse_retry_after(source.headers.get("Retry-After"), now=now)
        return RetryableError(message, retry_after_s=retry_after_s, **kw)
    if status == 402 or (status in (400, 403) and funds):
        return FundsError(f"{message} (top up Buzz, or allow other currencies)", **kw)
    if status == 400:
        return RejectedError(message, errors=errors, **kw)
    if status in (401, 403):
        return AuthError(f"{message} (check {TOKEN_ENV} and what the key may do)", **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if 300 <= status < 400:
        location = source.headers.get("Location", "")
        shown_to = redact_url(_join(source, location)) if location else "nowhere"
        return UnusableAnswerError(f"{message} (an unexpected redirect to {shown_to})", **kw)
    return ApiError(message, **kw)


# Failures that mean no connection was made: refused, no such host, TLS, connect timeout.
NO_CONNECTION = (httpx.ConnectError, httpx.ConnectTimeout)


def unreachable(
    base_url: str, source: BaseException, *, secrets: Sequence[str] = ()
) -> ServiceUnreachable:
    """The `ServiceUnreachable` for a service at `base_url` that never answered, with why."""
    shown = redact_url(base_url)
    text = scrub(str(source) or type(source).__name__, secrets)
    low = " ".join([text, *(str(cause) for cause in _causes(source))]).lower()
    if "refused" in low or _errnos(source) & {errno.ECONNREFUSED}:
        why = "connection refused: nothing listens there"
    elif "name or service" in low or "nodename" in low or "getaddrinfo" in low or "resolv" in low:
        why = "no such host: the name does not resolve"
    elif "ssl" in low or "certificate" in low or "tls" in low:
        why = f"the TLS handshake failed ({text})"
    elif isinstance(source, (httpx.TimeoutException, TimeoutError)):
        why = "no connection in time"
    else:
        why = f"{type(source).__name__}: {text}".rstrip(": ")
    return ServiceUnreachable(
        f"cannot reach the orchestration API at {shown}: {why}. Check --api-url or"
        " CIVITAI_API_BASE_URL, the network, a proxy (HTTPS_PROXY) and certificates;"
        " nothing was submitted or spent",
        url=shown,
        detail=text,
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`'s causes and contexts, through exception groups (anyio's connect tries each
    address and raises one error for all of them)."""
    found: list[BaseException] = []
    todo = [exc.__cause__, exc.__context__]
    while todo and len(found) < 20:
        item = todo.pop()
        if item is None or item in found:
            continue
        found.append(item)
        todo += [item.__cause__, item.__context__]
        if isinstance(item, BaseExceptionGroup):
            todo += list(item.exceptions)
    return found


def _errnos(exc: BaseException) -> set[int]:
    return {c.errno for c in _causes(exc) if isinstance(c, OSError) and c.errno is not None}


def parse_body(
    response: Answer,
    body: bytes,
    parser: Callable[[object], T],
    secrets: Sequence[str],
) -> T:
    """Decode a success body with `parser`; not JSON or the wrong shape: `UnusableAnswerError`.
    The URL is redacted for the message only when there is one (not on every answer)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        kind = response.headers.get("Content-Type", "no Content-Type")
        raise _unusable(response, f"the body is not JSON ({kind}, {len(body)} bytes)") from exc
    try:
        return parser(data)
    except ShapeError as exc:
        text = scrub(str(exc), secrets)
        raise _unusable(response, f"unexpected answer: {text}", detail=text) from exc


def _unusable(response: Answer, what: str, **detail: Any) -> UnusableAnswerError:
    method, shown = response.request.method, redact_url(response.request.url)
    return UnusableAnswerError(
        f"{method} {shown} -> {response.status_code}: {what}",
        status=response.status_code, method=method, url=shown, **detail,
    )  # fmt: skip


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = redact(text)
    if len(text) > _DETAIL_MAX_CHARS:
        text = text[: _DETAIL_MAX_CHARS - 1] + "…"
    return text


def _join(response: Answer, location: str) -> object:
    try:
        return response.request.url.join(URL(location))
    except ValueError:
        return location


def _content_length(response: Answer) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
