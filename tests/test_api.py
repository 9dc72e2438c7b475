"""Tests for runner/api.py: requests sent, answers parsed, failures classified, token kept."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
import structlog
import yarl

from runner.api._client import Client
from runner.api._models import WorkflowStatus, parse_retry_after
from runner.api._wire import Request
from runner.errors import (
    ApiError,
    AuthError,
    FundsError,
    NotFoundError,
    RejectedError,
    RetryableError,
    UnusableAnswerError,
    UrlExpiredError,
)
from runner.log import redact_url

pytestmark = pytest.mark.anyio

TOKEN = "civ_T0KEN_s3cr3t_9f8e7d6c5b4a"
BASE = "https://orchestration.test"
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)

SUCCEEDED: dict[str, Any] = {
    "id": "8437128-20250101120000123",
    "createdAt": "2025-01-01T12:00:00.1234567Z",
    "completedAt": "2025-01-01T12:00:07.5Z",
    "status": "succeeded",
    "externalId": "run7-c000123-a1",
    "tags": ["zbatch:run7"],
    "metadata": {},
    "arguments": {},
    "callbacks": [],
    "tips": {"civitai": 0, "creators": 0},
    "upgradeMode": "manual",
    "currencies": ["blue"],
    "forceRefunded": False,
    "cost": {
        "base": 0,
        "factors": {"base": 8, "quantity": 2},
        "tips": {"civitai": 0, "creators": 0},
        "total": 16,
    },
    "transactions": {"list": [{"type": "debit", "amount": 16, "id": "tx1", "accountType": "blue"}]},
    "steps": [
        {
            "$type": "imageGen",
            "name": "$0",
            "priority": "normal",
            "status": "succeeded",
            "metadata": {},
            "timeout": "00:20:00",
            "input": {"engine": "sdcpp", "ecosystem": "zImage", "model": "turbo"},
            "jobs": [{"id": "job-a", "status": "succeeded", "cost": 1}],
            "output": {
                "images": [
                    {
                        "type": "image",
                        "id": "E8S6FBPH50ENNVF2PD5XRBPXB0.jpeg",
                        "available": True,
                        "url": "https://orchestration-new.test/v2/consumer/blobs/E8S6.jpeg?sig=abc",
                        "urlExpiresAt": "2025-01-01T13:00:00Z",
                        "jobId": "job-a",
                        "nsfwLevel": "pg",
                        "width": 1024,
                        "height": 1024,
                    },
                    {
                        "type": "image",
                        "id": "F9T7GCQJ61FPPWG3QE6YSCQYC1.jpeg",
                        "available": True,
                        "url": "https://orchestration-new.test/v2/consumer/blobs/F9T7.jpeg?sig=def",
                        "jobId": "job-b",
                        "blockedReason": "moderation",
                        "width": 1024,
                        "height": 1024,
                    },
                ],
                "errors": None,
            },
        }
    ],
}


def _failed_refunded() -> dict[str, Any]:
    wf = copy.deepcopy(SUCCEEDED)
    wf["status"] = "failed"
    wf["cost"]["total"] = 0
    wf["transactions"]["list"] = [
        {"type": "debit", "amount": 60, "accountType": "blue"},
        {"type": "credit", "amount": 60, "accountType": "blue"},
    ]
    output = wf["steps"][0]["output"]
    output["images"] = [dict(output["images"][0], available=False)]
    output["errors"] = ["Could not generate images"]
    return wf


def client_for(handler: Handler, **kw: Any) -> Client:
    return Client(base_url=BASE, token=TOKEN, transport=httpx.MockTransport(handler), **kw)


def refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no request may be sent")


def answer(response: httpx.Response) -> Handler:
    return lambda request: response


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "https://tools.ietf.org/html/rfc9110", "title": title, "status": status,
            "detail": detail, **extra}  # fmt: skip


async def call_get(handler: Handler) -> ApiError:
    with anyio.fail_after(5):
        async with client_for(handler) as api:
            with pytest.raises(ApiError) as info:
                await api.get("wf-1")
    return info.value


# -- classification ------------------------------------------------------------------------

VALIDATION = problem(
    400,
    "One or more validation errors occurred.",
    errors={"steps[0].input.width": ["must be between 64 and 2048"]},
)
DATE = "Wed, 01 Jan 2025 12:00:00 GMT"

CASES = [
    # status, body, headers, class, retry_after_s, errors, text in message
    (429, problem(429, "Too Many Requests"), {"Retry-After": "7"}, RetryableError, 7.0, None,
     "429"),
    (429, problem(429, "Too Many Requests"), {"Retry-After": "Wed, 01 Jan 2025 12:00:30 GMT",
     "Date": DATE}, RetryableError, 30.0, None, "Too Many Requests"),
    (503, "<html><body>Service Unavailable</body></html>", {"Retry-After": "120"},
     RetryableError, 120.0, None, "Service Unavailable"),
    (500, problem(500, "Internal Server Error", "boom"), {}, RetryableError, None, None, "boom"),
    (502, "", {}, RetryableError, None, None, "502"),
    (408, "", {}, RetryableError, None, None, "408"),
    (400, VALIDATION, {}, RejectedError, None, VALIDATION["errors"],
     "steps[0].input.width: must be between 64 and 2048"),
    (400, problem(400, "Bad Request", "Insufficient Buzz to run this workflow"), {}, FundsError,
     None, None, "Insufficient Buzz"),
    (400, problem(400, "Insufficient funds"), {}, FundsError, None, None, "Insufficient funds"),
    (402, problem(402, "Payment Required"), {}, FundsError, None, None, "402"),
    (403, problem(403, "Forbidden", "Insufficient Buzz: costs 8, have 0"), {}, FundsError, None,
     None, "costs 8, have 0"),
    (401, problem(401, "Unauthorized"), {}, AuthError, None, None, "CIVITAI_API_TOKEN"),
    (403, "You are not permitted to use this recipe", {}, AuthError, None, None,
     "not permitted to use this recipe"),
    (404, problem(404, "Not Found", "Workflow wf-1 not found"), {}, NotFoundError, None, None,
     "wf-1 not found"),
    (409, problem(409, "Conflict"), {}, ApiError, None, None, "409 Conflict"),
    (307, "", {"Location": "https://elsewhere.test/"}, UnusableAnswerError, None, None,
     "unexpected redirect to https://elsewhere.test/"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after_s", "errors", "text"), CASES
)
async def test_status_is_classified(status, body, headers, kind, retry_after_s, errors, text):
    """Each status maps to one error class, carrying Retry-After, the errors map and the text."""
    if isinstance(body, dict):
        response = httpx.Response(status, json=body, headers=headers)
    else:
        response = httpx.Response(status, text=json.dumps(body) if status == 403 else body,
                                  headers=headers)  # fmt: skip
    error = await call_get(answer(response))
    assert type(error) is kind
    assert error.status == status
    assert error.method == "GET"
    assert error.url == f"{BASE}/v2/consumer/workflows/wf-1"
    assert str(error).startswith(f"GET {BASE}/v2/consumer/workflows/wf-1 -> {status}")
    assert text in str(error)
    if kind is RetryableError:
        assert isinstance(error, RetryableError)
        assert error.retry_after_s == retry_after_s
    if errors is not None:
        assert isinstance(error, RejectedError)
        assert error.errors == errors


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectTimeout("timed out"),
        httpx.ReadTimeout("timed out"),
        httpx.PoolTimeout("no connection"),
        httpx.ReadError("reset by peer"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
)
async def test_transport_failure_is_retryable(exc):
    """Connection, timeout and dropped-connection failures are RetryableError, chained,
    once the service has answered (before, failing to connect is `ServiceUnreachable`:
    tests/test_world.py)."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(200, json=SUCCEEDED)  # the service has answered once
        raise exc

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            await api.get("wf-0")
            with pytest.raises(ApiError) as info:
                await api.get("wf-1")
    error = info.value
    assert type(error) is RetryableError
    assert error.status is None
    assert error.__cause__ is exc
    assert type(exc).__name__ in str(error)


