"""The Raft peer plane against the attacks measured on round 1's main (issue 14), on real servers.

Each test plays the attacker from outside the cluster's processes: a raw socket or a TLS client on
the Raft port, or a gRPC call on the client port. After each attack the cluster must still have
the same leader in the same term and accept writes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import pickle
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane import tls
from controlplane.client import Client
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.v1 import command_pb2, leases_pb2, raft_peer_pb2

from .conftest import channel, cpctl, status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


class _Marker:
    """Unpickling this creates a file: proof that a server deserialized a pickle it was sent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _closed_by_peer(sock: socket.socket | ssl.SSLSocket, timeout: float = 15.0) -> bool:
    """Read until the server closes the connection (EOF or reset); False if it stays open."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def _leadership(cluster: LocalCluster) -> tuple[str, int]:
    leader = cluster.leader()
    return leader.id, status(leader).term


def _still_leads(cluster: LocalCluster, before: tuple[str, int], key: str) -> None:
    assert _leadership(cluster) == before, "the attack moved leadership"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        assert client.put(key, b"ok").revision > 0


def _tls_client(cluster: LocalCluster, identity: tls.Identity | None) -> ssl.SSLContext:
    """A TLS 1.3 client context trusting the dev CA, presenting ``identity``'s certificate (or none)."""
    files = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("client", "admin"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(files.ca)
    if identity is not None:
        tls.ensure_dev_pki(cluster.pki_dir, [], client_ids=[identity.id])
        own = tls.TlsFiles.from_directory(cluster.pki_dir, identity)
        context.load_cert_chain(own.cert, own.key)
    return context


@contextlib.contextmanager
def _tls_connection(address: str, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    with socket.create_connection(_split(address), timeout=10) as raw, context.wrap_socket(raw) as conn:
        yield conn


def test_the_raft_port_listens_on_the_configured_address_only(cluster: LocalCluster) -> None:
    for node in cluster.nodes.values():
        host, port = _split(node.raft_address)
        assert _listening_addresses(port) == {host}, f"{node.id}'s Raft port {port}"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of every socket listening on ``port`` (from /proc/net/tcp and tcp6, as ss reads it)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                # Not socket.inet_ntop: importing pysyncobj replaces it with a Windows shim.
                if width == 8:
                    found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
                else:
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    found.add(str(ipaddress.IPv6Address(b"".join(words))))
    return found


def test_a_pickled_frame_is_refused_without_being_deserialized(cluster: LocalCluster, tmp_path: Path) -> None:
    before = _leadership(cluster)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(marker))
    leader = cluster.nodes[before[0]]
    # Plain TCP, as pysyncobj's protocol spoke it: the TLS handshake fails on these bytes.
    with socket.create_connection(_split(leader.raft_address), timeout=10) as raw:
        raw.sendall(struct.pack(">I", len(payload)) + payload)
        assert _closed_by_peer(raw)
    # Over TLS with a member's own certificate, in a frame: not a PeerFrame, closed.
    context = _tls_client(cluster, None)
    server_files = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("server", before[0]))
    context.load_cert_chain(server_files.cert, server_files.key)
    with _tls_connection(leader.raft_address, context) as conn:
        conn.sendall(struct.pack(">I", len(payload)) + payload)
        assert _closed_by_peer(conn)
    assert not marker.exists(), "a server unpickled what it was sent"
    _still_leads(cluster, before, "peer/after-pickle")


def test_a_huge_frame_announcement_closes_the_connection_and_leadership_holds(cluster: LocalCluster) -> None:
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    context = _tls_client(cluster, tls.Identity("client", "admin"))
    with _tls_connection(leader.raft_address, context) as conn:
        conn.sendall(struct.pack(">I", 1 << 30))  # 1 GiB announced
        sent = 0
        chunk = b"\0" * (1 << 20)
        deadline = time.monotonic() + 30
        with contextlib.suppress(OSError, ssl.SSLError):
            while sent < 32 << 20 and time.monotonic() < deadline:
                conn.sendall(chunk)
                sent += len(chunk)
        assert sent < 32 << 20 or _closed_by_peer(conn), "the server kept reading a 1 GiB frame"
    _still_leads(cluster, before, "peer/after-huge-frame")


