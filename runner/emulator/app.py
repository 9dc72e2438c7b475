"""The emulator's HTTP face: Starlette routes over `Emulator`, problem+json error handlers.

Each handler authenticates, spends a rate-limit token, binds the query string and body as
the service does (`binding`: the document's parameter types, media types, JSON limits), calls
one service method and renders its answer. Every error is a `Problem` rendered as RFC 7807
`application/problem+json` (what ASP.NET Core sends for a ProblemDetails; docs/emulator.md,
"Edges", item 6). The test-only routes live under `/_emulator`, outside `/v2`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.emulator import binding, content, hostile, persist
from runner.emulator.clock import Clock, ManualClock, MonotonicClock
from runner.emulator.config import EmulatorConfig
from runner.emulator.problems import Problem, validation_problem
from runner.emulator.query import QueryParams, query_workflows
from runner.emulator.service import Emulator, Reply
from runner.emulator.validation import validate_update

PROBLEM_JSON = "application/problem+json"
WORKFLOWS = "/v2/consumer/workflows"
WORKFLOW = "/v2/consumer/workflows/{workflowId}"
BLOB = "/v2/consumer/blobs/{blobId}"


class ConnectionDropped(Exception):
    """Raised after a deliberately partial response: the connection is to be cut. `kind`
    names the fault (`submit_drop_after`); the server logs it as one line, no traceback."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"emulated fault {kind}: connection dropped mid-response")
        self.kind = kind


class DroppedResponse(Response):
    """Announces the whole body's Content-Length, sends half of it, then drops the connection."""

    kind = "submit_drop_after"  # the one fault that drops a connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self.body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        raise ConnectionDropped(self.kind)