async def test_unsupported_protocol_is_not_retryable():
    """A failure that no retry can heal (our request is malformed) is a plain ApiError."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'")

    error = await call_get(handler)
    assert type(error) is ApiError


async def test_overall_deadline_is_retryable():
    """A server that never finishes the answer hits the per-call deadline: RetryableError."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError

    with anyio.fail_after(5):
        async with client_for(handler, timeout_s=0.01) as api:
            with pytest.raises(RetryableError, match="deadline"):
                await api.get("wf-1")


@pytest.mark.parametrize(
    ("response", "text"),
    [
        (httpx.Response(200, text="<html>gateway</html>"), "the body is not JSON"),
        (httpx.Response(200, json=["not", "a", "workflow"]), "workflow is not a JSON object"),
        (httpx.Response(200, json={"id": "x"}), "workflow has no string 'status'"),
        (httpx.Response(200, json={"status": "succeeded", "steps": "nope"}),
         "workflow.steps is not a JSON array"),
    ],
)  # fmt: skip
async def test_bad_success_body(response, text):
    """Not JSON on a 2xx (a proxy page) and JSON of the wrong shape are unusable answers:
    retryable, saying what was wrong."""
    error = await call_get(answer(response))
    assert type(error) is UnusableAnswerError
    assert error.retryable
    assert "200" in str(error)
    assert text in str(error)


