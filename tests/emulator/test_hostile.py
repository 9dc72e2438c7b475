"""The hostile fault kinds (issue 9): each fires as specified, once (p=1, times=1), then the
service answers normally again; and the CDN origin with per-host request counts."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    make_app,
)
from runner.emulator.config import FAULT_KINDS, HOSTILE_FAULT_KINDS, OTHER_HOST_URL
from runner.emulator.hostile import BOMB_SIDE, NOT_AN_IMAGE, UNKNOWN_STATUS, bomb_png
from tests.emulator.conftest import TOKEN, WORKFLOWS, Harness, HarnessFactory, template

ONCE = FaultRule(p=1.0, times=1)
CDN = "http://cdn.emulator.test"


async def hostile(make_harness: HarnessFactory, **rules: FaultRule) -> Harness:
    return await make_harness(time_scale=0, faults=FaultProfile(**rules))


@contextlib.asynccontextmanager
async def anonymous(
    harness: Harness, base_url: str = "http://emulator"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same app without any Authorization header, as a downloader is."""
    async with httpx.AsyncClient(
        transport=EmulatorTransport(harness.app), base_url=base_url
    ) as client:
        yield client


async def submitted(harness: Harness, **overrides: Any) -> dict[str, Any]:
    response = await harness.submit(template(**overrides))
    assert response.status_code == 200  # time_scale 0: terminal at once
    body: dict[str, Any] = response.json()
    return body


def image_url(workflow: dict[str, Any]) -> str:
    url: str = workflow["steps"][0]["output"]["images"][0]["url"]
    return url


async def content(harness: Harness, **overrides: Any) -> httpx.Response:
    """Follow a fresh workflow's signed URL to its content, anonymously."""
    wf = await submitted(harness, width=64, height=64, **overrides)
    async with anonymous(harness) as client:
        return await client.get(image_url(wf), follow_redirects=True)


def test_every_hostile_kind_is_a_fault_kind() -> None:
    assert set(HOSTILE_FAULT_KINDS) <= set(FAULT_KINDS)
    profile = FaultProfile.from_mapping({k: {"p": 0.5, "size_bytes": 10} for k in FAULT_KINDS})
    assert all(profile.rule(k).p == 0.5 for k in HOSTILE_FAULT_KINDS)
    with pytest.raises(ValueError, match="size_bytes=0 is out of range"):
        FaultProfile.from_mapping({"read_huge_body": {"p": 1, "size_bytes": 0}})


async def test_read_malformed_json_is_a_200_that_does_not_parse(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, read_malformed_json=ONCE)
    with anyio.fail_after(5):
        wf = await submitted(harness)
        broken = await harness.get(wf["id"])
        again = await harness.get(wf["id"])
    assert broken.status_code == 200
    assert broken.headers["content-type"] == "application/json"
    assert int(broken.headers["content-length"]) == len(broken.content)  # not a cut body
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)
    assert again.json()["id"] == wf["id"]
    assert harness.service.faults.fired == {"read_malformed_json": 1}


async def test_read_wrong_shape_is_valid_json_of_another_schema(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, read_wrong_shape=FaultRule(p=1.0, times=2))
    with anyio.fail_after(5):
        wf = await submitted(harness)
        odd = await harness.get(wf["id"])
        page = await harness.client.get(WORKFLOWS, params={"tags": "x"})
        again = await harness.get(wf["id"])
    assert odd.status_code == 200
    assert set(odd.json()) == {"data", "version"}
    assert odd.json()["data"][0]["id"] == wf["id"]
    assert set(page.json()) == {"data", "version"}
    assert again.json()["status"] == "succeeded"


async def test_read_unknown_status_names_a_status_outside_the_enum(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, read_unknown_status=FaultRule(p=1.0, times=2))
    with anyio.fail_after(5):
        wf = await submitted(harness, tags=["t"])
        odd = await harness.get(wf["id"])
        page = await harness.client.get(WORKFLOWS, params={"tags": "t"})
        again = await harness.get(wf["id"])
    assert odd.json()["status"] == UNKNOWN_STATUS
    assert page.json()["items"][0]["status"] == UNKNOWN_STATUS
    assert again.json()["status"] == "succeeded"
    assert UNKNOWN_STATUS not in {"unassigned", "preparing", "scheduled", "processing",
                                  "succeeded", "failed", "expired", "canceled"}  # fmt: skip


