"""Hostile answers (issue 9): what a broken proxy, a changed API or a bad CDN could send.

The read faults turn a good JSON answer into a bad one (`hostile_reply`); the blob faults
turn good image bytes into bad ones (`hostile_content`). Each is drawn per subject like every
other fault (`FaultInjector.fires`), so a retry of the same request gets a fresh draw.
"""

from __future__ import annotations

import functools
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.emulator.clock import Clock
from runner.emulator.config import OTHER_HOST_URL, FaultProfile
from runner.emulator.faults import FaultInjector, derive_int
from runner.emulator.images import render_image

# Kinds that replace a whole JSON answer, in the order they are drawn (the first that fires).
READ_KINDS = (
    "read_redirect_other_host",
    "read_drip",
    "read_huge_body",
    "read_malformed_json",
    "read_wrong_shape",
)
UNKNOWN_STATUS = "archived"  # a status no version of the API documents
BOMB_SIDE = 10_000  # 10^8 pixels: past Pillow's MAX_IMAGE_PIXELS (a warning, not its error)
NOT_AN_IMAGE = b"<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>\n"
_DRIP_PREFIX = b'{"id": "'
_CHUNK = 64 * 1024


def draw_read_fault(faults: FaultInjector, subject: str) -> str | None:
    """The hostile read fault that fires for `subject` this time, if any (one at most)."""
    for kind in READ_KINDS:
        if faults.fires(kind, subject):
            return kind
    return None


def unknown_status(faults: FaultInjector, workflow: dict[str, Any]) -> dict[str, Any]:
    """`workflow` with its status replaced by `UNKNOWN_STATUS` when `read_unknown_status` fires."""
    if faults.fires("read_unknown_status", str(workflow.get("id"))):
        return {**workflow, "status": UNKNOWN_STATUS}
    return workflow


def other_host(cdn_base_url: str | None) -> str:
    return (cdn_base_url or OTHER_HOST_URL).rstrip("/")


def hostile_reply(
    kind: str,
    status: int,
    body: Any,
    *,
    profile: FaultProfile,
    clock: Clock,
    path_qs: str,
    cdn_base_url: str | None,
) -> Response:
    """The response a read fault `kind` sends instead of `body` (a good JSON answer)."""
    if kind == "read_redirect_other_host":
        return RedirectResponse(other_host(cdn_base_url) + path_qs, status_code=307)
    if kind == "read_drip":
        return StreamingResponse(
            _drip(clock, profile.read_drip.delay_s), status, media_type="application/json"
        )
    if kind == "read_huge_body":
        return StreamingResponse(
            _huge(profile.read_huge_body.size_bytes), status, media_type="application/json"
        )
    if kind == "read_malformed_json":
        text = json.dumps(body).encode("utf-8")
        return Response(text[: len(text) // 2], status, media_type="application/json")
    if kind == "read_wrong_shape":
        return JSONResponse({"data": [body], "version": 3}, status)
    raise ValueError(f"{kind!r} is not a hostile read fault (allowed: {', '.join(READ_KINDS)})")


async def _drip(clock: Clock, delay_s: float) -> AsyncIterator[bytes]:
    """A JSON answer that starts and never ends: one byte every `delay_s` clock seconds."""
    yield _DRIP_PREFIX
    while True:
        await clock.sleep(delay_s)
        yield b"a"


async def _huge(size_bytes: int) -> AsyncIterator[bytes]:
    """`size_bytes` of one JSON string, streamed without a Content-Length."""
    yield b'{"pad": "'
    sent = 0
    while sent < size_bytes:
        n = min(_CHUNK, size_bytes - sent)
        yield b"x" * n
        sent += n
    yield b'"}'


# -- blobs -----------------------------------------------------------------------------


@functools.cache
def bomb_png() -> bytes:
    """A valid 1-bit PNG of BOMB_SIDE² pixels: about 15 KB that decode to 100 MB."""
    row = b"\x00" + b"\x00" * ((BOMB_SIDE + 7) // 8)  # filter byte, then packed zero bits
    squeeze = zlib.compressobj(9)
    idat = b"".join(squeeze.compress(row) for _ in range(BOMB_SIDE)) + squeeze.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def wrong_size_image(inp: dict[str, Any], index: int, fmt: str, salt: str) -> bytes:
    """A good picture in the requested format, 16 pixels wider than asked."""
    return render_image(
        prompt=str(inp["prompt"]),
        seed=int(inp["seed"]) + index,
        index=index,
        width=int(inp["width"]) + 16,
        height=int(inp["height"]),
        fmt=fmt,
        salt=salt,
    )


class LyingLengthResponse(Response):
    """Sends the whole body under a Content-Length that is not its length.

    Under uvicorn, h11 refuses to send more or fewer bytes than declared and closes the
    connection, so the client sees a body cut short; in-process the client gets the body and
    the lie side by side. Either way the declared and received lengths differ.
    """

    def __init__(self, content: bytes, media_type: str, declared: int) -> None:
        super().__init__(content, media_type=media_type)
        self.declared = declared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", self.media_type.encode("latin-1") if self.media_type else b""),
            (b"content-length", str(self.declared).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": bytes(self.body)})


def lying_length(seed: int, blob_id: str, size: int) -> int:
    """The Content-Length a `blob_lying_length` fault declares: twice the body, or half."""
    return size * 2 if derive_int(seed, "lying-length", blob_id) % 2 == 0 else size // 2
