"""Property test: every request Civitai's OpenAPI document describes gets an answer it allows.

The routes, parameters, request media types and schemas, and the responses come from the
document itself (the operations kept in ``runner/contract/openapi-subset.json`` by
``scripts/trim_openapi.py``: the 9 the emulator serves). Each example is a fresh emulator
and a short sequence of calls, each drawn from the document: an operation; its path
parameters (an id the emulator handed out earlier in the sequence, or any text); its query
parameters (each present or not, a value of its schema); its body (a value of the request
schema, in one of the documented media types; half of the submits are nudged toward what the
emulator accepts, a quarter of the bodies are damaged by ``openapi_gen.hostile_body``); the
bearer token (two accounts, or none, or a wrong scheme). Between calls the clock may move.

Every answer must be:

* no 5xx;
* a status the operation lists, with one exception written down: QueryWorkflows answers 400
  to a ``cursor`` the emulator never issued (the document lists no 400 there; a cursor is
  opaque, and a made-up one is the caller's bug, so the emulator refuses it rather than
  guess — docs/emulator.md, "The document, route by route");
* in a media type the response lists (an error may be ``application/problem+json`` where the
  document says ``application/json``: the decision of issue 16 item 6, docs/emulator.md);
* valid against the response's schema, with discriminators and allOf resolved
  (``runner.contract._schema.flatten``);
* for a damaged body the service cannot read (a lone surrogate, nesting past 64, NaN,
  an overflowing number, invalid UTF-8): a 400, with nothing created, charged or changed.

After each sequence, every workflow read and query answers without a 5xx (nothing a request
stored can poison a later read), and a tour calls each of the 9 operations as a client that
means well, through the same checks, each required to succeed on whatever state the sequence
left. The test asserts that the drawn calls reached every operation (Hypothesis biases its
draws by constants found in the loaded modules, so which calls a derandomized run draws
depends on what else the session imported: the tour's successes do not).

Bounded: ``EMULATOR_FUZZ_EXAMPLES`` sequences (default ``DEFAULT_EXAMPLES``, derandomized,
~15 s). ``make fuzz-emulator`` runs the long profile (5000, new ones each run).
"""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from runner.contract import _schema as schema
from runner.emulator import EmulatorConfig, EmulatorTransport, ManualClock, make_app
from runner.emulator.app import ROUTES
from tests.emulator import openapi_gen as gen
from tests.openapi_check import schema_errors

