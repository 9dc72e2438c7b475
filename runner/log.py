"""Logging setup: structlog to stderr (JSON lines or console), an optional JSONL file, redaction.

Every event passes through `redact_event` before any renderer sees it, so the API token, a
`Bearer …` header, a URL signature (`sig=…`, `token=…`, `signature=…`) or the secret part of a
`/blobs/content/<token>` URL never reaches a log line, whatever module logged it. Other modules
use `redact(text)` for strings they build themselves (error messages, URLs).

```python
configure_logging(level="info", log_file=out / "log.jsonl")
structlog.get_logger().info("cell_submitted", cell=key, workflow=wid, cost_buzz=8)
```
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog

from runner.disk import disk_error, open_private
from runner.errors import OutFolderError

TOKEN_ENV = "CIVITAI_API_TOKEN"
REDACTED = "[REDACTED]"
LEVELS = ("debug", "info", "warning", "error", "critical")

# `Bearer <credential>` anywhere (headers echoed in a body, a repr of a request, …).
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+(?!token\b)[A-Za-z0-9._~+/=-]+")
# `sig=…`, `token=…`, `signature=…`, also as the tail of `access_token=` or `X-Amz-Signature=`.
_QUERY_SECRET_RE = re.compile(r"(?i)(?<![a-z0-9])(sig|signature|token|credential)=[^&\s\"'<>]+")
# Signed content URLs carry their secret in the path: `/v2/consumer/blobs/content/<token>`.
_CONTENT_PATH_RE = re.compile(r"(/blobs/content/)[^\s\"'<>]+")
# For `redact_url`: user info, any query parameter named like a credential, a content tail.
_USERINFO_RE = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#@]*@", re.IGNORECASE)
_URL_SECRET_PARAM_RE = re.compile(r"(?i)([?&][^=&#]*(?:sig|token|credential)[^=&#]*=)[^&#]*")
_URL_CONTENT_TAIL_RE = re.compile(r"(/blobs/content/).*")
# A string none of the patterns above can match in: what most values are (names, ids, keys).
_MAY_HOLD_SECRET_RE = re.compile(r"(?i)bearer|sig|token|credential|/blobs/content/")
# Whole values of these keys are secrets, whatever they look like.
_SECRET_KEYS = frozenset({"authorization", "token", "api_token", "api_key", "password"})

_secrets: tuple[str, ...] = ()
_file_sink: _JsonlFileSink | None = None
# `--color`: "auto" (colors on a terminal unless $NO_COLOR is set), "always" or "never".
COLOR_MODES = ("auto", "always", "never")
_color_mode = "auto"


def set_color(mode: str) -> None:
    """Set the process's color mode (`zbatch --color`); `color_for` obeys it."""
    global _color_mode
    if mode not in COLOR_MODES:
        raise ValueError(f"color mode {mode!r} is not one of {', '.join(COLOR_MODES)}")
    _color_mode = mode


def color_mode() -> str:
    """The mode `set_color` set: "auto", "always" or "never"."""
    return _color_mode


def color_for(stream: IO[str]) -> bool:
    """Whether to color what goes to `stream`: --color always/never, else on a terminal
    unless $NO_COLOR is set to anything non-empty (https://no-color.org)."""
    if _color_mode != "auto":
        return _color_mode == "always"
    if os.environ.get("NO_COLOR", ""):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# While a live display owns the terminal, rendered log lines go through it (see `console_sink`).
_console_write: Callable[[str], None] | None = None


def redact(text: str) -> str:
    """Return `text` with the configured secrets, the env token and credential patterns replaced.

    Replaces every configured secret and `$CIVITAI_API_TOKEN` wholesale, then `Bearer <x>`,
    `sig=<x>` / `token=<x>` / `signature=<x>` and `/blobs/content/<x>` by `[REDACTED]`.
    """
    for secret in _active_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _MAY_HOLD_SECRET_RE.search(text) is None:  # one search, not three substitutions
        return text
    text = _BEARER_RE.sub(rf"\1 {REDACTED}", text)
    text = _QUERY_SECRET_RE.sub(rf"\1={REDACTED}", text)
    return _CONTENT_PATH_RE.sub(rf"\1{REDACTED}", text)


def redact_url(url: object) -> str:
    """`url` fit for a message or a log line: no user info, no value of a query parameter
    whose name holds sig/token/credential, nothing after `/blobs/content/`."""
    text = _USERINFO_RE.sub(r"\1", str(url))
    text = _URL_SECRET_PARAM_RE.sub(rf"\1{REDACTED}", text)
    return redact(_URL_CONTENT_TAIL_RE.sub(rf"\1{REDACTED}", text))


def _active_secrets() -> tuple[str, ...]:
    env_token = os.environ.get(TOKEN_ENV, "").strip()
    if env_token and env_token not in _secrets:
        return (*_secrets, env_token)
    return _secrets


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item) for item in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else (a URL object, an exception, a request) is rendered with str() later:
    # redact that text now, but keep the object when it holds nothing to hide.
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _redact_item(key: object, value: Any) -> Any:
    if isinstance(key, str) and key.lower() in _SECRET_KEYS and value:
        return REDACTED
    return _redact_value(value)