async def test_unusable_answers_in_a_row_stop_at_the_limit():
    """The Nth unusable answer in a row to the same request is a plain ApiError (stop the
    run); a good answer between resets the count, and other requests count apart."""
    bad = {"wf-1": 0}
    good = httpx.Response(200, json=SUCCEEDED)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/wf-1") and bad["wf-1"] > 0:
            bad["wf-1"] -= 1
            return httpx.Response(200, json={"data": []})
        return good

    with anyio.fail_after(5):
        async with client_for(handler, max_unusable_answers=3) as api:
            bad["wf-1"] = 2
            for _ in range(2):
                with pytest.raises(UnusableAnswerError):
                    await api.get("wf-1")
            await api.get("wf-1")  # good: the streak resets
            bad["wf-1"] = 10
            for _ in range(2):
                with pytest.raises(UnusableAnswerError):
                    await api.get("wf-1")
                await api.get("wf-2")  # another request does not reset wf-1's streak
            with pytest.raises(ApiError) as info:
                await api.get("wf-1")
    assert type(info.value) is ApiError
    assert not info.value.retryable
    assert "3 unusable answers in a row" in str(info.value)
    assert "zbatch run` resumes" in str(info.value)


async def test_short_body_against_content_length_is_retryable():
    """A 2xx body shorter than its Content-Length is a cut connection: RetryableError."""
    response = httpx.Response(200, content=b'{"status":', headers={"Content-Length": "500"})
    error = await call_get(answer(response))
    assert type(error) is RetryableError
    assert "10 of 500 bytes" in str(error)


async def test_api_body_over_limit_is_refused():
    """An API answer larger than max_response_bytes is unusable, not a memory blow-up."""
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=SUCCEEDED)),
                              max_response_bytes=100) as api:  # fmt: skip
            with pytest.raises(UnusableAnswerError, match="exceeds 100 bytes"):
                await api.get("wf-1")


def test_parse_retry_after_forms():
    """Retry-After is delay-seconds or an HTTP date; a past date is 0, garbage is None."""
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("15", now=now) == 15.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:01:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-3", now=now) is None
    assert parse_retry_after(None, now=now) is None


def test_redact_url_strips_signatures_and_content_tokens():
    """Signatures, tokens and the secret tail of /blobs/content/ never appear in a shown URL."""
    shown = redact_url("https://u:p@x.test/v2/consumer/blobs/A.jpeg?sig=S1&width=5&token=T2")
    assert (
        shown == "https://x.test/v2/consumer/blobs/A.jpeg?sig=[REDACTED]&width=5&token=[REDACTED]"
    )
    assert redact_url("https://x.test/v2/consumer/blobs/content/eyJhbGciOi?X-Amz-Signature=z") == (
        "https://x.test/v2/consumer/blobs/content/[REDACTED]"
    )