def _service(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _account(request: Request, kind: str) -> str:
    service = _service(request)
    account = service.authenticate(request.headers.get("authorization"))
    service.throttle(account, kind)
    return account


def _reply(request: Request, reply: Reply) -> Response:
    if reply.drop:
        return DroppedResponse(json.dumps(reply.body).encode("utf-8"), status_code=reply.status)
    if reply.fault is not None:
        return _hostile(request, reply.fault, reply.status, reply.body)
    return JSONResponse(reply.body, status_code=reply.status)


def _hostile(request: Request, kind: str, status: int, body: object) -> Response:
    service = _service(request)
    path_qs = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return hostile.hostile_reply(
        kind,
        status,
        body,
        profile=service.config.faults,
        clock=service.clock,
        path_qs=path_qs,
        cdn_base_url=service.config.cdn_base_url,
    )


def _content_base(request: Request) -> str:
    """Where content URLs point: the CDN origin when one is configured, else this one."""
    return _service(request).config.cdn_base_url or _base_url(request)


async def submit_workflow(request: Request) -> Response:
    account = _account(request, "submit")
    query = binding.bind_query(request, WORKFLOWS)  # hideMatureContent: every image is "pg"
    body = await binding.json_body(request, WORKFLOWS)
    reply = await _service(request).submit(
        account,
        body,
        base_url=_base_url(request),
        wait_s=float(query["wait"]),
        whatif=bool(query["whatif"]),
    )
    return _reply(request, reply)


async def get_workflow(request: Request) -> Response:
    account = _account(request, "read")
    wait_s = float(binding.bind_query(request, WORKFLOW)["wait"])
    wf_id = request.path_params["workflowId"]
    reply = await _service(request).get(account, wf_id, base_url=_base_url(request), wait_s=wait_s)
    return _reply(request, reply)


async def query_workflows_route(request: Request) -> Response:
    account = _account(request, "read")
    service = _service(request)
    if service.faults.fires("read_5xx", f"query:{account}"):
        raise Problem(service.faults.status_for("read_5xx", f"query:{account}"), "Query failed.")
    query = binding.bind_query(request, WORKFLOWS)  # hideMatureContent: every image is "pg"
    params = QueryParams(
        tags=tuple(query["tags"]),
        cursor=query["cursor"] or None,
        take=query["take"],
        ascending=bool(query["ascending"]),
        exclude_failed=bool(query["excludeFailed"]),
        from_date=query["fromDate"],
        to_date=query["toDate"],
        query=query["query"],
    )
    page = query_workflows(service, account, params, base_url=_base_url(request))
    page["items"] = [hostile.unknown_status(service.faults, item) for item in page["items"]]
    fault = hostile.draw_read_fault(service.faults, f"query:{account}")
    if fault is not None:
        return _hostile(request, fault, 200, page)
    return JSONResponse(page)


async def update_workflow(request: Request) -> Response:
    account = _account(request, "read")
    body = await binding.json_body(request, WORKFLOW)
    errors = validate_update(body)
    if errors:
        raise validation_problem(errors)
    assert isinstance(body, dict)
    _service(request).update(account, request.path_params["workflowId"], body)
    return Response(status_code=204)


async def delete_workflow(request: Request) -> Response:
    account = _account(request, "read")
    _service(request).delete(account, request.path_params["workflowId"])
    return Response(status_code=204)


async def get_blob(request: Request) -> Response:
    service, blob_id = _service(request), request.path_params["blobId"]
    sig = request.query_params.get("sig")
    if sig is not None:
        binding.bind_query(request, BLOB)  # checked; workflowId, nsfwLevel... are ignored
        exp = request.query_params.get("exp", "")
        location = content.redirect_signed(service, blob_id, exp, sig, _content_base(request))
        if service.faults.fires("blob_redirect_plain_http", blob_id):
            location = "http://" + location.partition("://")[2]  # a downgrade from https
        return RedirectResponse(location, status_code=308)
    account = _account(request, "read")
    if request.method == "HEAD":
        record, _ = service.blob(blob_id)
        if record.account != account:
            raise Problem(404, f"Blob {blob_id!r} was not found.")
        return Response(status_code=204)
    binding.bind_query(request, BLOB)
    location = content.redirect_owned(service, account, blob_id, _content_base(request))
    return RedirectResponse(location, status_code=308)


async def refresh_blob(request: Request) -> Response:
    account = _account(request, "read")
    blob_id = request.path_params["blobId"]
    return JSONResponse(content.refresh(_service(request), account, blob_id, _base_url(request)))


async def blob_content(request: Request) -> Response:
    found = await content.serve_content(_service(request), request.path_params["encryptedToken"])
    if found.declared_length is not None:
        return hostile.LyingLengthResponse(found.data, found.media_type, found.declared_length)
    return Response(found.data, media_type=found.media_type)


async def emulator_state(request: Request) -> Response:
    return JSONResponse(_service(request).state())


async def emulator_advance(request: Request) -> Response:
    clock = _service(request).clock
    if not isinstance(clock, ManualClock):
        raise Problem(
            409, "This emulator runs on the real clock; /_emulator/advance needs a ManualClock."
        )
    raw = request.query_params.get("seconds", "0")
    try:
        seconds = float(raw)
        clock.advance(seconds)
    except ValueError:
        raise validation_problem({"seconds": [f"{raw!r} is not a number >= 0."]}) from None
    return JSONResponse({"now_s": clock.now()})


async def problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return JSONResponse(
        exc.body(), status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    problem = Problem(exc.status_code, str(exc.detail))
    return await problem_handler(request, problem)


class RequestCounter:
    """ASGI middleware: counts every answered request per route and status code, and per
    host (the Host header: the API's origin, or the CDN's), with how many of each carried an
    Authorization header (never its value), so tests can prove where the token went."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            label = f"{scope['method']} {getattr(route, 'path', 'unmatched')}"
            if b"sig=" in scope.get("query_string", b""):
                label += " (signed)"  # a signed blob URL: a token sent here is a leak
            headers = dict(scope.get("headers", []))
            authorized = b"authorization" in headers
            host = headers.get(b"host", b"").decode("latin-1") or "(no Host header)"
            emulator: Emulator = scope["app"].state.emulator
            emulator.record_request(
                label, sent[0] if sent else 500, authorized=authorized, host=host
            )


ROUTES = [
    Route(WORKFLOWS, submit_workflow, methods=["POST"]),
    Route(WORKFLOWS, query_workflows_route, methods=["GET"]),
    Route(WORKFLOW, get_workflow, methods=["GET"]),
    Route(WORKFLOW, update_workflow, methods=["PUT"]),
    Route(WORKFLOW, delete_workflow, methods=["DELETE"]),
    Route("/v2/consumer/blobs/content/{encryptedToken}", blob_content, methods=["GET"]),
    Route(BLOB, get_blob, methods=["GET", "HEAD"]),
    Route("/v2/consumer/blobs/{blobId}/refresh", refresh_blob, methods=["POST"]),
    Route("/_emulator/state", emulator_state, methods=["GET"]),
    Route("/_emulator/advance", emulator_advance, methods=["POST"]),
]


def make_app(config: EmulatorConfig | None = None, *, clock: Clock | None = None) -> Starlette:
    """The emulator as an ASGI app; its service model is `app.state.emulator`.

    With `config.state_path`, the state saved there is loaded first (the clock, unless one is
    given, goes on from where the saved one stood) and kept saved while the app is served
    (`app.state.saver`; persist.py). StateError when the file is not an emulator's state.
    """
    config = config or EmulatorConfig()
    saved = persist.load(config.state_path) if config.state_path is not None else None
    if clock is None and saved is not None:
        clock = MonotonicClock(start_s=persist.saved_now_s(saved))
    emulator = Emulator(config, clock)
    if saved is not None:
        persist.restore(emulator, saved)
    lifespan = None
    if config.state_path is not None:
        saver = persist.Saver(emulator, config.state_path)
        lifespan = functools.partial(_keep_saved, saver, config.save_every_s)
    app = Starlette(
        routes=ROUTES,
        exception_handlers={Problem: problem_handler, HTTPException: http_error_handler},
        middleware=[Middleware(RequestCounter)],
        lifespan=lifespan,
    )
    # No 307 to the path without its trailing slash: an id holding an encoded "/" is simply
    # not found, as on the service (which never redirects an API call).
    app.router.redirect_slashes = False
    app.state.emulator = emulator
    if config.state_path is not None:
        app.state.saver = saver
    return app


@asynccontextmanager
async def _keep_saved(saver: persist.Saver, every_s: float, app: Starlette) -> AsyncIterator[None]:
    """While the app is served: its state saved every `every_s` s, and once more at the end."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(saver.keep_saved, every_s)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        await saver.checkpoint()
