"""A faithful local emulator of Civitai's orchestration API (consumer workflows and blobs).

`make_app(config)` is the Starlette app (its service model at `app.state.emulator`),
`EmulatorTransport(app)` mounts it in-process for httpx, `running_server(config)` serves it
on a real loopback socket, `running_hosts(config)` on two (the API's and a CDN's).
See docs/emulator.md.
"""

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
from runner.emulator.server import Hosts, running_hosts, running_server, serve
from runner.emulator.service import Emulator
from runner.emulator.transport import EmulatorTransport

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
    "account_id",
    "load_faults",
    "make_app",
    "running_hosts",
    "running_server",
    "serve",
]
