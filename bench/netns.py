"""Shaped networks of Linux network namespaces, for the gossip benchmark and the ``netns`` tests.

One :class:`ShapedNet` is N namespaces ``<prefix>-w<i>``, each with one veth whose other end is on a
bridge in the root namespace. The bridge holds ``10.213.S.1`` (S from the prefix), so a server that
listens there is reachable from every namespace; node i is ``10.213.S.(10 + i)``. Egress of every
node is shaped with an HTB tree on its veth inside its namespace:

* class ``1:1`` (default): unshaped, for the control plane traffic (to the bridge address);
* one class per peer, ``rate = ceil = link rate``, selected by a u32 filter on the destination
  address (pairwise links, two sites), or one class for every peer (a per-node egress cap).

Both ends shape their own egress, so a pair's two directions each get the configured rate.

Everything is named after the prefix ``gnb<pid>`` (veth names are limited to 15 characters), and
:func:`cleanup_stale` removes namespaces and bridges whose creating process is gone (a run killed
by SIGKILL), so a rerun starts clean. :meth:`ShapedNet.close` removes what this process created;
use the object as a context manager so that happens on any exit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["NetUnavailable", "ShapedNet", "cleanup_stale", "netns_unavailable"]

_PREFIX = "gnb"
_NAME = re.compile(rf"^{_PREFIX}(\d+)")
_UNSHAPED = "10gbit"


class NetUnavailable(RuntimeError):
    """Namespaces or tc cannot be used here (not root, ``ip``/``tc`` missing)."""


def netns_unavailable() -> str | None:
    """Why shaped namespaces cannot be created here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (iproute2)"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove the namespaces and bridges a dead benchmark process left behind; returns their names."""
    removed: list[str] = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _run("ip", "netns", "delete", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _run("ip", "link", "delete", name, check=False)
            removed.append(name)
    return removed


def _mbit(rate: float) -> str:
    return f"{rate:g}mbit"


@dataclass
class ShapedNet:
    """``nodes`` namespaces on one bridge. Create with :meth:`create`; shape with :meth:`shape_pairs`
    or :meth:`shape_caps`; :meth:`close` (or leaving the ``with`` block) removes everything."""

    nodes: int
    tag: str = ""
    prefix: str = field(init=False)
    subnet: int = field(init=False)
    _created_ns: list[str] = field(default_factory=list, init=False)
    _bridge: str | None = field(default=None, init=False)
    _cuts: set[tuple[int, int]] = field(default_factory=set, init=False)
    # Nodes the host (where clients run) no longer reaches: see cut_from_host.
    _host_cuts: set[int] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= 200:
            raise ValueError(f"nodes must be in 2..200, got {self.nodes}")
        pid = os.getpid()
        self.prefix = f"{_PREFIX}{pid}{self.tag}"
        if len(self.prefix) + 4 > 15:
            raise ValueError(f"prefix {self.prefix!r} is too long for interface names")
        # A /24 per run, from the pid and the tag: two runs at once (a test and the bench) rarely collide.
        self.subnet = (pid + sum(map(ord, self.tag))) % 200 + 20

    # ------------------------------------------------------------------ names and addresses

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def host_address(self) -> str:
        """The root namespace's address on the bridge (servers listen here)."""
        return f"10.213.{self.subnet}.1"

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-w{i}"

    def address(self, i: int) -> str:
        return f"10.213.{self.subnet}.{10 + i}"

    def _inner(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def exec_prefix(self, i: int) -> list[str]:
        """The argv prefix that runs a command in node i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    # ------------------------------------------------------------------ life

    def create(self) -> ShapedNet:
        problem = netns_unavailable()
        if problem:
            raise NetUnavailable(problem)
        cleanup_stale()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._bridge = self.bridge
            _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(self.nodes):
                ns, outer, inner = self.namespace(i), f"{self.prefix}h{i}", self._inner(i)
                _run("ip", "netns", "add", ns)
                self._created_ns.append(ns)
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
                _run("ip", "link", "set", outer, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inner)
                _run("ip", "-n", ns, "link", "set", inner, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every namespace (their veths go with them) and the bridge. Idempotent."""
        self.heal()
        while self._created_ns:
            i = len(self._created_ns) - 1
            # The host end first: the kernel frees a deleted namespace (and the veths in it)
            # asynchronously, so a new net of the same name right after could find it still there.
            _run("ip", "link", "delete", f"{self.prefix}h{i}", check=False)
            _run("ip", "netns", "delete", self._created_ns.pop(), check=False)
        if self._bridge is not None:
            _run("ip", "link", "delete", self._bridge, check=False)
            self._bridge = None

    def __enter__(self) -> ShapedNet:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shaping

    def _reset(self, i: int) -> None:
        ns, dev = self.namespace(i), self._inner(i)
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
        _run(
            "ip", "netns", "exec", ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
            "htb", "rate", _UNSHAPED,
        )  # fmt: skip

    def _class(self, i: int, classid: int, rate_mbit: float, peers: Sequence[int]) -> None:
        ns, dev = self.namespace(i), self._inner(i)
        rate = _mbit(rate_mbit)
        # burst: a few packets' worth, so that a short transfer sees the rate, not a line-rate burst.
        _run(
            "ip", "netns", "exec", ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", f"1:{classid}",
            "htb", "rate", rate, "ceil", rate, "burst", "15k", "cburst", "15k",
        )  # fmt: skip
        for j in peers:
            _run(
                "ip", "netns", "exec", ns, "tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                "prio", "1", "u32", "match", "ip", "dst", f"{self.address(j)}/32", "flowid", f"1:{classid}",
            )  # fmt: skip

    def shape_pairs(self, rates_mbit: Mapping[tuple[int, int], float]) -> None:
        """Every listed pair (i, j) gets ``rate`` Mbit/s in each direction; unlisted pairs are unshaped."""
        for i in range(self.nodes):
            self._reset(i)
        for (i, j), rate in sorted(rates_mbit.items()):
            if i == j:
                continue
            self._class(i, 10 + j, rate, [j])
            self._class(j, 10 + i, rate, [i])

    # ------------------------------------------------------------------ partitions

    def cut(self, i: int, j: int) -> None:
        """Nodes i and j stop reaching each other, both ways; each keeps reaching everyone else.

        A blackhole route in each of the two namespaces: packets for the other end are dropped
        silently, so an open TCP connection neither closes nor errors (its sends queue and are
        retransmitted after :meth:`heal`), as across a real partition. Only routing is used: the
        tc action modules a drop filter needs may not be loadable in a container.
        """
        if i == j:
            raise ValueError("a node cannot be cut from itself")
        for a, b in ((i, j), (j, i)):
            if (a, b) not in self._cuts:
                _run("ip", "-n", self.namespace(a), "route", "add", "blackhole", f"{self.address(b)}/32")
                self._cuts.add((a, b))

    def cut_from_host(self, i: int) -> None:
        """The host (its processes: the clients) stops reaching node i, which keeps reaching the
        other nodes. The blackhole route is in node i's namespace, for the host's address: its
        answers are dropped, so the host's connections to it hang (open ones, and new ones at their
        SYN) as across a real partition. (A blackhole route on the host's side would fail the
        host's sends at once, with EINVAL, which is not what a partition looks like.)"""
        if i not in self._host_cuts:
            _run("ip", "-n", self.namespace(i), "route", "add", "blackhole", f"{self.host_address}/32")
            self._host_cuts.add(i)

    def heal(self) -> None:
        """Undo every :meth:`cut` and :meth:`cut_from_host`. Idempotent."""
        for a, b in sorted(self._cuts):
            _run("ip", "-n", self.namespace(a), "route", "del", "blackhole", f"{self.address(b)}/32", check=False)
        self._cuts.clear()
        for i in sorted(self._host_cuts):
            _run("ip", "-n", self.namespace(i), "route", "del", "blackhole", f"{self.host_address}/32", check=False)
        self._host_cuts.clear()

    def can_connect(self, i: int, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from node i's namespace to ``host:port`` opens (a real probe)."""
        probe = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = _run("ip", "netns", "exec", self.namespace(i), sys.executable, "-c", probe, check=False)
        return done.returncode == 0

    def shape_caps(self, caps_mbit: Sequence[float]) -> None:
        """Node i sends at most ``caps_mbit[i]`` Mbit/s to all its peers together."""
        if len(caps_mbit) != self.nodes:
            raise ValueError(f"{len(caps_mbit)} caps for {self.nodes} nodes")
        for i, cap in enumerate(caps_mbit):
            self._reset(i)
            self._class(i, 2, cap, [j for j in range(self.nodes) if j != i])
