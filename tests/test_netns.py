"""The hosts the cluster torture runs on (tests/netns.py): reachable, cut, restored, removed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import netns

_SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", 7000))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(64).upper())
"""

_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])) as s:
        s.sendall(b"ping")
        print(s.recv(64).decode())
except OSError as e:
    print(type(e).__name__)
    sys.exit(1)
"""


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def network() -> Iterator[netns.Network]:
    netns.require()
    with netns.Network(tag=f"t{os.getpid()}") as net:
        yield net


def _ask(net: netns.Network, host: str, address: str, timeout: float) -> tuple[int, str]:
    argv = net.argv(host, [sys.executable, "-c", _CLIENT, address, str(timeout)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    return done.returncode, done.stdout.strip()


def test_hosts_talk_a_cut_host_is_alone_and_comes_back(network: netns.Network) -> None:
    root_links = _links()
    a, b, _c = (network.add(name) for name in ("a", "b", "c"))
    assert _links() == root_links  # nothing of the network lives in the root namespace
    server = subprocess.Popen(
        network.argv("b", [sys.executable, "-c", _SERVER]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert _ask(network, "a", b.address, 20) == (0, "PING")
        network.cut("a")
        code, said = _ask(network, "a", b.address, 1.5)
        assert code == 1, said  # a's packets go nowhere: no answer, whatever the error's name
        assert _ask(network, "c", b.address, 20) == (0, "PING")  # the others are untouched
        network.restore("a")
        assert _ask(network, "a", b.address, 20) == (0, "PING")
        assert a.address != b.address
    finally:
        server.kill()
        server.communicate()  # reaps it and closes its pipe


def test_close_removes_every_namespace_and_sweep_finds_what_a_killed_run_left() -> None:
    netns.require()
    tag = f"s{os.getpid()}"
    net = netns.Network(tag=tag)
    net.add("x")
    net.add("y")

    def listed() -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        return {line.split()[0] for line in out.stdout.splitlines() if tag in line}

    assert len(listed()) == 3  # the hub and two hosts
    # As if the run were killed here: nothing closed it. The next run sweeps by the prefix.
    assert sorted(netns.sweep(prefix=f"zbn{tag}")) == sorted(
        [f"zbn{tag}hub", f"zbn{tag}x", f"zbn{tag}y"]
    )
    assert listed() == set()
