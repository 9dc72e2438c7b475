"""A faithful local emulator of Civitai's orchestration API (consumer workflows and blobs).

`make_app(config)` is the Starlette app (its service model at `app.state.emulator`),
`EmulatorTransport(app)` mounts it in-process for httpx, `running_server(config)` serves it
on a real loopback socket, `running_hosts(config)` on two (the API's and a CDN's).
See docs/emulator.md.

Lazy: importing `runner.emulator` (or one of its light modules, such as `config`) loads
neither Starlette nor uvicorn; a name below is imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.emulator.app import ConnectionDropped, make_app
    from runner.emulator.clock import Clock, ManualClock, MonotonicClock
    from runner.emulator.config import (
        EmulatorConfig,
        FaultProfile,
        FaultRule,
        RateLimit,
        load_faults,
    )
    from runner.emulator.ledger import account_id
    from runner.emulator.persist import StateError
    from runner.emulator.server import Hosts, running_hosts, running_server, serve
    from runner.emulator.service import Emulator
    from runner.emulator.transport import EmulatorTransport

_HOME = {
    "Clock": "clock",
    "ConnectionDropped": "app",
    "Emulator": "service",
    "EmulatorConfig": "config",
    "EmulatorTransport": "transport",
    "FaultProfile": "config",
    "FaultRule": "config",
    "Hosts": "server",
    "ManualClock": "clock",
    "MonotonicClock": "clock",
    "RateLimit": "config",
    "StateError": "persist",
    "account_id": "ledger",
    "load_faults": "config",
    "make_app": "app",
    "running_hosts": "server",
    "running_server": "server",
    "serve": "server",
}

__all__ = [
    "Clock",
    "ConnectionDropped",
    "Emulator",
    "EmulatorConfig",
    "EmulatorTransport",
    "FaultProfile",
    "FaultRule",
    "Hosts",
    "ManualClock",
    "MonotonicClock",
    "RateLimit",
    "StateError",
    "account_id",
    "load_faults",
    "make_app",
    "running_hosts",
    "running_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
