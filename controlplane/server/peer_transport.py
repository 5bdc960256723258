"""The Raft peer plane: pysyncobj's ``Transport`` on the server's event loop, protobuf over mutual TLS.

Why our own: pysyncobj's TCP transport pickles every message (whoever reaches the port runs
code), binds every interface whatever address is configured, and reads any frame length a peer
announces. This one keeps pysyncobj's connection topology (one connection per pair of servers;
the higher address dials, a learner dials every voter) and replaces everything on the wire:

* **Frames**: a 4-byte big-endian length, then one ``PeerFrame`` (``raft_peer.proto``). A length
  above ``max_frame_bytes`` closes the connection before a byte of the body is read; a body that
  does not arrive within ``frame_timeout_s`` closes it too. Anything that does not parse, or that
  the codec refuses (``raft_codec.py``: no pickle from the wire, ever), closes the connection.
* **Identity**: TLS 1.3 with client certificates from the cluster CA (``controlplane.tls``). Both
  ends send ``Hello`` first; the certificate must name a *server* whose id is the one in the
  Hello, and ``authorize`` (the node's member directory and configured peers) must know that id
  at that Raft address. Nothing but a Hello is read before that, and it must come within
  ``handshake_timeout_s``. With ``insecure`` (``--insecure-dev`` only) there is no TLS and the
  Hello alone is believed: loud in the log, never a default.
* **Binding**: exactly the configured Raft address, bound synchronously when the transport is
  created (pysyncobj requires a transport to be ready before its constructor returns).
* **Never blocking the tick**: everything runs on the server's event loop, the same thread as
  pysyncobj's ticks. ``send`` only appends to a socket buffer; a peer that does not read and lets
  its buffer pass ``max_write_buffer_bytes`` is disconnected (pysyncobj reconnects later).
* **Durability before anything leaves**: every Raft frame goes through ``when_durable``, which
  writes it once the journal records appended so far are fdatasync'ed (raft.py), so a vote or an
  append ack is never sent for state not on disk (a leader's appends leave at once; raft.py holds
  the acks they draw until the leader's own copy is durable).

Besides Raft's messages the plane carries ``Propose`` (a follower hands its clients' commands to
the leader), so that call is only ever served to an authenticated server, never on the client port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from pysyncobj.node import Node, TCPNode
from pysyncobj.transport import Transport

from controlplane import errors
from controlplane.errors import ControlPlaneError, Unavailable, UnknownOutcome
from controlplane.server.consensus import Authorize, ProposeHandler
from controlplane.server.raft_codec import CodecError, RaftCodec
from controlplane.state.machine import CommandResult
from controlplane.v1 import command_pb2, raft_peer_pb2

log = structlog.get_logger("controlplane.peer")

PROTOCOL_VERSION = 1
# After a failed accept (out of file descriptors), before the next one.
ACCEPT_RETRY_S = 0.1
# Connections accepted but not yet authenticated (TLS handshake and Hello), at most.
MAX_UNAUTHENTICATED_CONNECTIONS = 64
# No term or index near the top of uint64: pysyncobj's term + 1 must stay representable, and no
# member can push every voter to a term it cannot leave.
MAX_TERM_OR_INDEX = 1 << 62
# What a learner may say to a voter: acknowledge appends. Never vote, never ask for votes.
_LEARNER_MESSAGES = frozenset({"next_node_idx"})
_NUMBERS = ("term", "commit_index", "prevLogIdx", "prevLogTerm", "last_log_index", "last_log_term", "next_node_idx")
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class PeerSettings:
    node_id: str
    raft_address: str
    authorize: Authorize
    # None only with --insecure-dev: plain TCP, identities taken on the peer's word.
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None
    max_frame_bytes: int
    # Runs a frame's write (given with the Raft message's type) once the journal is durable as
    # that type requires (now, or later in order; True if sent or queued), and after any Raft
    # message was handed to pysyncobj (schedule a tick, so commits and replies do not wait for
    # the next one).
    when_durable: Callable[[Callable[[], bool], str | None], bool]
    on_activity: Callable[[], None]
    propose_handler: ProposeHandler | None = None
    handshake_timeout_s: float = 5.0
    connect_retry_s: float = 0.5
    max_write_buffer_bytes: int = 64 * 1024 * 1024

    @property
    def insecure(self) -> bool:
        return self.server_tls is None


class _Refused(Exception):
    """A connection is closed for the reason in the message (logged once, at warning)."""


class _Link:
    """One authenticated connection to another server."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_id: str,
        raft_address: str,
        learner: bool = False,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer_id = peer_id
        self.raft_address = raft_address
        # The peer is a learner (this server accepted it as one): what it may send is limited.
        self.learner = learner
        self.node: Node | None = None
        self.closed = False
        self.over_limit = False
        self.calls: dict[int, asyncio.Future[raft_peer_pb2.ProposeReply]] = {}

    def write(self, frame: raft_peer_pb2.PeerFrame, limit: int) -> bool:
        """Queue a frame; False (dropped) while the peer has ``limit`` bytes it has not read yet.

        Dropping, not closing: a peer catching up over a slow link is still reading, and Raft
        recovers a dropped append (the follower answers with a gap, the leader resends). Memory
        stays bounded by ``limit`` plus one frame per peer; TCP keepalive finds a dead one.
        """
        if self.closed:
            return False
        buffered = self.writer.transport.get_write_buffer_size()
        if buffered > limit:
            if not self.over_limit:
                log.warning("peer_not_reading", peer=self.peer_id, buffered=buffered)
            self.over_limit = True
            return False
        self.over_limit = False
        body = frame.SerializeToString()
        self.writer.write(_HEADER.pack(len(body)) + body)
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for future in self.calls.values():
            if not future.done():
                future.set_exception(ConnectionError(f"the connection to {self.peer_id} closed"))
        self.calls.clear()