DEFAULT_EXAMPLES = 120
EXAMPLES = int(os.environ.get("EMULATOR_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
LONG = "EMULATOR_FUZZ_EXAMPLES" in os.environ
TOKENS = ("prop-token-a", "prop-token-b")
BASE_URL = "http://emulator"
DOCUMENT = schema.document()
OPERATIONS = tuple(
    (path, method) for path, methods in sorted(DOCUMENT["paths"].items()) for method in methods
)
QUERY = ("/v2/consumer/workflows", "get")
SUBMIT = ("/v2/consumer/workflows", "post")
UPDATE = ("/v2/consumer/workflows/{workflowId}", "put")
DELETE = ("/v2/consumer/workflows/{workflowId}", "delete")
REFRESH = ("/v2/consumer/blobs/{blobId}/refresh", "post")
CONTENT = ("/v2/consumer/blobs/content/{encryptedToken}", "get")
TOUR_INPUT = {
    "engine": "sdcpp",
    "ecosystem": "zImage",
    "model": "turbo",
    "operation": "createImage",
    "prompt": "a lighthouse at dusk",
}
SIGNED = "signed blob url"
UNREADABLE = ("lone surrogate", "NaN", "Infinity", "overflow", "bad-utf8", "utf8-surrogate", "cut")
SEEN: Counter[tuple[str, int, bool]] = Counter()  # (label, status, from the tour)


class JumpClock(ManualClock):
    """A ManualClock whose sleepers jump time forward instead of waiting for someone."""

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()


@dataclass
class Known:
    """What the emulator handed out so far in one sequence."""

    workflows: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    signed: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)

    def harvest_workflow(self, body: Mapping[str, Any]) -> None:
        if body.get("id") and body["id"] not in self.workflows:
            self.workflows.append(body["id"])
        for step in body.get("steps") or []:
            for image in (step.get("output") or {}).get("images") or []:
                if image["id"] not in self.blobs:
                    self.blobs.append(image["id"])
                if image.get("url"):
                    self.signed.append(image["url"])


@dataclass
class Call:
    """One drawn request and what the test knows about it."""

    op: tuple[str, str]
    method: str
    url: str
    params: list[tuple[str, str | int | float | bool | None]]
    headers: dict[str, str]
    body: bytes | None = None
    authorized: bool = True
    defect: str | None = None
    foreign_cursor: bool = False
    label: str = ""
    success: int | None = None  # a tour call: the status it must get


def _flat(node: Mapping[str, Any]) -> Mapping[str, Any]:
    if "$ref" in node:
        return _flattened(str(node["$ref"]).removeprefix(schema.REF_PREFIX))
    return node


@functools.cache
def _flattened(name: str) -> Mapping[str, Any]:
    return schema.flatten(name)


def _query_text(node: Mapping[str, Any]) -> st.SearchStrategy[str]:
    kind = node.get("type")
    if kind == "boolean":
        return st.sampled_from(["true", "false", "True", "FALSE"])
    if kind == "integer":
        return gen.values(node).map(str)
    return gen.values({**node, "type": "string"}).map(str)


def _path_value(draw: st.DrawFn, name: str, known: Known) -> str:
    pool = {"workflowId": known.workflows, "blobId": known.blobs, "encryptedToken": known.tokens}
    candidates = pool.get(name, [])
    text = st.text(min_size=1, max_size=20)
    known_value = st.sampled_from(candidates) if candidates else text
    value = draw(st.one_of(known_value, known_value, known_value, text))
    return urllib.parse.quote(value, safe="")


def _submit_shape(body: dict[str, Any]) -> dict[str, Any]:
    """Nudge a schema-valid template toward what the emulator runs: one small step."""
    steps = body["steps"][:1]
    step = dict(steps[0])
    inp = dict(step["input"])
    for side in ("width", "height"):
        inp[side] = 64 + (int(inp.get(side) or 64) % 8) * 16
    inp["quantity"] = 1 + int(inp.get("quantity") or 1) % 2
    inp["steps"] = 1 + int(inp.get("steps") or 1) % 12
    inp["loras"] = {}
    inp.pop("diffuserModel", None)
    step.update(input=inp, timeout=None)
    return {**body, "steps": [step], "externalId": None, "currencies": []}


@st.composite
def _body(draw: st.DrawFn, call: Call, operation: Mapping[str, Any], setup: bool) -> None:
    content = operation["requestBody"]["content"]
    media = draw(st.sampled_from(sorted(content)))
    node = _flat(content[media]["schema"])
    call.headers["Content-Type"] = media.replace("*", "vnd.zbatch") + draw(
        st.sampled_from(["", "; charset=utf-8"])
    )
    value = draw(gen.values(node))
    if call.op == SUBMIT and (setup or draw(st.booleans())):
        value = _submit_shape(value)
    if not setup and draw(st.integers(0, 3)) == 0:
        call.defect, call.body = draw(gen.hostile_body(value))
    else:
        call.body = json.dumps(value).encode("utf-8")


def _cursor(draw: st.DrawFn, call: Call, known: Known) -> None:
    """No cursor, one the emulator issued, or (a quarter of the time) a made-up one."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        value = draw(st.text(max_size=12))
        call.foreign_cursor = value.strip() != ""
        call.params.append(("cursor", value))
    elif choice < 3 and known.cursors:
        call.params.append(("cursor", draw(st.sampled_from(known.cursors))))


@st.composite
def _call(draw: st.DrawFn, known: Known, setup: bool = False) -> Call:
    """A drawn request; ``setup`` makes it an authorized, undamaged, runnable submit."""
    choices = [*OPERATIONS, SUBMIT, SUBMIT] + ([(SIGNED, "get")] if known.signed else [])
    op = SUBMIT if setup else draw(st.sampled_from(choices))
    if op[0] == SIGNED:
        url = draw(st.sampled_from(known.signed))
        parts = urllib.parse.urlsplit(url)
        query: list[tuple[str, str | int | float | bool | None]] = [
            *urllib.parse.parse_qsl(parts.query)
        ]
        blob = ("/v2/consumer/blobs/{blobId}", "get")
        return Call(blob, "GET", parts.path, query, {}, label=SIGNED)
    path, method = op
    operation = DOCUMENT["paths"][path][method]
    params: list[tuple[str, str | int | float | bool | None]] = []
    url, headers = path, dict[str, str]()
    call = Call(op, method.upper(), url, params, headers, label=f"{method.upper()} {path}")
    for param in operation.get("parameters", []):
        name, node = param["name"], _flat(param["schema"])
        if param["in"] == "path":
            call.url = call.url.replace("{" + name + "}", _path_value(draw, name, known))
        elif param["in"] == "header":
            if draw(st.booleans()):
                headers[name] = draw(st.sampled_from(["application/json", "*/*"]))
        elif name == "cursor":
            _cursor(draw, call, known)
        elif draw(st.booleans()):
            if node.get("type") == "array":
                items = draw(st.lists(_query_text(node["items"]), max_size=2))
                params += [(name, item) for item in items]
            else:
                params.append((name, draw(_query_text(node))))
    if op == SUBMIT and not setup and draw(st.integers(0, 7)) == 0:
        name = draw(st.sampled_from(["wait", "whatif", "hideMatureContent"]))
        bad = draw(st.sampled_from(["AAA", "2147483648", "-2147483649", "1.5", "1", "yes"]))
        params.insert(0, (name, bad))
        call.defect = f"query {name}={bad}"
    if "requestBody" in operation:
        draw(_body(call, operation, setup))
    if setup:
        headers["Authorization"] = f"Bearer {TOKENS[0]}"
    elif operation.get("security") != []:
        auth = draw(st.sampled_from([*[TOKENS[0]] * 6, TOKENS[1], None, "Basic x", ""]))
        call.authorized = auth in TOKENS
        if auth is not None:
            headers["Authorization"] = auth if auth.startswith("Basic") else f"Bearer {auth}"
    return call


def _documented(call: Call, status: int) -> Mapping[str, Any]:
    path, method = call.op
    responses = DOCUMENT["paths"][path][method]["responses"]
    allowed_extra = call.op == QUERY and status == 400 and call.foreign_cursor
    assert str(status) in responses or allowed_extra, (
        f"{call.label}: status {status} is not one the document lists ({sorted(responses)})"
    )
    found: Mapping[str, Any] = responses.get(str(status), responses.get("400", {}))
    return found


def _check_body(call: Call, response: httpx.Response, documented: Mapping[str, Any]) -> Any:
    """The parsed body, after its media type and schema are checked; None if it has none."""
    content: Mapping[str, Any] = documented.get("content", {})
    media = response.headers.get("content-type", "").split(";")[0].strip()
    status = response.status_code
    if call.method == "HEAD":  # a HEAD answer has headers only, whatever its status
        assert response.content == b"", f"{call.label}: {status} with a body"
        return None
    if not content:
        if status in (204, 308):
            assert response.content == b"", f"{call.label}: {status} with a body"
        if status == 308:
            assert response.headers.get("location"), f"{call.label}: 308 without Location"
        return None
    problem_for_json = status >= 400 and media == "application/problem+json"
    if problem_for_json:
        media = "application/json"
    assert media in content, f"{call.label}: {status} answered as {media!r}, not {list(content)}"
    data = response.json()
    node = content[media]["schema"]
    if "$ref" in node:
        problems = schema_errors(str(node["$ref"]).removeprefix(schema.REF_PREFIX), data)
    else:
        problems = [error.message for error in Draft202012Validator(node).iter_errors(data)]
    assert not problems, f"{call.label} {status}: schema violations: {problems}"
    return data


def _harvest(call: Call, response: httpx.Response, data: Any, known: Known) -> None:
    location = response.headers.get("location", "")
    if "/blobs/content/" in location:
        known.tokens.append(location.rsplit("/", 1)[1])
    if isinstance(data, dict) and "items" in data and "next" in data:
        for item in data["items"]:
            known.harvest_workflow(item)
        if data["next"]:
            known.cursors.append(data["next"])
    elif isinstance(data, dict) and "steps" in data:
        known.harvest_workflow(data)


async def _send(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    return await client.request(
        call.method, call.url, params=call.params, headers=call.headers, content=call.body
    )


def _must_be_refused(call: Call) -> bool:
    if call.defect is None or not call.authorized:
        return False
    if call.defect.startswith("query"):
        return call.defect != "query wait=1"  # the one damaged value that is an int32
    if "levels" in call.defect:
        return call.body is not None and gen.depth_of(call.body) > 64
    return call.defect.startswith(UNREADABLE)


def _spent(emulator: Any) -> tuple[int, int, int]:
    """What a refused submit must leave as it was: Buzz charged and refunded, workflows (a
    first request from a token opens its account: that is not a change)."""
    accounts = emulator.ledger.accounts.values()
    charged = sum(account.charged_buzz for account in accounts)
    refunded = sum(account.refunded_buzz for account in accounts)
    return charged, refunded, len(emulator.records)


async def _one_call(client: httpx.AsyncClient, app: Any, call: Call, known: Known) -> None:
    emulator = app.state.emulator
    before = _spent(emulator) if call.op == SUBMIT else None
    target = call.url.rsplit("/", 1)[-1] if call.op == UPDATE else None
    shown_before = await _read(client, target)
    response = await _send(client, call)
    status = response.status_code
    SEEN[(call.label, status, call.success is not None)] += 1
    assert status < 500, f"{call.label} ({call.defect}): {status} {response.text[:300]}"
    if call.success is not None:
        assert status == call.success, f"tour: {call.label} answered {status}: {response.text}"
    data = _check_body(call, response, _documented(call, status))
    if _must_be_refused(call):
        assert status == 400, f"{call.label}: {call.defect} answered {status}, not 400"
    if status >= 400 and call.op == SUBMIT:
        assert _spent(emulator) == before, (
            f"{call.label}: a refused submit ({call.defect}) changed state"
        )
    if status >= 400 and target is not None:
        assert await _read(client, target) == shown_before, "a refused PUT changed the workflow"
    _harvest(call, response, data, known)


async def _read(client: httpx.AsyncClient, wf_id: str | None) -> object:
    if wf_id is None:
        return None
    headers = {"Authorization": f"Bearer {TOKENS[0]}"}
    response = await client.get(f"/v2/consumer/workflows/{wf_id}", headers=headers)
    assert response.status_code < 500
    return response.status_code, response.content


async def _no_poisoned_reads(client: httpx.AsyncClient, known: Known) -> None:
    for token in TOKENS:
        headers = {"Authorization": f"Bearer {token}"}
        page = await client.get("/v2/consumer/workflows", headers=headers)
        assert page.status_code == 200, f"query after the sequence: {page.status_code}"
        assert not schema_errors("CursedArrayOfTelemetryCursorAndWorkflow", page.json())
        for wf_id in known.workflows:
            one = await client.get(f"/v2/consumer/workflows/{wf_id}", headers=headers)
            assert one.status_code in (200, 202, 404), f"GET {wf_id}: {one.status_code}"


def _tour_call(op: tuple[str, str], url: str, success: int, **extra: Any) -> Call:
    path, method = op
    headers = {"Authorization": f"Bearer {TOKENS[0]}", **extra.pop("headers", {})}
    label = extra.pop("label", f"{method.upper()} {path}")
    return Call(op, method.upper(), url, [], headers, label=label, success=success, **extra)


async def _tour(client: httpx.AsyncClient, app: Any, clock: JumpClock) -> None:
    """Every operation once, as a client that means well, each through the same checks and
    each required to succeed: the same 9 on every state the drawn sequence left behind."""
    known = Known()
    json_body = {"Content-Type": "application/json"}
    submit = json.dumps(_submit_shape({"steps": [{"$type": "imageGen", "input": TOUR_INPUT}]}))
    post = _tour_call(SUBMIT, SUBMIT[0], 202, body=submit.encode(), headers=json_body)
    post.success = 200 if app.state.emulator.config.time_scale == 0 else 202
    await _one_call(client, app, post, known)
    clock.advance(120.0)  # past any tour job, inside the signed URLs' hour
    wf_id, blob = known.workflows[0], known.blobs[0]  # the tour's own, not the query's
    workflow = f"/v2/consumer/workflows/{wf_id}"
    await _one_call(
        client, app, _tour_call(("/v2/consumer/workflows", "get"), SUBMIT[0], 200), known
    )
    await _one_call(
        client,
        app,
        _tour_call(("/v2/consumer/workflows/{workflowId}", "get"), workflow, 200),
        known,
    )
    blob_path = f"/v2/consumer/blobs/{urllib.parse.quote(blob)}"
    for method, success in (("head", 204), ("get", 308)):
        await _one_call(
            client,
            app,
            _tour_call(("/v2/consumer/blobs/{blobId}", method), blob_path, success),
            known,
        )
    token = known.tokens[-1]
    content = _tour_call(CONTENT, f"/v2/consumer/blobs/content/{token}", 200, headers={})
    content.headers.pop("Authorization")
    await _one_call(client, app, content, known)
    parts = urllib.parse.urlsplit(known.signed[-1])
    signed = _tour_call(("/v2/consumer/blobs/{blobId}", "get"), parts.path, 308, label=SIGNED)
    signed.headers.pop("Authorization")
    signed.params = [*urllib.parse.parse_qsl(parts.query)]
    await _one_call(client, app, signed, known)
    await _one_call(client, app, _tour_call(REFRESH, f"{blob_path}/refresh", 200), known)
    put = _tour_call(UPDATE, workflow, 204, body=b'{"tags": ["tour"]}', headers=json_body)
    await _one_call(client, app, put, known)
    await _one_call(client, app, _tour_call(DELETE, workflow, 204), known)


async def _sequence(data: st.DataObject) -> None:
    clock = JumpClock()
    config = EmulatorConfig(
        seed=data.draw(st.integers(0, 3)),
        time_scale=data.draw(st.sampled_from([0.0, 0.05, 1.0])),
        submit_limit=None,
        read_limit=None,
        initial_balance={"blue": 0, "green": 0, "yellow": 10**12},
    )
    app = make_app(config, clock=clock)
    known = Known()
    async with httpx.AsyncClient(transport=EmulatorTransport(app), base_url=BASE_URL) as client:
        for _ in range(data.draw(st.integers(1, 3))):
            await _one_call(client, app, data.draw(_call(known, setup=True)), known)
        for _ in range(data.draw(st.integers(1, 8))):
            clock.advance(data.draw(st.sampled_from([0.0, 0.0, 0.3, 2.0, 30.0])))
            await _one_call(client, app, data.draw(_call(known)), known)
        await _no_poisoned_reads(client, known)
        await _tour(client, app, clock)


@settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def _property(data: st.DataObject) -> None:
    anyio.run(_sequence, data)


def test_the_emulator_serves_exactly_the_documents_operations() -> None:
    """The app's /v2 routes and the subset's operations are the same 9 (HEAD of a GET route,
    which Starlette adds, aside): a route added without its document, or the reverse, fails."""
    served = {
        (route.path, method.lower())
        for route in ROUTES
        if route.path.startswith("/v2")
        for method in route.methods or ()
        if method != "HEAD" or route.path == "/v2/consumer/blobs/{blobId}"
    }
    assert served == set(OPERATIONS)


def test_every_documented_request_gets_a_documented_answer() -> None:
    """No 5xx, documented statuses and media types, schema-valid bodies, unreadable bodies
    refused with nothing stored, every read healthy afterwards; the drawn calls reached all 9
    operations, and the tour after each sequence got each one's success answer."""
    SEEN.clear()
    _property()
    wanted = {f"{method.upper()} {path}" for path, method in OPERATIONS} | {SIGNED}
    drawn = {label for (label, _, tour) in SEEN if not tour}
    assert wanted <= drawn, f"never drawn: {sorted(wanted - drawn)}"
    toured = {label for (label, status, tour) in SEEN if tour and status < 400}
    assert toured == wanted
