"""The emulator over a real loopback socket (uvicorn in a thread), as `make demo` uses it."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from runner.emulator import EmulatorConfig, FaultProfile, FaultRule, running_server
from tests.emulator.conftest import WORKFLOWS, template
from tests.openapi_check import assert_schema

AUTH = {"Authorization": "Bearer socket-token"}


def test_submit_poll_and_download_over_a_socket() -> None:
    """Submit, poll to success, follow the signed URL without auth, decode the image."""
    with running_server(EmulatorConfig(time_scale=0.001)) as base_url:
        with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
            submitted = client.post(WORKFLOWS, json=template("sock-1", width=320, height=240))
            assert submitted.status_code in (200, 202)
            wf_id = submitted.json()["id"]
            body = client.get(f"{WORKFLOWS}/{wf_id}", params={"wait": 10}).json()
            assert_schema("Workflow", body)
            assert body["status"] == "succeeded"
            url = body["steps"][0]["output"]["images"][0]["url"]
        assert url.startswith(base_url)
        with httpx.Client(timeout=10, follow_redirects=True) as anonymous:
            image = anonymous.get(url)
    assert image.status_code == 200
    assert image.history[0].status_code == 308
    with Image.open(io.BytesIO(image.content)) as picture:
        assert picture.size == (320, 240)


def test_dropped_connection_is_a_real_protocol_error() -> None:
    """submit_drop_after closes the socket mid-body; the retry finds the one workflow."""
    faults = FaultProfile(submit_drop_after=FaultRule(p=1.0, times=1))
    with running_server(EmulatorConfig(time_scale=0, faults=faults)) as base_url:
        with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                client.post(WORKFLOWS, json=template("sock-drop"))
            retried = client.post(WORKFLOWS, json=template("sock-drop"))
            state = client.get("/_emulator/state").json()
    assert retried.status_code == 200
    assert state["workflows"]["sock-drop"]["ids"] == [retried.json()["id"]]
    assert state["buzz"]["charged_buzz"] == retried.json()["cost"]["total"]


def test_running_server_stops_when_the_block_ends() -> None:
    """After the `with` block the port no longer answers."""
    with running_server(EmulatorConfig(time_scale=0)) as base_url:
        assert httpx.get(f"{base_url}/_emulator/state", timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_emulator/state", timeout=2)


def test_manual_clock_is_driven_over_http() -> None:
    """With a ManualClock the server's time moves only through /_emulator/advance."""
    from runner.emulator import ManualClock

    with running_server(EmulatorConfig(), clock=ManualClock()) as base_url:
        with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
            wf_id = client.post(WORKFLOWS, json=template("sock-clock")).json()["id"]
            before = client.get(f"{WORKFLOWS}/{wf_id}").json()["status"]
            client.post("/_emulator/advance", params={"seconds": 60})
            after = client.get(f"{WORKFLOWS}/{wf_id}")
    assert before == "unassigned"
    assert after.status_code == 200
    assert after.json()["status"] == "succeeded"
