"""Serve the emulator over a real socket: `serve` for the CLI, `running_server` for tests."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from runner.emulator.app import ConnectionDropped, make_app
from runner.emulator.clock import Clock
from runner.emulator.config import EmulatorConfig

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0
log = logging.getLogger("runner.emulator")


class EmulatedFaults(logging.Filter):
    """On uvicorn's error logger: an emulated dropped connection (`ConnectionDropped`) is a
    fault the emulator meant, not an error of the application. Instead of uvicorn's
    "Exception in ASGI application" and its traceback on the user's terminal, it is one
    debug line on the emulator's logger (`runner.emulator`) naming the fault's kind."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionDropped):
            log.debug("emulated fault %s: connection dropped mid-response", exc.kind)
            return False
        return True


def quiet_emulated_faults() -> None:
    """Install `EmulatedFaults` on uvicorn's error logger (once; after uvicorn's own logging
    configuration, which `uvicorn.Config` applies)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, EmulatedFaults) for f in logger.filters):
        logger.addFilter(EmulatedFaults())


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    use_colors: bool | None = None,
) -> None:
    """Run the emulator until interrupted (blocking); `zbatch emulator` calls this.

    Its log is uvicorn's on stderr (colored when `use_colors`; None: on a terminal), each
    emulated fault one INFO line in it with its kind (`runner.emulator`'s records).
    """
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(config),
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            use_colors=use_colors,
        )
    )  # uvicorn.Config has configured uvicorn's loggers: the emulator's lines join theirs
    emulator_log = logging.getLogger("runner.emulator")
    emulator_log.handlers = list(logging.getLogger("uvicorn").handlers)
    emulator_log.setLevel(logging.INFO)
    emulator_log.propagate = False
    quiet_emulated_faults()
    server.run()


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Hosts:
    """The base URLs of a running emulator: its API origin and its CDN origin (content)."""

    api: str
    cdn: str


@contextmanager
def running_hosts(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    *,
    clock: Clock | None = None,
) -> Iterator[Hosts]:
    """The emulator on two loopback listeners of one server: the API's and a CDN's.

    Content URLs (where signed blob URLs redirect) point at the CDN listener, another origin
    (its own port), as Civitai's point at a CDN; `requests.by_host` in `/_emulator/state`
    tells what each origin saw. Always stopped when the block ends.
    """
    sockets = [_listening_socket(host, 0), _listening_socket(host, 0)]
    api, cdn = (f"http://{host}:{sock.getsockname()[1]}" for sock in sockets)
    config = dataclasses.replace(config or EmulatorConfig(), cdn_base_url=cdn)
    try:
        app = make_app(config, clock=clock)
    except BaseException:  # a state file that is not one (persist.StateError)
        for sock in sockets:
            sock.close()
        raise
    with _serving(app, sockets):
        yield Hosts(api=api, cdn=cdn)


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
    app = make_app(config or EmulatorConfig(), clock=clock)  # before the socket: it may raise
    sock = _listening_socket(host, port)
    with _serving(app, [sock]):
        yield f"http://{host}:{sock.getsockname()[1]}"


@contextmanager
def _serving(app: Starlette, sockets: list[socket.socket]) -> Iterator[None]:
    """Run one uvicorn server over the bound `sockets` in a thread; always stop it."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    quiet_emulated_faults()
    name = "emulator-" + "-".join(str(sock.getsockname()[1]) for sock in sockets)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": sockets}, name=name, daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start ({name})")
            time.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        for sock in sockets:
            sock.close()