async def test_read_huge_body_streams_size_bytes_without_a_length(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(
        make_harness, read_huge_body=FaultRule(p=1.0, times=1, size_bytes=300_000)
    )
    with anyio.fail_after(5):
        wf = await submitted(harness)
        huge = await harness.get(wf["id"])
    assert huge.status_code == 200
    assert "content-length" not in huge.headers
    assert len(huge.content) > 300_000
    assert json.loads(huge.content)["pad"] == "x" * 300_000


async def test_read_drip_never_ends(make_harness: HarnessFactory) -> None:
    """On a ManualClock nobody advances, the drip's next byte never comes: the answer never
    completes (over a socket the first bytes arrive: tests/e2e/test_hostile_responses.py)."""
    harness = await hostile(make_harness, read_drip=ONCE)
    wf = await submitted(harness)
    finished = False
    with anyio.move_on_after(0.3):
        await harness.get(wf["id"])
        finished = True
    assert not finished
    assert harness.service.faults.fired == {"read_drip": 1}


@pytest.mark.parametrize(("cdn", "other"), [(None, OTHER_HOST_URL), (CDN, CDN)])
async def test_read_redirect_other_host_sends_an_api_call_elsewhere(
    make_harness: HarnessFactory, cdn: str | None, other: str
) -> None:
    harness = await make_harness(
        time_scale=0, cdn_base_url=cdn, faults=FaultProfile(read_redirect_other_host=ONCE)
    )
    with anyio.fail_after(5):
        wf = await submitted(harness)
        moved = await harness.get(wf["id"], wait=0)
    assert moved.status_code == 307
    assert moved.headers["location"] == f"{other}{WORKFLOWS}/{wf['id']}?wait=0"


async def test_blob_redirect_plain_http_downgrades_an_https_blob_url() -> None:
    app = make_app(
        EmulatorConfig(time_scale=0, faults=FaultProfile(blob_redirect_plain_http=ONCE)),
        clock=ManualClock(),
    )
    async with httpx.AsyncClient(
        transport=EmulatorTransport(app),
        base_url="https://api.emulator.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        wf = (await client.post(WORKFLOWS, json=template(width=64, height=64))).json()
        url = image_url(wf)
        assert url.startswith("https://api.emulator.test/")
        first = await client.get(url, headers={"Authorization": ""})
        second = await client.get(url, headers={"Authorization": ""})
    assert first.headers["location"].startswith("http://api.emulator.test/v2/consumer/blobs/")
    assert second.headers["location"].startswith("https://api.emulator.test/")


async def test_blob_not_image_is_an_error_page_sold_as_an_image(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, blob_not_image=ONCE)
    with anyio.fail_after(5):
        got = await content(harness)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    assert got.content == NOT_AN_IMAGE


async def test_blob_bomb_is_a_small_png_declaring_a_hundred_million_pixels(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, blob_bomb=ONCE)
    with anyio.fail_after(10):
        got = await content(harness)
    data = got.content
    assert data == bomb_png()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (BOMB_SIDE, BOMB_SIDE)
    assert len(data) < 100_000
    assert Image.MAX_IMAGE_PIXELS is not None
    assert BOMB_SIDE * BOMB_SIDE > Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombWarning):  # the suite turns warnings to errors
        Image.open(io.BytesIO(data))


async def test_blob_wrong_size_is_a_good_image_of_another_size(
    make_harness: HarnessFactory,
) -> None:
    harness = await hostile(make_harness, blob_wrong_size=ONCE)
    with anyio.fail_after(5):
        got = await content(harness, outputFormat="png")
    with Image.open(io.BytesIO(got.content)) as picture:
        picture.load()
        assert (picture.format, picture.size) == ("PNG", (80, 64))


async def test_blob_lying_length_declares_another_length(make_harness: HarnessFactory) -> None:
    harness = await hostile(make_harness, blob_lying_length=FaultRule(p=1.0))
    lies = []
    with anyio.fail_after(10):
        for seed in range(6):
            got = await content(harness, seed=seed)
            declared = int(got.headers["content-length"])
            assert declared != len(got.content)
            lies.append("longer" if declared > len(got.content) else "shorter")
    assert set(lies) == {"longer", "shorter"}  # a seeded mix of both lies


async def test_the_cdn_origin_serves_content_and_hosts_are_counted(
    make_harness: HarnessFactory,
) -> None:
    """With `cdn_base_url`, signed URLs stay on the API's host and redirect to the CDN's;
    `requests.by_host` and `with_authorization_by_host` tell the two apart."""
    harness = await make_harness(time_scale=0, cdn_base_url=CDN)
    with anyio.fail_after(5):
        wf = await submitted(harness, width=64, height=64)
        url = image_url(wf)
        async with anonymous(harness) as client:
            moved = await client.get(url)
            got = await client.get(url, follow_redirects=True)
        state = await harness.state()
    assert url.startswith("http://emulator/")
    assert moved.headers["location"].startswith(f"{CDN}/v2/consumer/blobs/content/")
    assert got.status_code == 200
    requests = state["requests"]
    # the submit and two signed URLs (the state read is counted once it is answered)
    assert requests["by_host"] == {"emulator": 3, "cdn.emulator.test": 1}
    # the submit carried the token; the signed URLs and the CDN did not
    assert requests["with_authorization_by_host"] == {"emulator": 1}