# -- the token -------------------------------------------------------------------------------


async def test_token_is_sent_on_api_calls():
    """Every API call carries `Authorization: Bearer <token>`."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        if request.method == "PUT":
            return httpx.Response(204)
        if request.url.path.endswith("/refresh"):
            return httpx.Response(200, json={"type": "image", "id": "B", "available": True})
        return httpx.Response(200, json=SUCCEEDED)

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            await api.submit([{"$type": "imageGen", "input": {}}], external_id="k1")
            await api.get("wf-1")
            await api.cancel("wf-1")
            await api.refresh_blob("B")
    assert seen == [f"Bearer {TOKEN}"] * 4


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/v2/consumer/blobs/E8S6.jpeg?sig=abc",  # same origin as the API
        "https://blobs.other.test/E8S6.jpeg?sig=abc",  # another host
    ],
)
async def test_token_is_not_sent_to_download_urls(url):
    """Downloads never carry the token, even to the API's own host, nor after a redirect."""
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        if "content" not in request.url.path:
            return httpx.Response(308, headers={"Location": f"{BASE}/v2/consumer/blobs/content/q"})
        return httpx.Response(200, content=b"\xff\xd8jpeg", headers={"Content-Type": "image/jpeg"})

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            result = await api.download(url, max_bytes=1000)
    assert result.content == b"\xff\xd8jpeg"
    assert result.content_type == "image/jpeg"
    assert len(seen) == 2
    assert all(auth is None for _, auth in seen)


async def test_api_redirect_to_another_host_is_not_followed():
    """An API call answered with a redirect elsewhere stops there: the token never leaves."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(307, headers={"Location": "https://evil.test/steal"})

    error = await call_get(handler)
    assert type(error) is UnusableAnswerError  # retried like a 5xx, never followed
    assert hosts == ["orchestration.test"]


async def test_auth_only_for_the_api_origin():
    """The per-call auth adds the header for the API origin only (scheme, host and port)."""
    api = client_for(answer(httpx.Response(200)))
    for url, expected in [
        (f"{BASE}/v2/x", f"Bearer {TOKEN}"),
        ("https://orchestration.test:443/v2/x", f"Bearer {TOKEN}"),
        ("http://orchestration.test/v2/x", None),
        ("https://orchestration.test:8443/v2/x", None),
        ("https://other.test/v2/x", None),
    ]:
        request = Request("GET", yarl.URL(url), {})
        api._auth.apply(request)
        assert request.headers.get("Authorization") == expected, url
    await api.aclose()


async def test_token_absent_from_errors_reprs_and_logs():
    """Echoed in an error body or not, the token is in no message, str, repr or log event."""

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = request.headers["Authorization"]
        if request.url.path.endswith("/wf-400"):
            body = problem(400, "Bad", f"header was {echoed}", errors={"auth": [echoed]})
            return httpx.Response(400, json=body)
        if request.url.path.endswith("/wf-401"):
            return httpx.Response(401, text=f"invalid token {TOKEN}")
        if request.url.path.endswith("/wf-500"):
            return httpx.Response(500, json=problem(500, "Oops", f"token={TOKEN}"))
        raise httpx.ConnectError(f"failed with {echoed}")

    errors: list[ApiError] = []
    with structlog.testing.capture_logs() as logs, anyio.fail_after(5):
        async with client_for(handler) as api:
            assert TOKEN not in repr(api)
            assert repr(api) == f"Client(base_url='{BASE}')"
            for wid in ("wf-400", "wf-401", "wf-500", "wf-conn"):
                with pytest.raises(ApiError) as info:
                    await api.get(wid)
                errors.append(info.value)
    assert [type(e) for e in errors] == [RejectedError, AuthError, RetryableError, RetryableError]
    for error in errors:
        text = " ".join([str(error), repr(error), error.detail, error.url, str(error.args)])
        if isinstance(error, RejectedError):
            text += json.dumps(error.errors)
        assert TOKEN not in text
        assert "[REDACTED]" in text
    assert TOKEN not in repr(logs)


async def test_missing_token_names_the_variable(monkeypatch):
    """Without a token the client refuses to start and says which variable to set."""
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    with pytest.raises(AuthError, match="CIVITAI_API_TOKEN"):
        Client(base_url=BASE)
    with pytest.raises(AuthError, match="CIVITAI_API_TOKEN"):
        Client(base_url=BASE, token="   ")


async def test_env_supplies_token_and_base_url(monkeypatch):
    """CIVITAI_API_TOKEN and CIVITAI_API_BASE_URL configure a client built with no arguments."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    monkeypatch.setenv("CIVITAI_API_BASE_URL", "http://127.0.0.1:8765/")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url} {request.headers['Authorization']}")
        return httpx.Response(200, json=SUCCEEDED)

    with anyio.fail_after(5):
        async with Client(transport=httpx.MockTransport(handler)) as api:
            assert repr(api) == "Client(base_url='http://127.0.0.1:8765')"
            await api.get("wf-1")
    assert seen == [f"http://127.0.0.1:8765/v2/consumer/workflows/wf-1 Bearer {TOKEN}"]


