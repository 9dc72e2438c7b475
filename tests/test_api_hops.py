"""The client's hops after its per-request savings (issue 14): a redirect resolves as before
(relative against the hop, absolute as given, dot segments removed), and no request carries
a cookie that an earlier answer set, whichever origin set it."""

from __future__ import annotations

import anyio
import httpx
import pytest

from runner.api import Client

BASE = "https://orchestration.test"
TOKEN = "tok-hops-secret"


def client_for(handler: httpx.MockTransport) -> Client:
    return Client(base_url=BASE, token=TOKEN, transport=handler)


@pytest.mark.parametrize(
    ("location", "second"),
    [
        ("/content/a.jpeg?sig=1", "https://cdn.test/content/a.jpeg?sig=1"),
        ("b.jpeg", "https://cdn.test/v2/consumer/blobs/b.jpeg"),
        ("https://store.test/x/../y/c.jpeg", "https://store.test/y/c.jpeg"),
        ("https://store.test/d.jpeg", "https://store.test/d.jpeg"),
    ],
)
async def test_a_download_redirect_resolves_against_the_hop(location: str, second: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if len(seen) == 1:
            return httpx.Response(302, headers={"Location": location})
        return httpx.Response(200, content=b"image", headers={"Content-Type": "image/jpeg"})

    with anyio.fail_after(5):
        async with client_for(httpx.MockTransport(handler)) as api:
            got = await api.download("https://cdn.test/v2/consumer/blobs/E8.jpeg", max_bytes=99)
    assert got.content == b"image"
    assert seen == ["https://cdn.test/v2/consumer/blobs/E8.jpeg", second]


async def test_no_request_carries_a_cookie_an_answer_set() -> None:
    """The API's answer and a CDN's both set cookies; neither comes back, on API calls or
    downloads (the client keeps no cookie jar)."""
    cookies: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cookies.append(request.headers.get("Cookie"))
        jar = {"Set-Cookie": f"session=s{len(cookies)}; Path=/"}
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=b"x", headers=jar)
        return httpx.Response(302, headers={"Location": "https://cdn.test/c"} | jar)

    with anyio.fail_after(5):
        async with client_for(httpx.MockTransport(handler)) as api:
            for _ in range(2):
                await api.blob_url("E8.jpeg")
                await api.download("https://cdn.test/c", max_bytes=99)
                await api.download(f"{BASE}/v2/consumer/blobs/E8.jpeg", max_bytes=99)
    # the run's aiohttp wire, whose session could keep a jar: tests/test_api_wire.py
    assert len(cookies) == 8
    assert cookies == [None] * 8