def test_a_tls_client_without_a_member_certificate_is_refused(cluster: LocalCluster) -> None:
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    hello = raft_peer_pb2.PeerFrame(
        hello=raft_peer_pb2.Hello(protocol_version=1, node_id="n9", raft_address="127.0.0.1:1")
    ).SerializeToString()
    # No certificate at all: the handshake itself fails (TLS 1.3 reports it on the first read).
    with (
        contextlib.suppress(ssl.SSLError, ConnectionResetError, BrokenPipeError),
        _tls_connection(leader.raft_address, _tls_client(cluster, None)) as conn,
    ):
        conn.sendall(struct.pack(">I", len(hello)) + hello)
        assert _closed_by_peer(conn)
    # A valid certificate from the cluster CA, but a client's, not a server's: closed after its Hello,
    # with nothing sent back.
    with _tls_connection(leader.raft_address, _tls_client(cluster, tls.Identity("client", "admin"))) as conn:
        conn.sendall(struct.pack(">I", len(hello)) + hello)
        conn.settimeout(15)
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            assert conn.recv(65536) == b"", "the server answered a client certificate on the peer port"
    _still_leads(cluster, before, "peer/after-client-cert")


def test_cluster_status_shows_a_durable_authenticated_cluster(cluster: LocalCluster) -> None:
    for node in cluster.nodes.values():
        shown = status(node)
        assert (shown.durability, shown.peer_security) == ("fsync", "mtls"), node.id
    printed = cpctl(cluster, "cluster", "status")
    assert printed.returncode == 0 and "durability fsync, peer plane mtls" in printed.stdout
    assert "WARNING" not in printed.stderr


def test_propose_is_not_served_on_the_client_port(cluster: LocalCluster) -> None:
    """What followers forward to the leader travels over the authenticated peer plane only."""
    leader = cluster.leader()
    with channel(leader.client_address) as ch:
        call = ch.unary_unary("/controlplane.v1.Peer/Propose")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_writes_through_a_follower_travel_over_the_peer_plane(cluster: LocalCluster) -> None:
    leader_id = cluster.wait_for_leader()
    follower: NodeProcess = next(node for node in cluster.nodes.values() if node.id != leader_id)
    with Client(follower.client_address, credentials=follower.credentials, timeout=15) as client:
        revisions = [client.put(f"peer/forwarded/{i}", b"x").revision for i in range(20)]
    assert revisions == sorted(revisions) and len(set(revisions)) == 20
    wait_until(lambda: status(follower).applied_revision >= revisions[-1], 15, "the follower to apply")


def _frame(frame: raft_peer_pb2.PeerFrame) -> bytes:
    body = frame.SerializeToString()
    return struct.pack(">I", len(body)) + body


def _read_frame(conn: ssl.SSLSocket) -> raft_peer_pb2.PeerFrame:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    (size,) = struct.unpack(">I", exactly(4))
    return raft_peer_pb2.PeerFrame.FromString(exactly(size))


def test_only_the_leader_itself_proposes_lease_expiry(cluster: LocalCluster) -> None:
    """A forwarded ProposeCall, even from an authenticated member, may not carry lease_expire or
    lease_checkpoint: a server that no longer leads cannot end a lease the leader renewed from memory."""
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    # Speak as a follower, with its own certificate: the peer plane's strongest credential.
    follower = next(node for node in cluster.nodes.values() if node.id != leader.id)
    context = _tls_client(cluster, None)
    own = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("server", follower.id))
    context.load_cert_chain(own.cert, own.key)
    hello = raft_peer_pb2.Hello(protocol_version=1, node_id=follower.id, raft_address=follower.raft_address)
    bodies = (
        command_pb2.Command(lease_expire=leases_pb2.ExpireLeases(lease_ids=[1])),
        command_pb2.Command(lease_checkpoint=leases_pb2.LeaseCheckpoint()),
    )
    with _tls_connection(leader.raft_address, context) as conn:
        conn.sendall(_frame(raft_peer_pb2.PeerFrame(hello=hello)))
        conn.settimeout(15)
        assert _read_frame(conn).hello.node_id == leader.id
        for call_id, command in enumerate(bodies, start=1):
            call = raft_peer_pb2.ProposeCall(call_id=call_id, commands=[command])
            conn.sendall(_frame(raft_peer_pb2.PeerFrame(propose_call=call)))
            while (frame := _read_frame(conn)).WhichOneof("body") != "propose_reply":
                pass  # the leader's Raft messages to the follower we speak for
            assert frame.propose_reply.call_id == call_id
            assert frame.propose_reply.error_kind == "FailedPrecondition", frame.propose_reply
            assert not frame.propose_reply.results
    _still_leads(cluster, before, "peer/after-forged-expiry")