# -- parsing ---------------------------------------------------------------------------------


async def test_succeeded_workflow_is_parsed():
    """Images with their index, cost, debits → charged Buzz and timestamps come out typed."""
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=SUCCEEDED))) as api:
            wf = await api.get("wf-1")
    assert wf.id == "8437128-20250101120000123"
    assert wf.status is WorkflowStatus.SUCCEEDED
    assert wf.is_terminal
    assert wf.external_id == "run7-c000123-a1"
    assert wf.tags == ("zbatch:run7",)
    assert wf.created_at == datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert wf.completed_at == datetime(2025, 1, 1, 12, 0, 7, 500000, tzinfo=UTC)
    assert (wf.cost_total, wf.debited_buzz, wf.credited_buzz, wf.charged_buzz) == (16, 16, 0, 16)
    assert wf.insufficient_buzz is None
    assert wf.errors == ()
    first, second = wf.images
    assert (first.index, first.blob_id, first.width, first.height) == (
        0, "E8S6FBPH50ENNVF2PD5XRBPXB0.jpeg", 1024, 1024)  # fmt: skip
    assert first.url_expires_at == datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
    assert (first.nsfw_level, first.job_id, first.blocked_reason) == ("pg", "job-a", None)
    assert first.deliverable
    assert second.index == 1
    assert second.blocked_reason == "moderation"
    assert not second.deliverable
    assert wf.raw == SUCCEEDED


async def test_failed_refunded_workflow_charges_nothing():
    """Debit 60 and credit 60 net to 0 charged; output errors and unavailable images kept."""
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=_failed_refunded()))) as api:
            wf = await api.get("wf-1")
    assert wf.status is WorkflowStatus.FAILED
    assert (wf.debited_buzz, wf.credited_buzz, wf.charged_buzz, wf.cost_total) == (60, 60, 0, 0)
    assert wf.errors == ("Could not generate images",)
    assert [image.deliverable for image in wf.images] == [False]


async def test_unknown_status_is_not_terminal():
    """A status the client does not know parses as UNKNOWN, which is not terminal."""
    body = dict(SUCCEEDED, status="pending")
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(202, json=body))) as api:
            wf = await api.get("wf-1")
    assert wf.status is WorkflowStatus.UNKNOWN
    assert not wf.is_terminal
    assert wf.raw["status"] == "pending"


def test_only_final_statuses_are_terminal():
    """succeeded, failed, expired and canceled are terminal; nothing else is."""
    terminal = {s.value for s in WorkflowStatus if s.is_terminal}
    assert terminal == {"succeeded", "failed", "expired", "canceled"}