class PeerTransport(Transport):  # type: ignore[misc]
    """pysyncobj's Transport over :class:`PeerSettings`; create through :func:`transport_factory`."""

    def __init__(self, sync: Any, self_node: TCPNode | None, other_nodes: Any, settings: PeerSettings) -> None:
        super().__init__(sync, self_node, other_nodes)
        self._sync = sync
        self._settings = settings
        self._self_node = self_node
        self._loop = asyncio.get_running_loop()
        self._codec: RaftCodec | None = None
        self._nodes: dict[str, TCPNode] = {}  # raft address -> voter node (pysyncobj's otherNodes)
        self._links: dict[Node, _Link] = {}  # identified connections, voters and learners
        self._dialing: set[str] = set()
        self._last_dial: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._call_ids = itertools.count(1)
        self._destroyed = False
        self._unauthenticated = 0
        self._listener: socket.socket | None = None
        for node in other_nodes:
            self.addNode(node)
        if self_node is not None:
            self._listen()
        sync.addOnTickCallback(self._on_tick)

    # ------------------------------------------------------------ pysyncobj's interface

    @property
    def ready(self) -> bool:
        return True

    def tryGetReady(self) -> None:
        """Bound in the constructor: nothing to do (a bind failure raised there)."""

    def waitReady(self) -> None:
        """Always ready (see tryGetReady)."""

    def addNode(self, node: TCPNode) -> None:
        self._nodes[node.address] = node

    def dropNode(self, node: Node) -> None:
        if isinstance(node, TCPNode):
            self._nodes.pop(node.address, None)
        link = self._links.pop(node, None)
        if link is not None:
            link.close()

    def send(self, node: Node, message: dict[str, Any]) -> bool:
        link = self._links.get(node)
        if link is None or link.closed:
            return False
        try:
            raft = self._get_codec().encode(message)
        except CodecError as exc:
            # Our own pysyncobj produced it: a bug, not an attack. Drop the message, keep the link.
            log.error("raft_message_not_encodable", peer=link.peer_id, error=str(exc), kind=message.get("type"))
            return False
        frame, limit = raft_peer_pb2.PeerFrame(raft=raft), self._settings.max_write_buffer_bytes
        return self._settings.when_durable(lambda: link.write(frame, limit), message.get("type"))

    def destroy(self) -> None:
        self._destroyed = True
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        self.setOnReadonlyNodeConnectedCallback(None)
        self.setOnReadonlyNodeDisconnectedCallback(None)
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        if self._listener is not None:
            self._listener.close()
        for task in self._tasks:
            task.cancel()

    def revalidate(self) -> None:
        """Close every link whose peer may no longer connect (removed, or moved): admission is checked
        at the handshake, so a change of the member directory must reach the links already open."""
        for link in list(self._links.values()):
            reason = self._settings.authorize(link.peer_id, link.raft_address, link.learner)
            if reason is not None:
                log.warning("peer_link_closed", peer=link.peer_id, reason=reason)
                link.close()

    # ------------------------------------------------------------ Propose over the peer plane

    async def propose(
        self, leader_address: str, commands: list[command_pb2.Command], timeout: float
    ) -> list[CommandResult]:
        """Hand ``commands`` to the leader at Raft address ``leader_address``; its results in order.

        Unavailable (not applied) when there is no connection to it; UnknownOutcome when the
        connection breaks or the answer does not come in time after the call was sent.
        """
        node = self._nodes.get(leader_address)
        link = self._links.get(node) if node is not None else None
        if link is None or link.closed:
            raise Unavailable(f"{self._settings.node_id} has no peer connection to the leader at {leader_address}")
        call_id = next(self._call_ids)
        reply_future: asyncio.Future[raft_peer_pb2.ProposeReply] = self._loop.create_future()
        link.calls[call_id] = reply_future
        frame = raft_peer_pb2.PeerFrame(propose_call=raft_peer_pb2.ProposeCall(call_id=call_id, commands=commands))
        if not link.write(frame, self._settings.max_write_buffer_bytes):
            link.calls.pop(call_id, None)
            raise Unavailable(f"the peer connection to the leader at {leader_address} closed; nothing was sent")
        try:
            async with asyncio.timeout(timeout):
                reply = await reply_future
        except (TimeoutError, ConnectionError) as exc:
            raise UnknownOutcome(
                f"the leader at {leader_address} did not answer the forwarded write ({exc or 'timed out'}); "
                "it may have been applied: retry with the same request id"
            ) from None
        finally:
            link.calls.pop(call_id, None)
        if reply.error_kind:
            raise _error_from_reply(reply)
        return list(reply.results)

    async def _serve_propose(self, link: _Link, call: raft_peer_pb2.ProposeCall) -> None:
        reply = raft_peer_pb2.ProposeReply(call_id=call.call_id)
        handler = self._settings.propose_handler
        try:
            if handler is None:
                raise Unavailable(f"{self._settings.node_id} does not take forwarded writes")
            reply.results.extend(await handler(link.peer_id, list(call.commands)))
        except ControlPlaneError as exc:
            reply.error_kind, reply.error_message = type(exc).__name__, exc.message
        except Exception as exc:  # a bug must answer the caller, not leave its write hanging
            log.exception("forwarded_propose_failed", peer=link.peer_id)
            reply.error_kind, reply.error_message = "UnknownOutcome", f"the leader failed: {exc}"
        link.write(raft_peer_pb2.PeerFrame(propose_reply=reply), self._settings.max_write_buffer_bytes)

    # ------------------------------------------------------------ connections

    def _listen(self) -> None:
        host, _, port = self._settings.raft_address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, int(port)))
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._spawn(self._accept_loop(listener))

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept peers. TLS starts after the cap on connections not yet authenticated is checked
        (the handshakes run on the loop that ticks Raft, so a flood of them must not go unbounded),
        and on the accepted socket itself: upgrading a stream that is already reading
        (``StreamWriter.start_tls``) loses whatever the peer sent first, its TLS ClientHello, when
        that arrives before the upgrade (a race with asyncio's loop, every time with uvloop's)."""
        while not self._destroyed:
            try:
                conn, peer = await self._loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: log, back off, keep listening
                if self._destroyed:
                    return
                log.warning("peer_accept_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self._destroyed:
                conn.close()
                return
            if self._unauthenticated >= MAX_UNAUTHENTICATED_CONNECTIONS:
                log.warning("peer_refused", peer=peer, reason="too many connections still authenticating")
                conn.close()
                continue
            self._unauthenticated += 1
            self._spawn(self._accept(conn, peer))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_tick(self) -> None:
        """Dial the voters this server is responsible for (pysyncobj's rule), at most every retry period."""
        if self._destroyed:
            return
        now = self._loop.time()
        for address, node in self._nodes.items():
            link = self._links.get(node)
            if (link is not None and not link.closed) or address in self._dialing:
                continue
            if self._self_node is not None and self._self_node.address <= address:
                continue  # the other side dials us
            if now - self._last_dial.get(address, -1e9) < self._settings.connect_retry_s:
                continue
            self._last_dial[address] = now
            self._dialing.add(address)
            self._spawn(self._dial(node))

    async def _dial(self, node: TCPNode) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._settings.handshake_timeout_s):
                reader, writer = await asyncio.open_connection(
                    node.host, node.port, ssl=self._settings.client_tls, limit=1 << 16
                )
                self._write_hello(writer)
                hello = await self._read_hello(reader)
            peer_id = self._check_identity(writer, hello, expected_address=node.address)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("peer_dial_failed", address=node.address, error=str(exc) or type(exc).__name__)
            if writer is not None:
                writer.close()
            return
        except _Refused as exc:
            log.warning("peer_refused", address=node.address, reason=str(exc))
            if writer is not None:
                writer.close()
            return
        finally:
            self._dialing.discard(node.address)
        assert writer is not None  # set whenever the handshake succeeded
        address = node.address
        if self._destroyed or self._nodes.get(address) is not node:
            writer.close()  # dropped from the configuration while dialing
            return
        self._attach(node, _Link(reader, writer, peer_id, address), learner=False)

    async def _accept(self, conn: socket.socket, peer: object) -> None:
        try:
            await self._handshake(peer, conn)
        finally:
            self._unauthenticated -= 1

    async def _handshake(self, peer: object, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._settings.handshake_timeout_s):
                reader = asyncio.StreamReader(limit=1 << 16)
                protocol = asyncio.StreamReaderProtocol(reader)
                tls = self._settings.server_tls
                handshake_timeout = {"ssl_handshake_timeout": self._settings.handshake_timeout_s} if tls else {}
                transport, _ = await self._loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=tls, **handshake_timeout
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
                hello = await self._read_hello(reader)
            peer_id = self._check_identity(writer, hello, expected_address=None)
            if hello.learner:
                node: Node = Node(f"learner:{peer_id}")
            else:
                voter = self._nodes.get(hello.raft_address)
                if voter is None:
                    raise _Refused(f"{peer_id} at {hello.raft_address} is not a voter of this server's configuration")
                node = voter
            self._write_hello(writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("peer_handshake_failed", peer=peer, error=str(exc) or type(exc).__name__)
            _close(writer, conn)
            return
        except _Refused as exc:
            log.warning("peer_refused", peer=peer, reason=str(exc))
            _close(writer, conn)
            return
        except asyncio.CancelledError:  # the transport is being destroyed
            _close(writer, conn)
            raise
        if self._destroyed:
            writer.close()
            return
        self._attach(
            node, _Link(reader, writer, peer_id, hello.raft_address, learner=hello.learner), learner=hello.learner
        )

    def _attach(self, node: Node, link: _Link, learner: bool) -> None:
        _keep_alive(link.writer)
        previous = self._links.get(node)
        if previous is not None:
            # The peer reconnected (it restarted, or dialed across a half-dead connection): the new
            # link wins; the old one's disconnect must not report the node gone.
            previous.node = None
            previous.close()
        link.node = node
        self._links[node] = link
        if learner:
            self._onReadonlyNodeConnected(node)
        else:
            self._onNodeConnected(node)
        self._spawn(self._read_frames(link, learner))

    def _write_hello(self, writer: asyncio.StreamWriter) -> None:
        hello = raft_peer_pb2.Hello(
            protocol_version=PROTOCOL_VERSION,
            node_id=self._settings.node_id,
            raft_address=self._settings.raft_address,
            learner=self._self_node is None,
        )
        body = raft_peer_pb2.PeerFrame(hello=hello).SerializeToString()
        writer.write(_HEADER.pack(len(body)) + body)

    async def _read_hello(self, reader: asyncio.StreamReader) -> raft_peer_pb2.Hello:
        frame = await self._read_frame(reader, limit=4096)
        if frame.WhichOneof("body") != "hello":
            raise _Refused("the first frame was not a Hello")
        if frame.hello.protocol_version != PROTOCOL_VERSION:
            raise _Refused(
                f"peer protocol version {frame.hello.protocol_version}, this server speaks {PROTOCOL_VERSION}"
            )
        return frame.hello

    def _check_identity(
        self, writer: asyncio.StreamWriter, hello: raft_peer_pb2.Hello, expected_address: str | None
    ) -> str:
        """The peer's node id, once its certificate, its Hello and the member directory agree."""
        if self._settings.server_tls is not None:
            from controlplane.tls import peer_identity

            identity = peer_identity(writer.get_extra_info("peercert"))
            if identity is None or identity.role != "server":
                raise _Refused(f"the certificate does not name a server (claims {hello.node_id!r})")
            if identity.id != hello.node_id:
                raise _Refused(f"certificate names {identity.id!r} but the Hello claims {hello.node_id!r}")
        if expected_address is not None and hello.raft_address != expected_address:
            raise _Refused(f"dialed {expected_address} but {hello.node_id} says it is at {hello.raft_address}")
        reason = self._settings.authorize(hello.node_id, hello.raft_address, hello.learner)
        if reason is not None:
            raise _Refused(reason)
        return hello.node_id

    async def _read_frame(self, reader: asyncio.StreamReader, limit: int) -> raft_peer_pb2.PeerFrame:
        """One frame. No deadline of its own: the handshake runs under one, and an authenticated peer
        that stalls mid-frame holds one buffer of at most ``limit`` bytes, on a task of its own (a
        timer per frame cost 2.5% of the leader's CPU, measured)."""
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if size > limit:
            raise _Refused(f"a frame of {size} bytes announced, above the cap of {limit}")
        body = await reader.readexactly(size)
        try:
            return raft_peer_pb2.PeerFrame.FromString(body)
        except DecodeError:
            raise _Refused("a frame that is not a PeerFrame") from None

    async def _read_frames(self, link: _Link, learner: bool) -> None:
        try:
            while not link.closed:
                frame = await self._read_frame(link.reader, self._settings.max_frame_bytes)
                self._dispatch(link, frame)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except _Refused as exc:
            log.warning("peer_frame_refused", peer=link.peer_id, reason=str(exc))
        except CodecError as exc:
            log.warning("peer_message_refused", peer=link.peer_id, reason=str(exc))
        except Exception:  # pysyncobj choking on a well-formed message: drop the link, keep the server
            log.exception("peer_message_failed", peer=link.peer_id)
        finally:
            link.close()
            node = link.node
            if node is not None and self._links.get(node) is link:
                del self._links[node]
                if learner:
                    self._onReadonlyNodeDisconnected(node)
                elif not self._destroyed:
                    self._onNodeDisconnected(node)

    def _dispatch(self, link: _Link, frame: raft_peer_pb2.PeerFrame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "raft":
            message = self._get_codec().decode(frame.raft)
            if link.learner and message.get("type") not in _LEARNER_MESSAGES:
                raise _Refused(f"a learner may not send {message.get('type')}")
            if any(isinstance(message.get(key), int) and message[key] > MAX_TERM_OR_INDEX for key in _NUMBERS):
                raise _Refused("a term or index beyond any this cluster can reach")
            if link.node is not None and not self._destroyed:
                self._onMessageReceived(link.node, message)
                self._settings.on_activity()
        elif kind == "propose_call":
            self._spawn(self._serve_propose(link, frame.propose_call))
        elif kind == "propose_reply":
            future = link.calls.pop(frame.propose_reply.call_id, None)
            if future is not None and not future.done():
                future.set_result(frame.propose_reply)
        else:
            raise _Refused(f"unexpected {kind or 'empty'} frame after the handshake")

    def _get_codec(self) -> RaftCodec:
        # SyncObj numbers its replicated methods only after creating the transport.
        if self._codec is None:
            self._codec = RaftCodec.for_syncobj(self._sync)
        return self._codec


def _close(writer: asyncio.StreamWriter | None, conn: socket.socket) -> None:
    """Close an accepted connection, through its stream once it has one."""
    if writer is not None:
        writer.close()
    else:
        conn.close()


def _keep_alive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive on an authenticated link: two followers may exchange nothing for hours, and a
    peer that vanished without a FIN (power loss, a cut cable) must still be noticed."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def transport_factory(settings: PeerSettings) -> Callable[[Any, Any, Any], PeerTransport]:
    """What pysyncobj's ``transportClass`` is given: it calls it with (sync, self node, other nodes)."""

    def create(sync: Any, self_node: Any, other_nodes: Any) -> PeerTransport:
        return PeerTransport(sync, self_node, other_nodes, settings)

    return create


def _error_from_reply(reply: raft_peer_pb2.ProposeReply) -> ControlPlaneError:
    kind = getattr(errors, reply.error_kind, None)
    if isinstance(kind, type) and issubclass(kind, ControlPlaneError):
        return errors.error_from_status(kind.code, reply.error_message, {errors.ERROR_KIND_KEY: reply.error_kind})
    return UnknownOutcome(f"the leader answered an unknown error {reply.error_kind!r}: {reply.error_message}")
