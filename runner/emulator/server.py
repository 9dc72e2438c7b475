"""Serve the emulator over a real socket: `serve` for the CLI, `running_server` for tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from runner.emulator.app import make_app
from runner.emulator.clock import Clock
from runner.emulator.config import EmulatorConfig

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the emulator until interrupted (blocking); `zbatch emulator` calls this."""
    uvicorn.run(make_app(config), host=host, port=port, log_level="info", access_log=False)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Clock | None = None,
) -> Iterator[str]:
    """Start uvicorn in a thread on `port` (0 = a free one), yield its base URL, always stop it.

    With a `ManualClock`, move time over HTTP (`POST /_emulator/advance?seconds=N`), not by
    calling `advance()` from the test's thread: the clock belongs to the server's event loop.
    """
    app = make_app(config or EmulatorConfig(), clock=clock)
    chosen = port or _free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=chosen, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name=f"emulator-{chosen}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {host}:{chosen}")
            time.sleep(0.01)
        yield f"http://{host}:{chosen}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