async def test_whatif_preview_is_parsed_and_sent():
    """A whatif sends whatif=true and no externalId; the answer has no id and the Buzz flags."""
    preview = {
        "id": None,
        "status": "unassigned",
        "createdAt": "2025-01-01T12:00:00Z",
        "tags": [],
        "steps": [{"$type": "imageGen", "name": "$0", "status": "unassigned",
                   "jobs": [{"id": "j", "status": "unassigned", "cost": 1,
                             "queuePosition": {"support": "available", "precedingJobs": 3}}]}],
        "cost": {"base": 0, "tips": {"civitai": 0, "creators": 0}, "total": 39},
        "transactions": {"list": [{"type": "debit", "amount": 27, "accountType": "blue"},
                                  {"type": "debit", "amount": 12, "accountType": "green"}],
                         "insufficientBuzz": True},
    }  # fmt: skip
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=preview)

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            wf = await api.submit([{"$type": "imageGen", "input": {}}], whatif=True)
    assert wf.id is None
    assert wf.insufficient_buzz is True
    assert (wf.cost_total, wf.debited_buzz, wf.charged_buzz) == (39, 39, 39)
    assert wf.images == ()
    query = parse_qs(sent[0].url.query.decode())
    assert query == {"wait": ["0"], "whatif": ["true"]}
    assert "externalId" not in json.loads(sent[0].content)


# -- requests --------------------------------------------------------------------------------


async def test_submit_sends_the_template():
    """submit POSTs steps, tags, externalId, metadata and currencies; 202 is accepted."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, json=dict(SUCCEEDED, status="scheduled"))

    step = {"$type": "imageGen", "input": {"engine": "sdcpp", "prompt": "a cat", "seed": 42}}
    with anyio.fail_after(5):
        async with client_for(handler) as api:
            wf = await api.submit([step], external_id="run7-c000123-a1", tags=["zbatch:run7"],
                                  metadata={"cell": "c000123"}, wait_s=30,
                                  currencies=["blue", "green"])  # fmt: skip
    assert wf.status is WorkflowStatus.SCHEDULED
    request = sent[0]
    assert (request.method, request.url.path) == ("POST", "/v2/consumer/workflows")
    assert parse_qs(request.url.query.decode()) == {"wait": ["30"], "whatif": ["false"]}
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "steps": [step],
        "tags": ["zbatch:run7"],
        "externalId": "run7-c000123-a1",
        "metadata": {"cell": "c000123"},
        "currencies": ["blue", "green"],
    }


async def test_submit_refuses_external_id_with_whatif():
    """external_id + whatif is refused locally, before any request is sent."""
    api = client_for(refuse)
    with pytest.raises(ValueError, match="burn the key"):
        await api.submit([{"$type": "imageGen"}], external_id="k1", whatif=True)
    await api.aclose()


@pytest.mark.parametrize("external_id", ["", "has space", "slash/no", "ü", "x" * 129, "a.b"])
async def test_submit_validates_external_id(external_id):
    """externalId must be 1–128 characters of A-Z a-z 0-9 _ -; the message says so."""
    api = client_for(refuse)
    with pytest.raises(ValueError, match="1-128 characters"):
        await api.submit([{"$type": "imageGen"}], external_id=external_id)
    await api.aclose()


async def test_submit_accepts_a_128_character_external_id():
    """The longest allowed key goes through."""
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=SUCCEEDED))) as api:
            await api.submit([{"$type": "imageGen"}], external_id="A-_9" * 32)


async def test_get_long_polls_with_wait():
    """get(wait_s=N) sends ?wait=N and accepts the 202 of a still-running workflow."""
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(202, json=dict(SUCCEEDED, status="processing"))

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            wf = await api.get("8437128-2025", wait_s=60)
            await api.get("id/with?odd")
    assert wf.status is WorkflowStatus.PROCESSING
    assert urls == [
        f"{BASE}/v2/consumer/workflows/8437128-2025?wait=60",
        f"{BASE}/v2/consumer/workflows/id%2Fwith%3Fodd",
    ]


async def test_query_pages_across_three_pages():
    """iter_workflows follows cursors across pages; tags repeat the key; a short page ends it."""
    pages = {
        None: ([f"w{i}" for i in range(2)], "c1"),
        "c1": ([f"w{i}" for i in range(2, 4)], "c2"),
        "c2": (["w4"], "c3"),  # shorter than take: the end, whatever `next` says
    }
    queries: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        queries.append(query)
        ids, next_cursor = pages[query.get("cursor", [None])[0]]
        items = [dict(SUCCEEDED, id=wid) for wid in ids]
        return httpx.Response(200, json={"next": next_cursor, "items": items})

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            ids = [wf.id async for wf in api.iter_workflows(tags=["zbatch:run7", "b"], take=2)]
    assert ids == ["w0", "w1", "w2", "w3", "w4"]
    assert [q.get("cursor") for q in queries] == [None, ["c1"], ["c2"]]
    assert all(q["tags"] == ["zbatch:run7", "b"] for q in queries)
    assert queries[0]["take"] == ["2"]
    assert queries[0]["hideMatureContent"] == ["false"]


@pytest.mark.parametrize("next_value", ["", None, "absent"])
async def test_query_empty_next_is_the_end(next_value):
    """An empty, null or absent `next` ends paging even after a full page."""
    body: dict[str, Any] = {"items": [SUCCEEDED]}
    if next_value != "absent":
        body["next"] = next_value
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=body))) as api:
            page = await api.query(tags=["t"], take=1)
    assert len(page.items) == 1
    assert page.next is None


async def test_query_passes_its_options():
    """ascending and exclude_failed reach the query string."""
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(parse_qs(request.url.query.decode()))
        return httpx.Response(200, json={"next": "", "items": []})

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            await api.query(tags=["t"], cursor="abc", take=50, ascending=True, exclude_failed=True)
    assert seen[0] == {"tags": ["t"], "take": ["50"], "ascending": ["true"],
                       "excludeFailed": ["true"], "hideMatureContent": ["false"],
                       "cursor": ["abc"]}  # fmt: skip


async def test_repeating_cursor_is_an_error():
    """A cursor that does not advance stops paging with an ApiError instead of looping."""
    body = {"next": "same", "items": [SUCCEEDED]}
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(200, json=body))) as api:
            with pytest.raises(ApiError, match="cursor repeated"):
                async for _ in api.iter_workflows(tags=["t"], take=1):
                    pass


@pytest.mark.parametrize("status", [200, 204])
async def test_cancel_puts_canceled(status):
    """cancel PUTs {"status": "canceled"}; 204 and 200 both succeed."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status, json=SUCCEEDED) if status == 200 else httpx.Response(204)

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            await api.cancel("wf-1")
    assert (sent[0].method, sent[0].url.path) == ("PUT", "/v2/consumer/workflows/wf-1")
    assert json.loads(sent[0].content) == {"status": "canceled"}


