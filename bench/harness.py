"""The bench's processes: an emulator child, `zbatch run` children, and what they cost.

The emulator and every runner run in processes of their own, so a runner's CPU time is its
own (`os.wait4` gives the rusage of exactly that child) and its peak memory is read from
its `/proc/<pid>/status` while it is alive. Every process started here is stopped here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "zbatch-bench"
ZBATCH = [sys.executable, "-m", "runner.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EmulatorProcess:
    """A running emulator child: its URL, and what it saw."""

    url: str
    process: subprocess.Popen[bytes]

    def state(self) -> dict[str, Any]:
        """`GET /_emulator/state`: workflows, requests by route, the ledger."""
        response = httpx.get(f"{self.url}/_emulator/state", timeout=60)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def created_s(self, tag: str) -> list[float]:
        """When the service created each workflow carrying `tag` (its `createdAt`), sorted:
        the arrival of each submit, on the emulator's clock."""
        response = httpx.get(
            f"{self.url}/v2/consumer/workflows",
            params={"tags": tag, "take": 1000},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        response.raise_for_status()
        items = response.json()["items"]
        return sorted(datetime.fromisoformat(i["createdAt"]).timestamp() for i in items)

    def cpu_s(self) -> float:
        """The emulator's CPU seconds so far (user + system, from `/proc/<pid>/stat`)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def requests_by_route(self) -> dict[str, int]:
        routes: dict[str, int] = self.state()["requests"]["by_route"]
        return routes


@contextmanager
def emulator(
    *, time_scale: float, seed: int = 1, image_cache: int | None = None
) -> Iterator[EmulatorProcess]:
    """Start `python -m bench.serve` on a free loopback port; always stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.serve", "--port", str(port)]
    cmd += ["--time-scale", str(time_scale), "--seed", str(seed)]
    if image_cache is not None:
        cmd += ["--image-cache", str(image_cache)]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/_emulator/state", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start on port {port}") from None
                time.sleep(0.05)
        yield EmulatorProcess(url, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_manifest(
    folder: Path,
    *,
    name: str,
    cells: int,
    size: int = 64,
    in_flight: int = 64,
    submit_per_s: float = 1000,
    downloads: int = 16,
    first_seed: int | None = None,
) -> Path:
    """A `cells`-cell turbo manifest (one prompt, `cells` seeds) at size x size, one image each;
    seeds `first_seed`.. when given (the baselines' seeds), else the manifest's own."""
    path = folder / f"{name}.yaml"
    seeds = f"{{count: {cells}}}"
    if first_seed is not None:
        seeds = f"{{range: [{first_seed}, {first_seed + cells - 1}]}}"
    path.write_text(
        f"name: {name}\n"
        f"out: {name}-out\n"
        f"budget: {cells * 100 + 1000}\n"
        f"defaults: {{size: {size}x{size}}}\n"
        "grid:\n"
        "  model: [turbo]\n"
        '  prompt: "A bench cabin at dusk"\n'
        f"  seed: {seeds}\n"
        f"limits: {{in_flight: {in_flight}, submit_per_s: {submit_per_s}, "
        f"downloads: {downloads}}}\n"
        "retries: {attempts: 1}\n",
        encoding="utf-8",
    )
    return path


def out_of(manifest: Path) -> Path:
    """The output folder `write_manifest` names."""
    return manifest.parent / f"{manifest.stem}-out"


@dataclass(frozen=True)
class Finished:
    """A child that exited: its code, wall and CPU seconds (user + system), its output."""

    returncode: int
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str


def spawn(args: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> Child:
    """`python -m <args>` from the repository, stderr to `log` (a full pipe would stall it)."""
    handle = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=os.environ | {"CIVITAI_API_TOKEN": TOKEN} | (env or {}),
        stdout=subprocess.PIPE,
        stderr=handle,
    )
    handle.close()
    return Child(process, time.monotonic(), log)


@dataclass
class Child:
    """A running child process and when it started."""

    process: subprocess.Popen[bytes]
    started_s: float
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, *, check: bool = True) -> Finished:
        """Reap it with `os.wait4`: the CPU time of exactly this child, nothing else."""
        assert self.process.stdout is not None
        with self.process.stdout:
            stdout = self.process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = code = os.waitstatus_to_exitcode(status)
        wall_s = time.monotonic() - self.started_s
        stderr = self.log.read_text(errors="replace")[-4000:]
        if check and code != 0:
            raise RuntimeError(f"{self.process.args!r} exited {code}:\n{stderr}")
        return Finished(code, wall_s, usage.ru_utime + usage.ru_stime, stdout, stderr)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait(check=False)


def zbatch_run(manifest: Path, api_url: str, *extra: str) -> Child:
    """`zbatch run MANIFEST --api-url URL --quiet` in a child process."""
    args = ["runner.cli", "run", str(manifest), "--api-url", api_url, "--quiet", *extra]
    return spawn(args, log=manifest.parent / f"{manifest.stem}.stderr")


def proc_kib(pid: int, field: str) -> int:
    """`VmRSS` or `VmHWM` (the peak) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def events(out: Path, name: str) -> list[dict[str, Any]]:
    """Every `name` event in OUT/log.jsonl, in order."""
    found: list[dict[str, Any]] = []
    log = out / "log.jsonl"
    if not log.exists():
        return found
    with log.open(encoding="utf-8") as handle:
        for line in handle:
            if f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
    return found


def stamp_s(event: dict[str, Any]) -> float:
    """An event's ISO timestamp as Unix seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()
