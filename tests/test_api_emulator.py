"""runner/api.py against the emulator: the client's errors and results match what the service did.

The emulator is mounted in-process with a ManualClock (no sleeps); the introspection data
proves what the "service" saw and charged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from runner.api._client import Client
from runner.api._models import WorkflowStatus
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    RateLimit,
    make_app,
    running_server,
)
from runner.emulator.service import Emulator
from runner.engine._images import verify_image
from runner.errors import (
    AuthError,
    FundsError,
    NotFoundError,
    RejectedError,
    RetryableError,
    UrlExpiredError,
)

TOKEN = "integration-token"


def steps(**overrides: Any) -> list[dict[str, Any]]:
    step_input = {
        "engine": "sdcpp",
        "ecosystem": "zImage",
        "model": "turbo",
        "operation": "createImage",
        "prompt": "a lighthouse in a storm",
        "width": 128,
        "height": 96,
        "seed": 5,
    }
    step_input.update(overrides)
    return [{"$type": "imageGen", "input": step_input}]


@dataclass
class Setup:
    client: Client
    clock: ManualClock
    service: Emulator


Factory = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def make_setup() -> AsyncIterator[Factory]:
    async with AsyncExitStack() as stack:

        async def factory(token: str = TOKEN, **config: Any) -> Setup:
            clock = ManualClock()
            app = make_app(EmulatorConfig(**config), clock=clock)
            client = Client(
                base_url="http://emulator", token=token, transport=EmulatorTransport(app)
            )
            await stack.enter_async_context(client)
            return Setup(client, clock, app.state.emulator)

        yield factory


async def test_round_trip_charges_what_whatif_priced(make_setup: Factory) -> None:
    """whatif price == charged Buzz; the image at the signed URL is the requested size."""
    with anyio.fail_after(10):
        s = await make_setup()
        preview = await s.client.submit(steps(quantity=2), whatif=True)
        wf = await s.client.submit(steps(quantity=2), external_id="k1", tags=["zb:t"])
        assert wf.status is WorkflowStatus.UNASSIGNED
        assert wf.id is not None
        s.clock.advance(3600)
        done = await s.client.get(wf.id)
        assert done.status is WorkflowStatus.SUCCEEDED
        assert preview.cost_total == done.cost_total == done.charged_buzz
        assert [i.index for i in done.images] == [0, 1]
        for image in done.images:
            assert image.deliverable
            assert image.url is not None
            got = await s.client.download(image.url, max_bytes=1 << 20)
            assert verify_image(got.content, width=128, height=96).format == "jpeg"
        assert s.service.state()["buzz"]["charged_buzz"] == done.charged_buzz


async def test_validation_error_is_rejected_with_the_field_named(make_setup: Factory) -> None:
    with anyio.fail_after(10):
        s = await make_setup()
        with pytest.raises(RejectedError) as exc:
            await s.client.submit(steps(width=1000, guidanceScale=3), external_id="bad")
        assert "steps[0].input.width" in exc.value.errors
        assert "steps[0].input.guidanceScale" in exc.value.errors
        assert "divisible by 16" in str(exc.value)
        assert s.service.state()["workflow_count"] == 0


async def test_unknown_token_is_an_auth_error_that_never_shows_the_token(
    make_setup: Factory,
) -> None:
    with anyio.fail_after(10):
        s = await make_setup(token="sk-wrong-secret", tokens=frozenset({"the-right-one"}))
        with pytest.raises(AuthError) as exc:
            await s.client.submit(steps())
        assert exc.value.status == 401
        assert "sk-wrong-secret" not in str(exc.value) + repr(exc.value)


async def test_insufficient_buzz_is_a_funds_error_and_creates_nothing(
    make_setup: Factory,
) -> None:
    with anyio.fail_after(10):
        s = await make_setup(initial_balance={"blue": 3})
        with pytest.raises(FundsError):
            await s.client.submit(steps(width=1024, height=1024), external_id="poor")
        state = s.service.state()
        assert state["workflow_count"] == 0
        assert state["buzz"]["charged_buzz"] == 0


async def test_rate_limit_is_retryable_with_retry_after(make_setup: Factory) -> None:
    with anyio.fail_after(10):
        s = await make_setup(submit_limit=RateLimit(per_s=0.5, burst=2))
        await s.client.submit(steps(), external_id="r1")
        await s.client.submit(steps(), external_id="r2")
        with pytest.raises(RetryableError) as exc:
            await s.client.submit(steps(), external_id="r3")
        assert exc.value.status == 429
        assert exc.value.retry_after_s is not None
        assert exc.value.retry_after_s >= 1
        s.clock.advance(exc.value.retry_after_s)
        assert (await s.client.submit(steps(), external_id="r3")).id is not None


@pytest.mark.parametrize("kind", ["submit_drop_after", "submit_5xx_after"])
async def test_failure_after_create_then_resubmit_makes_one_workflow(
    make_setup: Factory, kind: str
) -> None:
    """The case exactly-once lives by: the service created and charged, the client saw an
    error; resubmitting the same externalId returns that workflow and charges nothing more."""
    with anyio.fail_after(10):
        faults = FaultProfile(**{kind: FaultRule(p=1.0, times=1)})
        s = await make_setup(faults=faults)
        with pytest.raises(RetryableError):
            await s.client.submit(steps(), external_id="once")
        wf = await s.client.submit(steps(), external_id="once")
        state = s.service.state()
        assert state["workflows"]["once"]["ids"] == [wf.id]
        assert state["buzz"]["charged_buzz"] == wf.cost_total
        assert state["faults_fired"] == {kind: 1}


async def test_expired_url_is_refreshed(make_setup: Factory) -> None:
    with anyio.fail_after(10):
        s = await make_setup(time_scale=0, url_ttl_s=60)
        wf = await s.client.submit(steps(), external_id="exp")
        image = wf.images[0]
        assert image.url is not None
        assert image.available
        s.clock.advance(61)
        with pytest.raises(UrlExpiredError):
            await s.client.download(image.url, max_bytes=1 << 20)
        fresh = await s.client.refresh_blob(image.blob_id)
        assert fresh.url is not None
        assert fresh.url != image.url
        got = await s.client.download(fresh.url, max_bytes=1 << 20)
        verify_image(got.content, width=128, height=96)
        via_redirect = await s.client.blob_url(image.blob_id)
        assert (await s.client.download(via_redirect, max_bytes=1 << 20)).content == got.content


async def test_query_pages_through_every_tagged_workflow(make_setup: Factory) -> None:
    with anyio.fail_after(10):
        s = await make_setup(time_scale=0)
        ids = {
            (await s.client.submit(steps(seed=i), external_id=f"q{i}", tags=["zb:q"])).id
            for i in range(5)
        }
        await s.client.submit(steps(), external_id="other", tags=["zb:other"])
        seen = [wf.id async for wf in s.client.iter_workflows(tags=["zb:q"], take=2)]
        assert len(seen) == 5
        assert set(seen) == ids


async def test_cancel_before_start_refunds(make_setup: Factory) -> None:
    with anyio.fail_after(10):
        s = await make_setup()
        wf = await s.client.submit(steps(), external_id="c1")
        assert wf.id is not None
        await s.client.cancel(wf.id)
        after = await s.client.get(wf.id)
        assert after.status is WorkflowStatus.CANCELED
        assert after.charged_buzz == 0
        with pytest.raises(NotFoundError):
            await s.client.get("no-such-workflow")


class _PortsSeen(httpx.AsyncBaseTransport):
    """A real socket transport that notes the local port each answer arrived on."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.ports: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        stream = response.extensions["network_stream"]
        self.ports.append(stream.get_extra_info("client_addr")[1])
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_downloads_through_redirects_reuse_one_connection() -> None:
    """A redirect's body is read before the hop, so its connection goes back to the pool: five
    downloads (redirect, then content) and their submit share one socket, not one each."""
    transport = _PortsSeen()
    with running_server(EmulatorConfig(time_scale=0)) as url:
        async with Client(base_url=url, token=TOKEN, transport=transport) as client:
            with anyio.fail_after(10):
                wf = await client.submit(steps(quantity=4), external_id="reuse-1")
                for image in wf.images:
                    assert image.url is not None
                    got = await client.download(image.url, max_bytes=1 << 20)
                    assert verify_image(got.content, width=128, height=96).width == 128
    assert len(transport.ports) == 1 + 2 * 4  # the submit, then a redirect + content each
    assert len(set(transport.ports)) == 1