@pytest.mark.parametrize(
    ("status", "location", "expected"),
    [
        (308, "https://cdn.test/v2/consumer/blobs/content/tok", "https://cdn.test/v2/consumer/blobs/content/tok"),
        (301, "/v2/consumer/blobs/content/tok", f"{BASE}/v2/consumer/blobs/content/tok"),
    ],
)  # fmt: skip
async def test_blob_url_returns_the_redirect_target(status, location, expected):
    """blob_url does not follow the redirect; it returns the Location, made absolute."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(status, headers={"Location": location})

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            assert await api.blob_url("E8S6.jpeg") == expected
    assert seen == [f"{BASE}/v2/consumer/blobs/E8S6.jpeg"]


async def test_blob_url_404_is_not_found():
    """An unknown blob is NotFoundError."""
    with anyio.fail_after(5):
        async with client_for(answer(httpx.Response(404, json=problem(404, "Not Found")))) as api:
            with pytest.raises(NotFoundError):
                await api.blob_url("nope")


async def test_refresh_blob_returns_a_fresh_url():
    """refresh_blob POSTs …/refresh and parses the Blob."""
    sent: list[httpx.Request] = []
    body = {
        "type": "image",
        "id": "E8S6.jpeg",
        "available": True,
        "url": "https://cdn.test/E8S6.jpeg?sig=new",
        "urlExpiresAt": "2025-02-01T00:00:00Z",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=body)

    with anyio.fail_after(5):
        async with client_for(handler) as api:
            blob = await api.refresh_blob("E8S6.jpeg")
    assert (sent[0].method, sent[0].url.path) == ("POST", "/v2/consumer/blobs/E8S6.jpeg/refresh")
    assert (blob.id, blob.available, blob.url) == ("E8S6.jpeg", True, body["url"])
    assert blob.url_expires_at == datetime(2025, 2, 1, tzinfo=UTC)


# -- downloads -------------------------------------------------------------------------------

URL = "https://cdn.test/v2/consumer/blobs/E8S6.jpeg?sig=abc"


async def download(handler: Handler, *, max_bytes: int = 1000) -> Any:
    with anyio.fail_after(5):
        async with client_for(handler) as api:
            return await api.download(URL, max_bytes=max_bytes)


async def test_download_follows_redirects():
    """A download follows the blob URL's redirects to the bytes."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            return httpx.Response(308, headers={"Location": "https://store.test/content/x"})
        return httpx.Response(200, content=b"PNGDATA", headers={"Content-Type": "image/png"})

    result = await download(handler)
    assert (result.content, result.content_type) == (b"PNGDATA", "image/png")


