"""A phase-aware loopback proxy between `zbatch run` and `zbatch emulator`, for the torture matrix.

The runner is pointed at the proxy (`--api-url`); the proxy relays every byte to the emulator
unchanged and tells each request's phase from its route:

- `submit`: `POST /v2/consumer/workflows` (not a whatif preview, which spends nothing);
- `poll`: `GET /v2/consumer/workflows…` (by tag, or one workflow);
- `download`: anything under `/v2/consumer/blobs/` (the signed URL, its redirect, a refresh);
- `commit`: the moment just after a whole answer of the three above reached the runner, when
  the runner is writing what it learned to `batch.sqlite`.

Armed with `Trigger`s, the proxy acts at the n-th request of a phase in the current run:
SIGKILL the runner while the request is in flight, mid-body, or just after the answer; drop,
cut or stall the connection (network faults); call a hook (fill the disk); or send a signal.
Because the emulator builds its URLs from the Host header, signed blob URLs point back at
the proxy, so downloads pass through it too.

h11 only finds where each message ends; the bytes relayed are the bytes received, so the
emulator's own hostile answers (a lying content-length, a broken body) reach the runner as
the emulator wrote them. The proxy runs its own event loop in a daemon thread; `stop()`
closes every connection.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

PHASES = ("submit", "poll", "download", "commit")
CHUNK = 65536
UPSTREAM_IDLE_S = 60.0  # a silent upstream is given up after this long


class Act(enum.Enum):
    """What the proxy does at an armed request."""

    KILL_IN_FLIGHT = "kill in flight"  # the request reached the service; the answer never comes
    KILL_MID_BODY = "kill mid-body"  # the answer's head and part of its body, then SIGKILL
    KILL_AFTER = "kill after"  # the whole answer, then SIGKILL `delay_s` later (commit)
    DROP_BEFORE = "drop before"  # the connection closes before the request reaches the service
    DROP_AFTER = "drop after"  # the service acted and answered; the runner's connection closes
    CUT_BODY = "cut body"  # part of the answer, then the connection closes
    STALL = "stall"  # the answer's head, then nothing for `delay_s`, then the connection closes
    RESET_AFTER = "reset after"  # the whole answer, then the connection closes (commit)
    HOOK = "hook"  # call the trigger's hook (fill the disk), then relay as usual
    SIGNAL = "signal"  # send the trigger's signal, then relay as usual


@dataclass(frozen=True)
class Trigger:
    """Do `act` at the `nth` (1-based) request of `phase` in the current run."""

    phase: str
    nth: int
    act: Act
    delay_s: float = 0.0
    signum: int = signal.SIGKILL
    hook: Callable[[], None] | None = None
    then_kill_s: float | None = None  # SIGNAL: a SIGKILL this long after the signal (the drain)


@dataclass
class RunLog:
    """What the proxy saw and did during one run."""

    requests: Counter[str] = field(default_factory=Counter)
    fired: list[tuple[str, int, Act]] = field(default_factory=list)


def phase_of(method: str, target: str) -> str | None:
    """The phase a request belongs to, from its method and target; None: not tracked."""
    path, _, query = target.partition("?")
    if path == "/v2/consumer/workflows" and method == "POST":
        return None if "whatif=true" in query else "submit"
    if path.startswith("/v2/consumer/workflows") and method == "GET":
        return "poll"
    if path.startswith("/v2/consumer/blobs/"):
        return "download"
    return None


class PhaseProxy:
    """Relays 127.0.0.1:`port` to the emulator at `upstream_port`; acts on armed triggers."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._triggers: list[Trigger] = []
        self.log = RunLog()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control, from the harness's thread ------------------------------------------------

    def __enter__(self) -> PhaseProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, pid: int, triggers: list[Trigger]) -> RunLog:
        """Start a new run: `pid` is the runner; `triggers` fire during it. Returns its log."""
        with self._lock:
            self._pid = pid
            self._triggers = list(triggers)
            self.log = RunLog()
            return self.log

    def disarm(self) -> None:
        with self._lock:
            self._pid = None
            self._triggers = []

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the loop's side -------------------------------------------------------------------

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _next(self, phase: str) -> Trigger | None:
        """Count a request of `phase`; the trigger armed for it, if any (fires once)."""
        with self._lock:
            self.log.requests[phase] += 1
            n = self.log.requests[phase]
            for trigger in self._triggers:
                if trigger.phase == phase and trigger.nth == n:
                    self._triggers.remove(trigger)
                    self.log.fired.append((phase, n, trigger.act))
                    return trigger
            return None

    def _signal(self, signum: int) -> None:
        with self._lock:
            pid = self._pid
        if pid is not None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _send(self, trigger: Trigger) -> None:
        """A SIGNAL trigger: its signal now, and its SIGKILL later if it has one."""
        self._signal(trigger.signum)
        if trigger.then_kill_s is not None:
            self._loop.call_later(trigger.then_kill_s, self._signal, signal.SIGKILL)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self._writers.add(cwriter)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        leftover = b""
        try:
            while True:
                got = await _read_request(creader, leftover)
                if got is None:
                    return
                raw, method, target, leftover = got
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    self._writers.add(upstream[1])
                if not await self._exchange(raw, method, target, upstream, cwriter):
                    return
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            for writer in (cwriter, upstream[1] if upstream else None):
                if writer is not None:
                    writer.transport.abort()
                    self._writers.discard(writer)

    async def _exchange(
        self,
        raw: bytes,
        method: str,
        target: str,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        cwriter: asyncio.StreamWriter,
    ) -> bool:
        """Relay one request and its answer, acting on a trigger; False: close the connection."""
        phase = phase_of(method, target)
        trigger = self._next(phase) if phase else None
        act = trigger.act if trigger else None
        if trigger is not None and act is Act.HOOK and trigger.hook is not None:
            trigger.hook()
        if trigger is not None and act is Act.SIGNAL:
            self._send(trigger)
        if act is Act.DROP_BEFORE:
            return False
        ureader, uwriter = upstream
        uwriter.write(raw)
        await uwriter.drain()
        if act is Act.KILL_IN_FLIGHT:
            self._signal(signal.SIGKILL)
            return False
        head, body, whole = await _read_response(ureader, method)
        if not whole:  # the service broke off (a dropped answer): so does the proxy
            cwriter.write(head + body)
            await cwriter.drain()
            return False
        if act is Act.DROP_AFTER:
            return False
        if act in (Act.KILL_MID_BODY, Act.CUT_BODY, Act.STALL):
            cwriter.write(head if act is Act.STALL else head + body[: len(body) // 2])
            await cwriter.drain()
            if act is Act.KILL_MID_BODY:
                self._signal(signal.SIGKILL)
            elif act is Act.STALL and trigger is not None:
                await asyncio.sleep(trigger.delay_s)
            return False
        cwriter.write(head + body)
        await cwriter.drain()
        commit = self._next("commit") if phase else None
        if commit is not None:
            if commit.act is Act.KILL_AFTER:
                self._loop.call_later(commit.delay_s, self._signal, signal.SIGKILL)
            elif commit.act is Act.SIGNAL:
                self._loop.call_later(commit.delay_s, self._send, commit)
            elif commit.act is Act.HOOK and commit.hook is not None:
                commit.hook()
            elif commit.act is Act.RESET_AFTER:
                return False
        return not _closes(head)


async def _read_request(
    reader: asyncio.StreamReader, leftover: bytes
) -> tuple[bytes, str, str, bytes] | None:
    """One whole request: its raw bytes, method, target and the bytes read past it."""
    conn = h11.Connection(h11.SERVER)
    raw = bytearray()
    if leftover:
        conn.receive_data(leftover)
        raw += leftover
    method = target = ""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(CHUNK)
            if not data:
                return None
            conn.receive_data(data)
            raw += data
        elif isinstance(event, h11.Request):
            method, target = event.method.decode(), event.target.decode()
        elif isinstance(event, h11.EndOfMessage):
            rest = bytes(conn.trailing_data[0])
            return bytes(raw[: len(raw) - len(rest)]), method, target, rest
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bytes, bool]:
    """One answer from the service: its head, its body bytes as sent, and whether it was whole."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    raw = bytearray()
    whole = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:  # closed mid-body, or bytes past a lying length
            break
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(CHUNK), UPSTREAM_IDLE_S)
            conn.receive_data(data)  # b"" tells h11 the service closed
            raw += data
        elif isinstance(event, h11.EndOfMessage):
            whole = not conn.trailing_data[0]
            break
        elif isinstance(event, h11.ConnectionClosed):
            break
    end = raw.find(b"\r\n\r\n")
    split = end + 4 if end >= 0 else len(raw)
    return bytes(raw[:split]), bytes(raw[split:]), whole


def _closes(head: bytes) -> bool:
    """True when the answer asks to close the connection."""
    return any(
        line.lower().replace(b" ", b"") == b"connection:close" for line in head.split(b"\r\n")
    )
