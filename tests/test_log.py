"""Tests for runner/log.py: redaction everywhere, JSON lines off a TTY, the JSONL file sink."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from runner.log import configure_logging, redact, redact_event

SECRET = "civ_T0KEN_s3cr3t_9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def _reset_structlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    yield
    configure_logging(json=True)  # drop configured secrets and close any file sink
    structlog.reset_defaults()


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_redact_replaces_patterns():
    """Bearer credentials, sig=/token=/signature= values and content-URL secrets vanish."""
    text = (
        "Authorization: Bearer abc.DEF-123 and bearer xyz "
        "https://cdn.test/a.jpeg?sig=S1&w=5 access_token=T2&X-Amz-Signature=S3 "
        "https://x.test/v2/consumer/blobs/content/eyJhbGci?x=1 design=ok "
        "the bearer token is not valid"
    )
    assert redact(text) == (
        "Authorization: Bearer [REDACTED] and bearer [REDACTED] "
        "https://cdn.test/a.jpeg?sig=[REDACTED]&w=5 access_token=[REDACTED]&"
        "X-Amz-Signature=[REDACTED] https://x.test/v2/consumer/blobs/content/[REDACTED] "
        "design=ok the bearer token is not valid"
    )


def test_redact_uses_configured_secrets_and_env_token(monkeypatch):
    """A configured secret and $CIVITAI_API_TOKEN are replaced wherever they appear."""
    configure_logging(json=True, secrets=["hunter2-longish"])
    monkeypatch.setenv("CIVITAI_API_TOKEN", SECRET)
    assert redact(f"x{SECRET}y and hunter2-longish") == "x[REDACTED]y and [REDACTED]"


def test_processor_redacts_nested_values(monkeypatch):
    """Strings nested in dicts, lists and tuples are redacted; secret-named keys entirely."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", SECRET)
    event = {
        "event": f"request failed for {SECRET}",
        "request": {"headers": {"Authorization": f"Bearer {SECRET}"}, "url": "u?sig=S1"},
        "attempts": [f"echo {SECRET}", ("Bearer zzz", 3)],
        "token": "opaque-but-named-token",
        "count": 3,
        "ok": None,
    }
    assert redact_event(None, "info", event) == {
        "event": "request failed for [REDACTED]",
        "request": {"headers": {"Authorization": "[REDACTED]"}, "url": "u?sig=[REDACTED]"},
        "attempts": ["echo [REDACTED]", ("Bearer [REDACTED]", 3)],
        "token": "[REDACTED]",
        "count": 3,
        "ok": None,
    }


def test_processor_redacts_objects_rendered_as_text():
    """A value that is not a plain type but renders with a secret is replaced by its redaction."""

    class Url:
        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return self.text

    harmless = Url("https://cdn.test/a.jpeg")
    event = redact_event(
        None, "info", {"url": Url("https://cdn.test/a.jpeg?sig=S1"), "ok": harmless}
    )
    assert event == {"url": "https://cdn.test/a.jpeg?sig=[REDACTED]", "ok": harmless}
    assert event["ok"] is harmless


def test_json_lines_on_stderr_when_not_a_tty(capsys):
    """Off a TTY (as under pytest) events are JSON lines on stderr, redacted, nothing on stdout."""
    configure_logging(secrets=[SECRET])
    structlog.get_logger().info("cell_submitted", cell="c1", cost_buzz=8, hdr=f"Bearer {SECRET}")
    out, err = capsys.readouterr()
    assert out == ""
    [line] = _lines(err)
    assert line["event"] == "cell_submitted"
    assert line["level"] == "info"
    assert (line["cell"], line["cost_buzz"], line["hdr"]) == ("c1", 8, "Bearer [REDACTED]")
    assert "timestamp" in line
    assert SECRET not in err


def test_level_filters_events(capsys):
    """Events below the configured level are dropped."""
    configure_logging(json=True, level="warning")
    log = structlog.get_logger()
    log.info("poll")
    log.warning("retry", attempt=2)
    [line] = _lines(capsys.readouterr().err)
    assert line["event"] == "retry"


def test_unknown_level_names_the_allowed_ones():
    """A bad level is refused with the list of allowed levels."""
    with pytest.raises(ValueError, match="debug, info, warning, error, critical"):
        configure_logging(level="loud")


def test_console_renderer_on_request(capsys):
    """json=False renders for a human, still redacted."""
    configure_logging(json=False, secrets=[SECRET])
    structlog.get_logger().info("download_failed", url=f"https://x/{SECRET}?sig=abc")
    err = capsys.readouterr().err
    assert "download_failed" in err
    assert not err.lstrip().startswith("{")
    assert SECRET not in err
    assert "sig=abc" not in err


def test_log_file_gets_jsonl_copy(tmp_path: Path, capsys):
    """log_file appends each redacted event as one JSON line, beside stderr's output."""
    path = tmp_path / "out" / "log.jsonl"
    configure_logging(json=False, secrets=[SECRET], log_file=path)
    log = structlog.get_logger()
    log.info("batch_started", batch="run7")
    log.error("stopped", reason=f"401 for {SECRET}")
    lines = _lines(path.read_text(encoding="utf-8"))
    assert [line["event"] for line in lines] == ["batch_started", "stopped"]
    assert lines[1]["reason"] == "401 for [REDACTED]"
    assert "batch_started" in capsys.readouterr().err


def test_tracebacks_are_redacted(capsys):
    """An exception logged with exc_info is rendered as text and redacted like any string."""
    configure_logging(json=True, secrets=[SECRET])
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        structlog.get_logger().exception("crashed")
    [line] = _lines(capsys.readouterr().err)
    assert "RuntimeError: boom with [REDACTED]" in line["exception"]


def test_console_level_quiets_stderr_but_not_the_file(tmp_path, capsys) -> None:
    """With a live display on the terminal, info events go to log.jsonl only."""
    log_file = tmp_path / "log.jsonl"
    configure_logging(json=True, level="info", log_file=log_file, console_level="warning")
    logger = structlog.get_logger("t")
    logger.info("quiet_event")
    logger.warning("loud_event")
    err = capsys.readouterr().err
    assert "loud_event" in err
    assert "quiet_event" not in err
    text = log_file.read_text()
    assert "quiet_event" in text
    assert "loud_event" in text


def test_console_sink_takes_log_lines_and_stderr_handlers_for_its_block(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While a live display is up, every line meant for stderr goes through it, whole."""
    import logging
    import sys

    from runner.log import console_sink

    configure_logging(json=True, console_level="warning")
    emulator_log = logging.getLogger("test.embedded.server")
    handler = logging.StreamHandler(sys.stderr)
    emulator_log.addHandler(handler)
    emulator_log.propagate = False
    shown: list[str] = []
    try:
        with console_sink(shown.append):
            structlog.get_logger().warning("retry", tries=1)
            structlog.get_logger().info("cell_submitted")  # below stderr's level: nowhere
            emulator_log.error("Exception in ASGI application\nTraceback (most recent call last):")
        assert capsys.readouterr().err == ""
        assert [json.loads(shown[0])["event"]] == ["retry"]
        assert shown[1:] == ["Exception in ASGI application", "Traceback (most recent call last):"]
        assert handler.stream is sys.stderr  # given back after the block
        structlog.get_logger().warning("after")
        assert _lines(capsys.readouterr().err)[0]["event"] == "after"
    finally:
        emulator_log.removeHandler(handler)
