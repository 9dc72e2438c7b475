"""The orchestration API client: the only module that speaks HTTP to the service.

```python
async with Client() as api:            # token from $CIVITAI_API_TOKEN
    wf = await api.submit([step], external_id=key, tags=["zbatch:run7"])
    wf = await api.get(wf.id, wait_s=30)
    for image in wf.images:
        if image.deliverable:
            data = await api.download(image.url, max_bytes=20_000_000)
```

The token goes to the API origin only (`BearerAuth` checks every request), never to blob or
download URLs; API calls do not follow redirects, so it cannot cross to another origin either.
No message, `str`, `repr` or log line holds it: messages are built from the method, a
redacted URL, the status and the service's text, scrubbed of the token. TLS certificates are
always verified (httpx's verifying context on the aiohttp wire, `_wire.py`; nothing here turns
it off, `tests/e2e/test_hostile_responses.py` greps). The requests go straight to aiohttp
(`_wire.AiohttpWire`); `Client(transport=...)` takes an httpx transport instead (the
in-process emulator, tests' fakes), under the same rules.

Every failure becomes an `ApiError` in one place, `runner/http_errors.py`. Hostile answers
are refused, not trusted: every call has an overall deadline (body included, so a drip that
never ends is cut), bodies have a size limit, an answer that is not JSON or not the expected
shape is retried and, `max_unusable_answers` times in a row for one request, stops the run;
downloads follow at most `MAX_REDIRECTS` redirects, never from https to plain http.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote, urlencode

import httpx
import structlog
from yarl import URL

from runner import __version__
from runner.api import _errors, _http
from runner.api._errors import TOKEN_ENV, body_error, parse_body, scrub, translate
from runner.api._http import REDIRECT_STATUSES, BearerAuth, exchange, origin, parse_url
from runner.api._models import (
    Blob,
    Workflow,
    WorkflowPage,
    WorkflowStatus,
    parse_blob,
    parse_page,
    parse_workflow,
)
from runner.api._wire import AiohttpWire, Answer, HttpxWire, Request, Wire
from runner.errors import ApiError, AuthError, UnusableAnswerError
from runner.log import redact_url

__all__ = ["BASE_URL_ENV", "DEFAULT_BASE_URL", "TOKEN_ENV", "Client", "Download", "translate"]

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL: Final = "https://orchestration.civitai.com"
BASE_URL_ENV: Final = "CIVITAI_API_BASE_URL"
MAX_WAIT_S: Final = 90  # the service times requests out at 100 s (civitai-api.md §1)
DEFAULT_MAX_RESPONSE_BYTES: Final = 32 * 1024 * 1024
DEFAULT_MAX_UNUSABLE_ANSWERS: Final = 5
DEFAULT_MAX_UNKNOWN_STATUS: Final = 10
MAX_REDIRECTS: Final = 5
REACH_WITHIN_S: Final = 10.0  # `check_reachable`: an answer within this, or unreachable

T = TypeVar("T")
# Makes one page's call, retrying it as it sees fit (`Client.iter_workflows`).
PageRetry = Callable[[Callable[[], Awaitable[WorkflowPage]]], Awaitable[WorkflowPage]]

_EXTERNAL_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: safe in a header
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
Params = Sequence[tuple[str, str | int]]


@dataclass(frozen=True)
class Download:
    """The bytes of a blob and the Content-Type the server gave them."""

    content: bytes
    content_type: str


class Client:
    """An async client for Civitai's consumer workflow API; use it as an async context manager.

    `base_url` defaults to `$CIVITAI_API_BASE_URL`, then `DEFAULT_BASE_URL`; `token` to
    `$CIVITAI_API_TOKEN` (missing: `AuthError`). `timeout_s` bounds each connect/read/write;
    a whole call (connect, server wait, body) gets `wait_s + 2 * timeout_s` (downloads
    `4 * timeout_s`). API bodies larger than `max_response_bytes` are refused. An answer that
    cannot be used (`UnusableAnswerError`: not JSON, the wrong shape, too big, a redirect) is
    retryable until `max_unusable_answers` of them come in a row for the same request; that
    one raises a plain `ApiError`, which stops a run. A workflow whose status is none the
    client knows is not terminal (`WorkflowStatus.UNKNOWN`: looked at again); the
    `max_unknown_status`-th such answer in a row for one workflow raises an `ApiError` too.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_unusable_answers: int = DEFAULT_MAX_UNUSABLE_ANSWERS,
        max_unknown_status: int = DEFAULT_MAX_UNKNOWN_STATUS,
    ) -> None:
        base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        url = parse_url(base)
        if url is None or not url.absolute or url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"API base URL {base!r} is not an http:// or https:// URL")
        secret = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
        if not secret:
            raise AuthError(f"no API token: set {TOKEN_ENV} to your Civitai API key")
        if not _TOKEN_RE.fullmatch(secret):
            raise AuthError(
                f"the API token (from {TOKEN_ENV}) holds spaces or non-ASCII characters; "
                "copy the key again"
            )
        self.base_url = base
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.max_unusable_answers = max(1, max_unusable_answers)
        self._unusable: dict[str, int] = {}  # request -> unusable answers in a row
        self.max_unknown_status = max(1, max_unknown_status)
        self._unknown: dict[str, int] = {}  # workflow id -> unknown statuses in a row
        self._secrets = (secret,)
        # Until the service first answers, a failure to connect is `ServiceUnreachable` (a
        # wrong URL, refused, no such host, TLS): not retried. After, it is an outage:
        # `RetryableError`, which the engine waits out (docs/reliability.md, "The network").
        self.answered = False
        self._auth = BearerAuth(secret, origin(url))
        ua = f"zbatch/{__version__}"
        self._api_headers = {"User-Agent": ua, "Accept": "application/json"}
        self._blob_headers = {"User-Agent": ua, "Accept": "*/*"}
        # aiohttp for a run; a given httpx transport (the in-process emulator, a test's fake)
        # for everything, with the same rules above it
        self._wire: Wire = AiohttpWire() if transport is None else HttpxWire(transport)

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; the client cannot send afterwards."""
        await self._wire.aclose()

    async def check_reachable(self, *, within_s: float = REACH_WITHIN_S) -> None:
        """Raise `ServiceUnreachable` unless the service answers (any status) within
        `within_s`: a request for the base URL, without the token and unread."""
        request = Request("GET", URL(self.base_url + "/"), dict(self._blob_headers))
        try:
            async with asyncio.timeout(within_s):
                answer = await self._wire.send(request, connect_s=within_s, read_s=within_s)
                await answer.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise _errors.unreachable(self.base_url, exc, secrets=self._secrets) from exc
        self.answered = True

    # -- workflows -----------------------------------------------------------------------

    async def submit(
        self,
        steps: Sequence[Mapping[str, Any]],
        *,
        external_id: str | None = None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        wait_s: int = 0,
        whatif: bool = False,
        currencies: Sequence[str] | None = None,
    ) -> Workflow:
        """Submit a workflow (`POST /v2/consumer/workflows`); 200 and 202 both return it.

        `external_id` is the idempotency key: a known key returns the existing workflow. It is
        refused together with `whatif=True`, which would burn the key on the preview.
        """
        if external_id is not None and whatif:
            raise ValueError(
                "external_id cannot be sent with whatif=True: the preview would burn the key "
                "(civitai-api.md §11); send the key only on the real submit"
            )
        if external_id is not None and not _EXTERNAL_ID_RE.fullmatch(external_id):
            raise ValueError(
                f"external_id {external_id!r} is not allowed: use 1-128 characters "
                "from A-Z a-z 0-9 _ -"
            )
        if not steps:
            raise ValueError("steps must hold at least one step")
        _check_wait(wait_s)
        body: dict[str, Any] = {"steps": [dict(step) for step in steps]}
        if tags:
            body["tags"] = list(tags)
        if external_id is not None:
            body["externalId"] = external_id
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if currencies is not None:
            body["currencies"] = list(currencies)
        params = (("wait", wait_s), ("whatif", "true" if whatif else "false"))
        return await self._parsed(
            parse_workflow,
            "POST",
            "/v2/consumer/workflows",
            params=params,
            json_body=body,
            wait_s=wait_s,
        )

    async def get(self, workflow_id: str, *, wait_s: int = 0) -> Workflow:
        """Fetch a workflow; with `wait_s` > 0 the service holds the call until it is terminal."""
        _check_wait(wait_s)
        params = (("wait", wait_s),) if wait_s else None
        path = f"/v2/consumer/workflows/{_segment(workflow_id)}"
        wf = await self._parsed(parse_workflow, "GET", path, params=params, wait_s=wait_s)
        self._check_statuses((wf,))
        return wf

    async def query(
        self,
        *,
        tags: Sequence[str],
        cursor: str | None = None,
        take: int = 100,
        ascending: bool = False,
        exclude_failed: bool = False,
    ) -> WorkflowPage:
        """One page of the workflows carrying `tags`; `next` is None on the last page.

        Sends `hideMatureContent=false` (the query's default is true, which drops mature
        images' URLs), so pages carry what `get` does.
        """
        if isinstance(tags, str) or not tags:
            raise ValueError("tags must name at least one tag (a list, not a string)")
        if take < 1:
            raise ValueError(f"take must be at least 1, not {take}")
        params: list[tuple[str, str | int]] = [("tags", t) for t in tags]
        params += [
            ("take", take),
            ("ascending", "true" if ascending else "false"),
            ("excludeFailed", "true" if exclude_failed else "false"),
            ("hideMatureContent", "false"),
        ]
        if cursor:
            params.append(("cursor", cursor))
        items, next_cursor = await self._parsed(
            parse_page, "GET", "/v2/consumer/workflows", params=params
        )
        self._check_statuses(items)
        if len(items) < take:
            next_cursor = None
        return WorkflowPage(items=items, next=next_cursor)

    async def iter_workflows(
        self,
        *,
        tags: Sequence[str],
        take: int = 100,
        ascending: bool = False,
        retry: PageRetry | None = None,
    ) -> AsyncGenerator[Workflow, None]:
        """Every workflow carrying `tags`, newest first (oldest with `ascending`), page by page.

        `retry`, when given, makes each page's call (e.g. `engine.retrying` with a backoff),
        so a transient failure repeats that page, not the walk. A cursor the service hands
        out twice raises `ApiError` rather than loop.
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            call = functools.partial(
                self.query, tags=tags, cursor=cursor, take=take, ascending=ascending
            )
            page = await (retry(call) if retry is not None else call())
            for workflow in page.items:
                yield workflow
            if page.next is None:
                return
            if page.next in seen:
                raise ApiError(f"GET {self.base_url}/v2/consumer/workflows: the cursor repeated")
            seen.add(page.next)
            cursor = page.next

    async def cancel(self, workflow_id: str) -> None:
        """Cancel a workflow (`PUT {"status": "canceled"}`); 204 and 200 are both success."""
        await self._call(
            "PUT",
            f"/v2/consumer/workflows/{_segment(workflow_id)}",
            json_body={"status": "canceled"},
            ok={200, 204},
        )

    # -- blobs ---------------------------------------------------------------------------

    async def blob_url(self, blob_id: str) -> str:
        """The absolute content URL that `GET /v2/consumer/blobs/{id}` redirects to."""
        response, _ = await self._call(
            "GET", f"/v2/consumer/blobs/{_segment(blob_id)}", ok=REDIRECT_STATUSES
        )
        location = response.headers.get("Location")
        if not location:
            raise body_error(response, "a redirect without a Location header")
        return str(response.request.url.join(URL(location)))

    async def refresh_blob(self, blob_id: str) -> Blob:
        """A fresh signed URL for a blob (`POST …/blobs/{id}/refresh`); resets its 30-day TTL."""
        return await self._parsed(
            parse_blob, "POST", f"/v2/consumer/blobs/{_segment(blob_id)}/refresh"
        )

    async def download(self, url: str, *, max_bytes: int) -> Download:
        """GET a blob URL without Authorization, following redirects, at most `max_bytes`.

        401/403 raise `UrlExpiredError` (refresh the blob), 404 `NotFoundError` (not rendered
        yet, or gone); a body shorter or longer than its Content-Length `RetryableError`; a
        body over `max_bytes`, more than `MAX_REDIRECTS` redirects, or a redirect from https
        to plain http (or to anything but http/https) `UnusableAnswerError`. Redirects to
        another host are followed (Civitai's blob URLs point at a CDN), never with the token.
        """
        target = parse_url(url)
        if target is None or target.scheme not in ("http", "https"):
            raise ValueError(f"download URL {redact_url(url)!r} is not http:// or https://")
        request = Request("GET", target, dict(self._blob_headers))
        response, content = await self._send(
            request, auth=None, max_redirects=MAX_REDIRECTS, max_bytes=max_bytes,
            read_s=self.timeout_s, deadline_s=4 * self.timeout_s,
        )  # fmt: skip
        if response.status_code != 200:
            raise translate(response, body=content, secrets=self._secrets, blob_content=True)
        return Download(content=content, content_type=response.headers.get("Content-Type", ""))

    # -- plumbing ------------------------------------------------------------------------

    async def _parsed(
        self,
        parser: Callable[[object], T],
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: object = None,
        wait_s: int = 0,
    ) -> T:
        """One API call whose 2xx body `parser` reads; unusable answers are counted per
        request, and the `max_unusable_answers`-th in a row becomes an `ApiError`."""

        def request_key() -> str:  # only when a streak is counted: not on every call
            text = repr((method, path, str(params), json_body))
            return hashlib.sha256(text.encode()).hexdigest()

        try:
            response, body = await self._call(
                method, path, params=params, json_body=json_body, wait_s=wait_s
            )
            result = parse_body(response, body, parser, self._secrets)
        except UnusableAnswerError as exc:
            digest = request_key()
            streak = self._unusable.pop(digest, 0) + 1
            if streak < self.max_unusable_answers:
                self._unusable[digest] = streak
                raise
            raise ApiError(
                f"{exc}; {streak} unusable answers in a row to this request: zbatch stops "
                "rather than guess (nothing is lost: `zbatch run` resumes the batch)",
                status=exc.status,
                method=exc.method,
                url=exc.url,
                detail=exc.detail,
            ) from exc
        if self._unusable:
            self._unusable.pop(request_key(), None)
        return result

    def _check_statuses(self, workflows: Sequence[Workflow]) -> None:
        """Count, per workflow, the answers in a row whose status is unknown; at
        `max_unknown_status` raise an `ApiError` (stop the run) rather than wait forever."""
        for wf in workflows:
            if wf.id is None:
                continue
            if wf.status is not WorkflowStatus.UNKNOWN:
                self._unknown.pop(wf.id, None)
                continue
            seen = self._unknown.get(wf.id, 0) + 1
            raw = scrub(repr(wf.raw.get("status")), self._secrets)[:80]
            log.warning("unknown_status", workflow=wf.id, status=raw, times=seen)
            if seen < self.max_unknown_status:
                self._unknown[wf.id] = seen
                continue
            self._unknown.pop(wf.id, None)
            raise ApiError(
                f"workflow {wf.id} reported the status {raw}, which zbatch does not know, "
                f"{seen} times in a row: zbatch stops rather than guess whether it is "
                "finished (nothing is lost: `zbatch run` resumes the batch and asks again)",
                detail=f"unknown status {raw}",
            )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: object = None,
        wait_s: int = 0,
        ok: Collection[int] = range(200, 300),
    ) -> tuple[Answer, bytes]:
        """One API call with the token; raises `translate(...)` unless the status is in `ok`."""
        query = f"?{urlencode(params)}" if params else ""  # in the URL, parsed once
        headers = dict(self._api_headers)
        body = None
        if json_body is not None:
            body = _JSON.encode(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = Request(method, URL(self.base_url + path + query), headers, body)
        response, content = await self._send(
            request, auth=self._auth, max_redirects=0, max_bytes=self.max_response_bytes,
            read_s=self.timeout_s + wait_s, deadline_s=wait_s + 2 * self.timeout_s,
        )  # fmt: skip
        if response.status_code not in ok:
            raise translate(response, body=content, secrets=self._secrets)
        return response, content

    async def _send(
        self,
        request: Request,
        *,
        auth: BearerAuth | None,
        max_redirects: int,
        max_bytes: int,
        read_s: float,
        deadline_s: float,
    ) -> tuple[Answer, bytes]:
        """Send, follow up to `max_redirects` redirects (`next_hop` checks each), read at
        most `max_bytes` of the body, all within `deadline_s`: one deadline for the whole
        call, so a body that drips forever is cut, not only a read that stalls."""
        started_s = time.monotonic()
        sent: list[Request] = []  # each hop's request: the last is the one that failed
        try:
            # asyncio's (anyio runs on it): fail_after cost ~7% of a request's CPU
            async with asyncio.timeout(deadline_s):
                response, body = await exchange(
                    self._wire, request, auth=auth, headers=self._blob_headers,
                    max_redirects=max_redirects, max_bytes=max_bytes,
                    connect_s=self.timeout_s, read_s=read_s, sent=sent,
                )  # fmt: skip
        except (httpx.HTTPError, TimeoutError) as exc:
            request = sent[-1] if sent else request  # the hop that failed
            if not self.answered and isinstance(exc, _errors.NO_CONNECTION):
                raise _errors.unreachable(self.base_url, exc, secrets=self._secrets) from exc
            raise translate(
                exc,
                method=request.method,
                url=request.url,
                secrets=self._secrets,
                deadline_s=deadline_s,
            ) from exc
        self.answered, request = True, sent[-1]
        log.debug(
            "api_response",
            method=request.method,
            url=_http.RedactedUrl(request.url),
            status=response.status_code,
            elapsed_ms=round((time.monotonic() - started_s) * 1000),
        )
        return response, body


def _segment(value: str) -> str:
    if not value:
        raise ValueError("an id must not be empty")
    return quote(value, safe="")


def _check_wait(wait_s: int) -> None:
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise ValueError(f"wait_s must be 0-{MAX_WAIT_S} seconds, not {wait_s}")
