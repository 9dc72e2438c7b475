"""Blob URLs: signed redirects, expiry and refresh, authenticated GetBlob, content bytes."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
from PIL import Image

from tests.emulator.conftest import Harness, HarnessFactory, template
from tests.openapi_check import assert_schema


async def _done(harness: Harness, **overrides: Any) -> dict[str, Any]:
    wf = (await harness.submit(template(**overrides))).json()
    harness.clock.advance(60)
    body: dict[str, Any] = (await harness.get(wf["id"])).json()
    assert body["status"] == "succeeded"
    return body


def _images(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = workflow["steps"][0]["output"]["images"]
    return images


async def _anonymous_get(harness: Harness, url: str, **kw: Any) -> httpx.Response:
    """GET without the bearer token, as a downloader must."""
    return await harness.client.get(url, headers={"Authorization": ""}, **kw)


async def test_signed_url_redirects_to_content_with_the_image(harness: Harness) -> None:
    """A signed URL needs no auth: 308 to a content URL that serves the image bytes."""
    with anyio.fail_after(10):
        image = _images(await _done(harness, width=320, height=192))[0]
        first = await _anonymous_get(harness, image["url"])
        final = await _anonymous_get(harness, image["url"], follow_redirects=True)
    assert first.status_code == 308
    assert "/v2/consumer/blobs/content/" in first.headers["location"]
    assert final.status_code == 200
    assert final.headers["content-type"] == "image/jpeg"
    assert int(final.headers["content-length"]) == len(final.content)
    with Image.open(io.BytesIO(final.content)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (320, 192))


async def test_blob_is_404_until_its_job_finishes(harness: Harness) -> None:
    """The URL exists from the start, but fetching it is a 404 until the image lands."""
    with anyio.fail_after(5):
        wf = (await harness.submit(template())).json()
        early = await _anonymous_get(harness, _images(wf)[0]["url"])
    assert early.status_code == 404
    assert_schema("ProblemDetails", early.json())


async def test_expired_url_is_403_and_refresh_gives_a_working_one(
    make_harness: HarnessFactory,
) -> None:
    """Past urlExpiresAt the URL answers 403; RefreshBlob returns a fresh URL that works."""
    harness = await make_harness(url_ttl_s=30)
    with anyio.fail_after(10):
        image = _images(await _done(harness))[0]
        harness.clock.advance(31)
        expired = await _anonymous_get(harness, image["url"])
        refreshed = await harness.client.post(f"/v2/consumer/blobs/{image['id']}/refresh")
        blob = refreshed.json()
        works = await _anonymous_get(harness, blob["url"], follow_redirects=True)
    assert expired.status_code == 403
    assert_schema("ProblemDetails", expired.json())
    assert refreshed.status_code == 200
    assert_schema("Blob", blob)
    assert blob["id"] == image["id"]
    assert blob["available"] is True
    assert blob["urlExpiresAt"] > image["urlExpiresAt"]
    assert works.status_code == 200


async def test_every_get_re_signs_urls_with_a_fresh_expiry(harness: Harness) -> None:
    """Re-reading the workflow later hands out URLs that expire later."""
    with anyio.fail_after(10):
        first = await _done(harness)
        harness.clock.advance(100)
        second = (await harness.get(first["id"])).json()
    assert _images(second)[0]["urlExpiresAt"] > _images(first)[0]["urlExpiresAt"]
    assert _images(second)[0]["url"] != _images(first)[0]["url"]


async def test_tampered_signature_or_expiry_is_403(harness: Harness) -> None:
    """Changing `exp` or `sig` invalidates the URL."""
    with anyio.fail_after(10):
        url = _images(await _done(harness))[0]["url"]
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        later = int(query["exp"][0]) + 3600
        moved = f"{parts.scheme}://{parts.netloc}{parts.path}?exp={later}&sig={query['sig'][0]}"
        forged = f"{parts.scheme}://{parts.netloc}{parts.path}?exp={query['exp'][0]}&sig=AAAA"
        responses = [await _anonymous_get(harness, u) for u in (moved, forged)]
    assert [r.status_code for r in responses] == [403, 403]


async def test_get_blob_with_token_redirects_and_without_is_401(harness: Harness) -> None:
    """GetBlob without a signature needs the bearer token; with it, a 308 to fresh content."""
    with anyio.fail_after(10):
        image = _images(await _done(harness))[0]
        path = f"/v2/consumer/blobs/{image['id']}"
        owned = await harness.client.get(path)
        anonymous = await _anonymous_get(harness, path)
        stranger = await harness.client.get(path, headers={"Authorization": "Bearer x"})
        head = await harness.client.head(path)
    assert owned.status_code == 308
    assert anonymous.status_code == 401
    assert stranger.status_code == 404
    assert head.status_code == 204


async def test_content_url_expires(make_harness: HarnessFactory) -> None:
    """The content URL a redirect hands out lives `content_ttl_s`, then answers 401."""
    harness = await make_harness(content_ttl_s=5)
    with anyio.fail_after(10):
        image = _images(await _done(harness))[0]
        location = (await _anonymous_get(harness, image["url"])).headers["location"]
        harness.clock.advance(6)
        late = await _anonymous_get(harness, location)
        garbled = await _anonymous_get(harness, location.rsplit("/", 1)[0] + "/%%%")
    assert late.status_code == 401
    assert garbled.status_code in (400, 401)


async def test_output_format_png_gives_png_ids_and_bytes(harness: Harness) -> None:
    """`outputFormat: png` makes `.png` blob ids served as image/png."""
    with anyio.fail_after(10):
        image = _images(await _done(harness, outputFormat="png"))[0]
        final = await _anonymous_get(harness, image["url"], follow_redirects=True)
    assert image["id"].endswith(".png")
    assert final.headers["content-type"] == "image/png"
    assert final.content.startswith(b"\x89PNG")


async def test_bytes_are_deterministic_per_index_and_cached(harness: Harness) -> None:
    """Images differ by index (seed + index), repeat exactly, and render once per blob."""
    with anyio.fail_after(10):
        images = _images(await _done(harness, quantity=2, seed=5))
        a1 = await _anonymous_get(harness, images[0]["url"], follow_redirects=True)
        a2 = await _anonymous_get(harness, images[0]["url"], follow_redirects=True)
        b = await _anonymous_get(harness, images[1]["url"], follow_redirects=True)
        state = await harness.state()
    assert a1.content == a2.content
    assert a1.content != b.content
    assert state["images_rendered"] == 2


async def test_deleted_workflow_blobs_are_gone(harness: Harness) -> None:
    """After DELETE, the workflow's blob URLs answer 404."""
    with anyio.fail_after(10):
        wf = await _done(harness)
        await harness.client.delete(f"/v2/consumer/workflows/{wf['id']}")
        response = await _anonymous_get(harness, _images(wf)[0]["url"])
    assert response.status_code == 404