@pytest.mark.parametrize("declared", [True, False])
async def test_download_byte_limit(declared):
    """More bytes than max_bytes is unusable, whether declared up front or streamed."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2):
            yield b"x" * 600

    response = httpx.Response(200, content=b"x" * 2000 if declared else chunks())
    with pytest.raises(ApiError, match="exceeds 1000 bytes") as info:
        await download(answer(response))
    assert type(info.value) is UnusableAnswerError
    assert "[REDACTED]" in str(info.value)
    assert "sig=abc" not in str(info.value)


@pytest.mark.parametrize(
    ("location", "text"),
    [
        ("http://cdn.test/content/x", "from https to plain http"),
        ("ftp://cdn.test/content/x", "a redirect to ftp: refused"),
        ("file:///etc/passwd", "a redirect to file: refused"),
    ],
)
async def test_download_refuses_a_downgrade_or_another_scheme(location, text):
    """A redirect from an https blob URL to plain http, or to any scheme but http(s), is
    refused before it is sent: an unusable answer (the fetcher asks for a fresh URL)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(308, headers={"Location": location})

    with pytest.raises(UnusableAnswerError, match=text):
        await download(handler)
    assert len(seen) == 1  # the refused hop was never requested


async def test_download_follows_at_most_five_redirects():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": f"/hop/{len(seen)}"})

    with pytest.raises(UnusableAnswerError, match="more than 5 redirects"):
        await download(handler)
    assert len(seen) == 6


async def test_download_short_body_is_retryable():
    """Fewer bytes than Content-Length is a RetryableError (the connection was cut)."""
    response = httpx.Response(200, content=b"x" * 10, headers={"Content-Length": "64"})
    with pytest.raises(RetryableError, match="10 of 64 bytes"):
        await download(answer(response))


@pytest.mark.parametrize("status", [401, 403])
async def test_download_denied_means_the_url_expired(status):
    """401/403 on a signed URL is UrlExpiredError: refresh the blob, not the token."""
    response = httpx.Response(status, text="<Error><Code>AccessDenied</Code></Error>")
    with pytest.raises(UrlExpiredError) as info:
        await download(answer(response))
    assert not isinstance(info.value, AuthError)
    assert "refresh" in str(info.value)
    assert "sig=abc" not in str(info.value)


async def test_download_404_is_not_found():
    """404 on a blob URL is NotFoundError: not rendered yet, or gone."""
    with pytest.raises(NotFoundError):
        await download(answer(httpx.Response(404)))


async def test_download_5xx_is_retryable():
    """A flaky blob store is retryable like the API."""
    with pytest.raises(RetryableError):
        await download(answer(httpx.Response(503, headers={"Retry-After": "2"})))
