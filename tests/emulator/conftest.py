"""Fixtures for the emulator tests: a ManualClock-driven app behind httpx's ASGI transport."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from runner.emulator import EmulatorConfig, EmulatorTransport, ManualClock, make_app
from runner.emulator.service import Emulator

TOKEN = "test-token-blue"
OTHER_TOKEN = "test-token-other"
BASE_URL = "http://emulator"
WORKFLOWS = "/v2/consumer/workflows"


def zimage_input(**overrides: Any) -> dict[str, Any]:
    """A valid turbo createImage input, small enough to render fast."""
    base: dict[str, Any] = {
        "engine": "sdcpp",
        "ecosystem": "zImage",
        "model": "turbo",
        "operation": "createImage",
        "prompt": "A cozy cabin in the woods at sunset",
        "width": 256,
        "height": 256,
    }
    return {**base, **overrides}


def template(
    external_id: str | None = None, tags: list[str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A SubmitWorkflow body with one Z-Image step."""
    body: dict[str, Any] = {"steps": [{"$type": "imageGen", "input": zimage_input(**overrides)}]}
    if external_id is not None:
        body["externalId"] = external_id
    if tags is not None:
        body["tags"] = tags
    return body


@dataclass
class Harness:
    """One emulator app, its manual clock and an authenticated in-process client."""

    app: Starlette
    clock: ManualClock
    client: httpx.AsyncClient

    @property
    def service(self) -> Emulator:
        emulator: Emulator = self.app.state.emulator
        return emulator

    async def submit(self, body: object, **params: Any) -> httpx.Response:
        return await self.client.post(WORKFLOWS, json=body, params=params)

    async def get(self, wf_id: str, **params: Any) -> httpx.Response:
        return await self.client.get(f"{WORKFLOWS}/{wf_id}", params=params)

    async def state(self) -> dict[str, Any]:
        response = await self.client.get("/_emulator/state")
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        return data


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness() -> AsyncIterator[HarnessFactory]:
    """Build harnesses from EmulatorConfig keyword arguments; clients close at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(token: str = TOKEN, **config: Any) -> Harness:
            clock = ManualClock()
            app = make_app(EmulatorConfig(**config), clock=clock)
            client = httpx.AsyncClient(
                transport=EmulatorTransport(app),
                base_url=BASE_URL,
                headers={"Authorization": f"Bearer {token}"},
            )
            await stack.enter_async_context(client)
            return Harness(app, clock, client)

        yield factory


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    """The default emulator: seed 0, time_scale 1, no faults, a ManualClock at 0."""
    return await make_harness()