def redact_event(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every string value, recursively through dicts and lists."""
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key])
    return event_dict


# One encoder for every line (`json.dumps` with an argument builds a new one per call).
_ENCODER = jsonlib.JSONEncoder(default=str)


class _JsonlFileSink:
    """structlog processor: append each event as one JSON line to a file, pass it on unchanged."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_private(path, os.O_WRONLY | os.O_APPEND)  # a new log is 0600
        except OSError as exc:  # one line naming the folder, never a traceback
            raise disk_error(exc, path.parent, "opening the log file") or OutFolderError(
                f"{path.parent} cannot hold the log file {path.name}"
                f" ({exc.strerror or exc}): choose another out folder"
            ) from None
        self.path = path
        self._handle: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self._failed: str | None = None  # why the file stopped taking events
        self._lock = threading.Lock()

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        with self._lock:  # an embedded emulator's thread logs too (forward_stdlib)
            self._write(event_dict)
        return event_dict

    def _write(self, event_dict: MutableMapping[str, Any]) -> None:
        if self._failed is None:
            try:
                self._handle.write(_ENCODER.encode(event_dict) + "\n")
                self._handle.flush()
            except OSError as exc:  # a full disk must not turn every log call into a crash:
                self._failed = exc.strerror or str(exc)  # the file stops, stderr goes on
                event_dict["log_file_failed"] = f"{self.path}: {self._failed}"

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError:
            pass  # the flush failed again; nothing more can be kept


class _StderrLogger:
    """structlog's logger: one rendered line to stderr, or through a live display's console."""

    def msg(self, message: str) -> None:
        write = _console_write
        if write is not None:
            write(message)
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


class _LineStream:
    """A file that hands each complete line written to it to `write` (for stdlib handlers)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._write(line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._write(self._partial)
            self._partial = ""


def _stderr_handlers() -> list[logging.StreamHandler[Any]]:
    """The stdlib logging handlers that write to stderr (uvicorn's, in the embedded emulator)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]
    return [
        h
        for logger in loggers
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(getattr(type(h), "stream", None), property)  # Python's last resort
        and h.stream in (sys.stderr, sys.__stderr__)
    ]


@contextmanager
def console_sink(write: Callable[[str], None]) -> Iterator[None]:
    """Within the block, rendered log lines go to `write` instead of stderr.

    A live display (rich's Live panel) passes its console's print here, so a warning is
    printed as whole lines above the panel instead of being written under it. The stdlib
    logging handlers that write to stderr (and Python's last-resort handler) are routed
    there too for the block, one line at a time.
    """
    global _console_write
    before, _console_write = _console_write, write
    stream = _LineStream(write)
    handlers = [(h, h.setStream(stream)) for h in _stderr_handlers()]
    last_resort = logging.lastResort
    logging.lastResort = logging.StreamHandler(stream)
    logging.lastResort.setLevel(logging.WARNING)
    try:
        yield
    finally:
        _console_write = before
        logging.lastResort = last_resort
        for handler, old in handlers:
            handler.setStream(old)
        stream.flush()


class _DropBelow:
    """A processor that drops events under a level (after the file sink has kept them)."""

    def __init__(self, level: str) -> None:
        self.levels = logging.getLevelNamesMapping()  # a copy per call: taken once
        self.threshold = self.levels[level.upper()]

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        name = str(event_dict.get("level", method_name)).upper()
        if self.levels.get(name, logging.INFO) < self.threshold:
            raise structlog.DropEvent
        return event_dict


def _level_number(level: str) -> int:
    """The stdlib number of the level named `level` (one of `LEVELS`); ValueError if none."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return logging.getLevelNamesMapping()[level.upper()]


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "info",
    secrets: Sequence[str] = (),
    log_file: Path | None = None,
    console_level: str | None = None,
) -> None:
    """Configure structlog for the process; call once at startup (again to reconfigure).

    `console_level`, when set above `level`, keeps stderr quieter than `log_file` (a live
    display owns the terminal; the file still gets every event at `level`).

    `json=None` renders JSON lines when stderr is not a TTY (unless `set_color("always")`)
    and the console renderer when it is, colored as `color_for(sys.stderr)` says. `level`
    is one of debug, info, warning, error, critical. `secrets` (and the token in
    `$CIVITAI_API_TOKEN`) are replaced by `[REDACTED]` in every event. `log_file` adds a JSONL
    copy of every event (appended). Logs go to stderr, never to stdout.
    """
    global _secrets, _file_sink
    threshold = _level_number(level)
    _secrets = tuple(s.strip() for s in secrets if s and s.strip())
    if _file_sink is not None:
        _file_sink.close()
        _file_sink = None
    if json is None:  # --color always: the colored console lines, even through a pipe
        json = not sys.stderr.isatty() and _color_mode != "always"

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.StackInfoRenderer(),
        # Plain text tracebacks (no locals), so they pass through redaction like any string.
        structlog.processors.format_exc_info,
        redact_event,
        # After redaction: the level and the time hold nothing to hide (same keys, same order).
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_file is not None:
        _file_sink = _JsonlFileSink(log_file)
        processors.append(_file_sink)
    if console_level is not None:
        _level_number(console_level)  # refused here, not at the first event
        processors.append(_DropBelow(console_level))
    if json:
        processors.append(structlog.processors.JSONRenderer(default=str))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=color_for(sys.stderr)))

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # httpx logs every request URL (with its signature) through stdlib logging at INFO.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


# The attributes every LogRecord has: what a record carries beyond them came in `extra`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class _ToStructlog(logging.Handler):
    """A stdlib handler that logs each record as the structlog event `event`: its level,
    its message and what it carried in `extra` (redacted, to stderr and the log file as
    `configure_logging` set them)."""

    def __init__(self, event: str) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
        structlog.get_logger(record.name).log(
            record.levelno, self.event, message=record.getMessage(), **fields
        )


@contextmanager
def forward_stdlib(name: str, *, event: str) -> Iterator[None]:
    """Within the block, the stdlib logger `name`'s records from INFO up become structlog
    events `event` (an embedded emulator's faults land in OUT/log.jsonl, and on stderr only
    from the console's level up, as every event does)."""
    logger = logging.getLogger(name)
    handler, level = _ToStructlog(event), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
