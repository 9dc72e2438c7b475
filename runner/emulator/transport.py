"""Mount the emulator in-process: httpx's ASGI transport that turns a dropped connection into
the error a real socket gives (`httpx.RemoteProtocolError`)."""

from __future__ import annotations

import httpx

from runner.emulator.app import ConnectionDropped


class EmulatorTransport(httpx.ASGITransport):
    """`httpx.ASGITransport` for the emulator app; `ConnectionDropped` becomes a protocol error.

    Example:
        app = make_app(EmulatorConfig(time_scale=0))
        async with httpx.AsyncClient(transport=EmulatorTransport(app), base_url="http://emulator"):
            ...
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except ConnectionDropped as exc:
            message = "peer closed connection without sending complete message body"
            raise httpx.RemoteProtocolError(message, request=request) from exc