def test_a_server_that_is_not_a_member_is_refused_even_with_a_cluster_certificate(cluster: LocalCluster) -> None:
    """A server certificate from the cluster's own CA is not enough: the id must be a current member at
    that Raft address (a removed server that keeps running must not feed the leader). Nothing is
    answered and nothing applied."""
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    applied = status(leader).applied_revision
    tls.ensure_dev_pki(cluster.pki_dir, ["intruder"])
    context = _tls_client(cluster, None)
    own = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("server", "intruder"))
    context.load_cert_chain(own.cert, own.key)
    hello = raft_peer_pb2.Hello(protocol_version=1, node_id="intruder", raft_address="127.0.0.1:1")
    command = command_pb2.Command(request_id="intruder-1", kv_put=command_pb2.KvPut(key="intruder/k", value=b"x"))
    with _tls_connection(leader.raft_address, context) as conn:
        conn.sendall(_frame(raft_peer_pb2.PeerFrame(hello=hello)))
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.sendall(
                _frame(raft_peer_pb2.PeerFrame(propose_call=raft_peer_pb2.ProposeCall(call_id=1, commands=[command])))
            )
        conn.settimeout(15)
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            assert conn.recv(65536) == b"", "the leader answered a server that is not a member"
    with Client(leader.client_address, credentials=leader.credentials, timeout=15) as client:
        assert client.get("intruder/k") is None
        assert client.put("intruder/after", b"ok").revision == applied + 1
    assert _leadership(cluster) == before


def test_a_learner_link_may_not_ask_for_votes(cluster: LocalCluster) -> None:
    """A member connected as a learner may only acknowledge appends: a vote request on that link (here
    with a term no cluster can leave) closes it, and no voter's term moves."""
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    follower = next(node for node in cluster.nodes.values() if node.id != leader.id)
    context = _tls_client(cluster, None)
    own = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("server", follower.id))
    context.load_cert_chain(own.cert, own.key)
    hello = raft_peer_pb2.Hello(
        protocol_version=1, node_id=follower.id, raft_address=follower.raft_address, learner=True
    )
    vote = raft_peer_pb2.RaftMessage(
        request_vote=raft_peer_pb2.RequestVote(term=(1 << 64) - 1, last_log_index=1, last_log_term=1)
    )
    with _tls_connection(leader.raft_address, context) as conn:
        conn.sendall(_frame(raft_peer_pb2.PeerFrame(hello=hello)))
        conn.settimeout(15)
        assert _read_frame(conn).hello.node_id == leader.id
        conn.sendall(_frame(raft_peer_pb2.PeerFrame(raft=vote)))
        assert _closed_by_peer(conn)
    _still_leads(cluster, before, "peer/after-learner-vote")


def test_connections_that_never_authenticate_are_capped(cluster: LocalCluster) -> None:
    """Past the cap, a connection that has not authenticated is closed at once (the leader says so in
    its log) instead of holding a handshake slot on the loop that ticks Raft; leadership holds."""
    before = _leadership(cluster)
    leader = cluster.nodes[before[0]]
    idle = []
    try:
        for _ in range(100):  # more than the cap of 64: each one sends nothing and waits
            idle.append(socket.create_connection(_split(leader.raft_address), timeout=10))
        wait_until(
            lambda: "too many connections still authenticating" in leader.log_path.read_text(errors="replace"),
            20,
            "the leader to refuse connections past the cap",
        )
        _still_leads(cluster, before, "peer/while-capped")
    finally:
        for sock in idle:
            sock.close()
    _still_leads(cluster, before, "peer/after-capped")
