"""Several hosts on one machine: network namespaces joined by veth pairs to a private switch.

The cluster torture (issue 18) runs each worker as a host of its own, and the emulator and
PostgreSQL on theirs, so that cutting one host's link is a real partition: its packets stop,
its open connections hang, nobody else is touched. `Network` builds that with `ip netns`:

- a hub namespace holding a Linux bridge (the switch);
- per host, a namespace whose `eth0` is one end of a veth pair, the other end plugged into the
  bridge; each host gets `10.77.0.<n>/24` and its loopback up;
- `cut(host)` takes the host's port on the switch down (the host still believes its link is
  up, as a host behind a failed switch port does); `restore(host)` brings it back.

Nothing leaves the namespaces: the root namespace gets no interface and no route, and
`close()` deletes every namespace (which deletes their veths and the bridge). Names carry
the creating process's pid so two runs on one machine don't collide, and a run killed before
`close()` leaves namespaces that `sweep()` removes by that prefix.

Making namespaces needs CAP_NET_ADMIN (root): CI runs as root, and `require()` says so in
one line where it is missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET = "10.77.0"
_PREFIX = "zbn"


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def require() -> None:
    """Raise with the reason when this process cannot make network namespaces."""
    if os.geteuid() != 0:
        raise RuntimeError("network namespaces need root (CAP_NET_ADMIN): run as root, as CI does")
    probe = f"{_PREFIX}probe{os.getpid()}"
    _ip("netns", "add", probe)
    _ip("netns", "del", probe)


def sweep(prefix: str = _PREFIX) -> list[str]:
    """Delete namespaces a killed run left behind (those whose name starts with `prefix`)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    gone = [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(prefix)]
    for name in gone:
        _ip("netns", "del", name)
    return gone


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str  # on the switch's subnet
    port: str  # its veth end in the hub namespace (the switch port)


@dataclass
class Network:
    """A switch and the hosts on it; a context manager that removes everything on exit."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    hosts: dict[str, Host] = field(default_factory=dict)
    _hub: str | None = None

    @property
    def hub(self) -> str:
        if self._hub is None:
            self._hub = f"{_PREFIX}{self.tag}hub"
            _ip("netns", "add", self._hub)
            _ip("link", "set", "lo", "up", netns=self._hub)
            _ip("link", "add", "br0", "type", "bridge", netns=self._hub)
            _ip("link", "set", "br0", "up", netns=self._hub)
        return self._hub

    def add(self, name: str) -> Host:
        """A new host on the switch, reachable from the others at its `address`."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        hub, n = self.hub, len(self.hosts) + 1
        host = Host(name, f"{_PREFIX}{self.tag}{name}", f"{SUBNET}.{n}", f"p{n}")
        _ip("netns", "add", host.netns)
        # Both ends are made inside their namespaces: the root namespace never holds them.
        _ip(
            "link",
            "add",
            host.port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
            netns=hub,
        )
        _ip("link", "set", host.port, "master", "br0", netns=hub)
        _ip("link", "set", host.port, "up", netns=hub)
        _ip("link", "set", "lo", "up", netns=host.netns)
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """The host's switch port goes down: nothing reaches it, nothing from it arrives."""
        _ip("link", "set", self.hosts[name].port, "down", netns=self.hub)

    def restore(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].port, "up", netns=self.hub)

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside the host's namespace (for subprocess.Popen and friends)."""
        return ["ip", "netns", "exec", self.hosts[name].netns, *argv]

    def close(self) -> None:
        for host in self.hosts.values():
            _ip("netns", "del", host.netns)
        self.hosts.clear()
        if self._hub is not None:
            _ip("netns", "del", self._hub)
            self._hub = None

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
