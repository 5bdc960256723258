"""The LocalCluster harness itself: its clusters must start and restart reliably on a busy machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.dev import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel hands out for outgoing connections and for bind(port 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # the Linux default


def test_default_ports_cannot_be_taken_by_outgoing_connections(tmp_path: Path) -> None:
    """Ports picked with bind(0) come from the ephemeral range, which the kernel also uses for the
    local end of every outgoing connection. Between the pick and the server's bind (and while a
    killed server is down before ``restart``), any client connection on the machine can take the
    port; the server then dies with EADDRINUSE. Seen in this suite: a server exiting with code 1,
    ``OSError: [Errno 98] Address already in use`` from prometheus ``start_http_server``."""
    cluster = LocalCluster(tmp_path, servers=3)  # not started: only its port choice is examined
    low, high = ephemeral_port_range()
    ports = [
        int(address.rpartition(":")[2])
        for node in cluster.nodes.values()
        for address in (node.client_address, node.raft_address, node.metrics_address)
    ]
    inside = [port for port in ports if low <= port <= high]
    assert not inside, f"ports {inside} lie in the ephemeral range {low}-{high}"
