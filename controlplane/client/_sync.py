"""The blocking client: the decisions of ``_base`` run over ``grpc`` (sync) channels.

No event loop and no thread of its own: calls block the calling thread (backoff is ``time.sleep``),
and a watch is a plain iterator. The one exception is an audit watch, which reads each server's
stream in a thread while it is open. The client may be shared between threads.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from controlplane import errors
from controlplane.client import _auth, _base, _discovery
from controlplane.client import _ports as P
from controlplane.client._api_sync import Auth, Gossip, Leases, Membership, Models, Ports, Services
from controlplane.client._auth import AuditRecord
from controlplane.client._base import RespT, RetryPolicy, Rpc
from controlplane.client._credentials import Credentials
from controlplane.client._kv import (
    CasResult,
    ClusterStatus,
    Consistency,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    ListResult,
    Member,
    PutResult,
    SnapshotInfo,
)
from controlplane.v1 import cluster_pb2

__all__ = ["AuditWatch", "Client", "Watch"]

T = TypeVar("T")
#: Builds the channel for one ``host:port``; inject one to add credentials, options or a test double.
ChannelFactory = Callable[[str], grpc.Channel]
MemberList = list[Member]


class Client:
    """A blocking client for a control-plane cluster; same methods and behaviour as
    :class:`~controlplane.client.AsyncClient`.

    ``endpoints`` is ``"host:port,host:port"`` or a sequence of ``"host:port"``: any subset of the
    servers is enough, since any server answers any request. Every call finds a server that can
    answer, retries what is safe to retry until its deadline (``timeout`` seconds, default the
    client's), and raises the typed errors of :mod:`controlplane.errors` otherwise. Mutations carry
    one ``request_id`` across all their retries, so a retry never applies twice. See
    ``controlplane/client/DESIGN.md`` for the routing and retry rules.

    Channels are opened lazily, one per address, and closed by :meth:`close` (or ``with``).
    """

    @classmethod
    def from_gateway(
        cls,
        url: str,
        *,
        token: str | None = None,
        seeds: Sequence[str] = (),
        timeout: float = _base.DEFAULT_TIMEOUT,
        credentials: Credentials | None = None,
    ) -> Client:
        """A client for the servers the gateway at ``url`` names (asked once; the client then talks
        to the servers directly and follows the leader itself). ``seeds``: server addresses to ask
        if the gateway is down. Raises ``NoLeader`` while no cluster runs. Not inside a running
        event loop: use ``AsyncClient.from_gateway`` there. ``token`` is not sent (a gateway answers
        discovery without one): give the cluster's token in ``credentials``."""
        import asyncio

        _discovery.warn_unused_token(token)
        endpoints = asyncio.run(_discovery.discover_endpoints(url, seeds=seeds, credentials=credentials))
        return cls(endpoints, timeout=timeout, credentials=credentials)

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = _base.DEFAULT_TIMEOUT,
        channel_factory: ChannelFactory | None = None,
        retry_policy: RetryPolicy | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if channel_factory is not None and credentials is not None:
            raise ValueError("pass credentials or channel_factory, not both")
        self.credentials = credentials or Credentials()
        self._core = _base.ClientCore(endpoints, timeout, retry_policy)
        #: Port assignments, ranges, reservations, conflicts and repair.
        self.ports = Ports(self._unary)
        #: Service manifests whose declared ports are allocated atomically.
        self.services = Services(self._unary)
        #: Leases that port assignments (and agents) hang on.
        self.leases = Leases(self._unary)
        #: The model registry: versions, aliases, replicas and search.
        self.models = Models(self._unary)
        #: Nodes and their liveness, networks, client places and feature flags.
        self.membership = Membership(self._unary)
        #: The gossip layer's bandwidth matrix and rounds.
        self.gossip = Gossip(self._unary)
        #: Users, roles, permissions and bearer tokens.
        self.auth = Auth(self._unary)
        self._channel_factory = channel_factory or self.credentials.sync_channel_factory()
        self._channels: dict[str, grpc.Channel] = {}
        self._methods: dict[tuple[str, str, str], Any] = {}
        self._watches: set[Watch | AuditWatch] = set()
        self._lock = threading.Lock()  # guards the three collections above

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._core.router.endpoints

    @property
    def leader_address(self) -> str:
        """The leader's client address as last learned from a response, or ``""``."""
        return self._core.router.leader

    # --- KV ---------------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: bytes | str,
        *,
        prev_kv: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> PutResult:
        """Create or replace ``key`` (a str value is stored UTF-8 encoded).

        ``prev_kv=True`` also returns the value it replaced. ``request_id`` defaults to a fresh id;
        pass your own to retry a call whose outcome you did not learn (e.g. after DeadlineExceeded).
        """
        request = _base.put_request(key, value, prev_kv=prev_kv, request_id=request_id)
        return _base.put_result(request, self._unary(_base.PUT, request, timeout))

    def get(
        self,
        key: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        """The key's current value, or None if it does not exist.

        ``Consistency.STALE`` answers from whichever server receives the read; ``min_revision``
        makes that server wait until it has applied that revision (read-your-writes).
        """
        request = _base.get_request(key, consistency, min_revision)
        return _base.get_result(self._unary(_base.GET, request, timeout))

    def delete(self, key: str, *, request_id: str | None = None, timeout: float | None = None) -> DeleteResult:
        """Delete ``key``. Deleting a missing key succeeds with ``deleted=False``."""
        request = _base.delete_request(key, request_id)
        return _base.delete_result(self._unary(_base.DELETE, request, timeout))

    def list(
        self,
        prefix: str = "",
        *,
        limit: int = 0,
        start_after: str = "",
        keys_only: bool = False,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> ListResult:
        """One page of keys under ``prefix`` in lexical order (``limit`` 0: the server maximum).

        When ``more`` is set, ask for the next page with ``start_after=result.kvs[-1].key``.
        """
        request = _base.list_request(
            prefix,
            limit=limit,
            start_after=start_after,
            keys_only=keys_only,
            consistency=consistency,
            min_revision=min_revision,
        )
        return _base.list_result(self._unary(_base.LIST, request, timeout))

    def compare_and_swap(
        self,
        key: str,
        value: bytes | str,
        expected_mod_revision: int,
        *,
        delete: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> CasResult:
        """Write ``value`` (or delete the key when ``delete``) only if the key's ``mod_revision`` is
        still ``expected_mod_revision`` (0: only if the key does not exist).

        A lost race is ``succeeded=False`` with the current holder in ``kv``, not an error.
        """
        request = _base.compare_and_swap_request(
            key, value, expected_mod_revision, delete=delete, request_id=request_id
        )
        return _base.cas_result(request, self._unary(_base.COMPARE_AND_SWAP, request, timeout))

    # --- Watch ------------------------------------------------------------------------------------

    def watch(
        self,
        prefix: str = "",
        *,
        from_revision: int = 0,
        domains: Iterable[str] = (),
        types: Iterable[EventType] = (),
    ) -> Watch:
        """An iterator over every change under ``prefix``, in revision order, without end.

        Same guarantees as :meth:`AsyncClient.watch`: resumes after a broken stream from the
        revision after the last one delivered (no gap, no duplicate), raises ``OutOfRange`` when
        that history is gone. Stop it with ``watch.close()`` (from any thread; a blocked ``next()``
        then ends the iteration), ``with``, or by closing the client.
        """
        self._core.check_open()
        watch = Watch(self, _base.WatchCursor(prefix, from_revision, domains, types))
        with self._lock:
            self._watches.add(watch)
        return watch

    def watch_audit(
        self, *, on_change: _auth.AuditStreamChange | None = None, timeout: float | None = None
    ) -> AuditWatch:
        """An iterator over every changing call the cluster's servers judge from now on, as their
        audit logs record it: when, which server, who, the method, what it named and the outcome.
        For cluster admins: ``PermissionDenied`` otherwise, raised here.

        Each server audits the calls it answers, so this follows every member the cluster lists
        (the endpoints when it lists none), one stream each, and returns once every one has
        subscribed or ``timeout`` has passed, whichever comes first: a call judged afterwards by a
        server in ``following`` is delivered. Records of different servers come in the order they
        arrive. A server whose stream breaks (a restart, a partition, a rate limit) is followed
        again, with backoff, for as long as the watch is open; ``on_change(node_id, address,
        state)`` is told each time a stream subscribes (``"following"``) or breaks (why), on
        its reader threads, several at once; should it raise, the watch ends with ``Internal``. What a
        server judged meanwhile, and records it skipped for a reader that fell behind
        (``AuditRecord.missed``), are in its ``data_dir/audit.log``. Stop it with ``close()``
        (from any thread), ``with``, or by closing the client. Same as
        :meth:`AsyncClient.watch_audit`; reading each server's stream takes a thread (and a
        channel) of its own while the watch is open.
        """
        deadline = time.monotonic() + (self._core.timeout if timeout is None else timeout)
        members = self.status(timeout=max(deadline - time.monotonic(), 0.0)).members
        watch = AuditWatch(self, _auth.audit_servers(members, self.endpoints), on_change)
        with self._lock:
            self._core.check_open()
            self._watches.add(watch)
        watch.start(deadline)
        return watch

    # --- Cluster ----------------------------------------------------------------------------------

    def status(self, *, timeout: float | None = None) -> ClusterStatus:
        """The status of whichever server answers (see ``node_id``); also refreshes the leader hint."""
        return _base.cluster_status(self._unary(_base.STATUS, cluster_pb2.StatusRequest(), timeout))

    def check_permission(
        self, identity: str, domain: str, verb: str, resource: str = "", *, timeout: float | None = None
    ) -> str | None:
        """Whether ``identity`` (``user:alice``, ``agent:n1``, ``server:s1``) holds a permission, as the
        answering server's state says: None if it does, else why not. For agents and servers that
        guard a port of their own (an agent's artifact port); callers need cluster admin otherwise."""
        request = _base.check_permission_request(identity, domain, verb, resource)
        return _base.permission_answer(self._unary(_base.CHECK_PERMISSION, request, timeout))

    def add_member(
        self, id: str, raft_address: str, client_address: str, *, timeout: float | None = None
    ) -> MemberList:
        """Add a server as a Raft voter; returns the new membership.

        One change at a time: while another is in flight this raises ``FailedPrecondition``.
        """
        request = _base.add_member_request(id, raft_address, client_address)
        return _base.members(self._unary(_base.ADD_MEMBER, request, timeout).members)

    def remove_member(self, id: str, *, timeout: float | None = None) -> MemberList:
        """Remove a voter; returns the new membership."""
        request = _base.remove_member_request(id)
        return _base.members(self._unary(_base.REMOVE_MEMBER, request, timeout).members)

    def transfer_leadership(self, target_id: str = "", *, timeout: float | None = None) -> tuple[str, int]:
        """Hand leadership to ``target_id`` (empty: the most caught-up follower); returns the new
        leader's id and term. Not retried after ``UnknownOutcome`` when no target is named.
        """
        request = cluster_pb2.TransferLeadershipRequest(target_id=target_id)
        response = self._unary(_base.TRANSFER_LEADERSHIP, request, timeout, retry_unknown=bool(target_id))
        self._core.router.forget_leader()  # the old hint is wrong now; the next response names the new one
        return response.leader_id, response.term

    def snapshot(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> SnapshotInfo:
        """Write a consistent backup to ``path`` atomically (temp file, size + sha256 check, fsync,
        rename). A broken stream is restarted within the deadline; a stream that does not match its
        own checksum raises ``Internal`` and leaves ``path`` untouched.
        """
        attempts = self._core.attempts(_base.SNAPSHOT, timeout, capped=False)
        request = cluster_pb2.SnapshotRequest()

        def once(address: str, remaining: float) -> SnapshotInfo:
            sink = _base.SnapshotSink(path, address)
            try:
                for chunk in self._method(address, _base.SNAPSHOT, "unary_stream")(request, timeout=remaining):
                    sink.write(chunk)
                return sink.commit()
            except BaseException:
                sink.abort()
                raise

        return self._retry(attempts, once)

    def restore(self, path: str | os.PathLike[str], *, include_auth: bool = False, timeout: float | None = None) -> int:
        """Replace the replicated state with the backup at ``path``; returns the revision at which
        it took effect. Streams 1 MiB chunks, the first announcing size and sha256.

        ``include_auth`` also brings back the backup's users, roles and tokens (disaster recovery
        into a new cluster); tokens this cluster revoked stay revoked.
        """
        header = _base.restore_header(path, include_auth)
        attempts = self._core.attempts(_base.RESTORE, timeout, capped=False)

        def once(address: str, remaining: float) -> cluster_pb2.RestoreResponse:
            method = self._method(address, _base.RESTORE, "stream_unary")
            response: cluster_pb2.RestoreResponse = method(_base.restore_chunks(path, header), timeout=remaining)
            return response

        response = self._retry(attempts, once)
        _base.check_auth_restored(response, include_auth)
        return response.revision

    # --- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every watch and close every channel. Calls in flight fail; later calls raise RuntimeError."""
        self._core.closed = True
        with self._lock:
            watches, self._watches = list(self._watches), set()
            channels, self._channels = list(self._channels.values()), {}
            self._methods.clear()
        for watch in watches:
            watch.close()
        for channel in channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------------

    def _method(self, address: str, rpc: Rpc[Any], kind: str) -> Any:
        """The multicallable for ``rpc`` on the channel to ``address`` (opened on first use)."""
        with self._lock:
            self._core.check_open()
            cached = self._methods.get((address, rpc.path, kind))
            if cached is None:
                channel = self._channels.get(address)
                if channel is None:
                    channel = self._channels[address] = self._channel_factory(address)
                cached = getattr(channel, kind)(
                    rpc.path,
                    request_serializer=_base.serialize,
                    response_deserializer=rpc.response.FromString,
                )
                self._methods[(address, rpc.path, kind)] = cached
            return cached

    def _unary(self, rpc: Rpc[RespT], request: Any, timeout: float | None, *, retry_unknown: bool = True) -> RespT:
        attempts = self._core.attempts(rpc, timeout, retry_unknown=retry_unknown)

        def once(address: str, remaining: float) -> RespT:
            method = self._method(address, rpc, "unary_unary")
            check_after = attempts.leader_check_after(address)
            probe_after = attempts.liveness_check_after(address)
            if not check_after and not probe_after:
                response: RespT = method(request, timeout=remaining)
                return response
            call = method.future(request, timeout=remaining)
            wait = check_after
            try:
                if probe_after:
                    return self._unless_unresponsive(call, address, probe_after, attempts)
                while True:
                    try:
                        answered: RespT = call.result(timeout=wait)
                        return answered
                    except grpc.FutureTimeoutError:
                        pass
                    moved, named = self._ask_who_leads(address, attempts)
                    if call.done():  # it answered while we asked: that answer stands
                        answered = call.result()
                        return answered
                    if moved is not None:
                        raise moved
                    if named:  # the same leader, only slow: wait for it
                        answered = call.result()
                        return answered
                    wait = attempts.leader_recheck()  # nobody knows a leader yet: ask again soon
            finally:
                if not call.done():
                    call.cancel()

        return self._retry(attempts, once)

    def _unless_unresponsive(self, call: Any, address: str, after: float, attempts: _base.Attempts) -> Any:
        """The read's answer; or, when it has not come after ``after`` seconds and the server does
        not answer a status check either, ``Unresponsive`` (the caller cancels the call). With less
        time left than a whole check, silence would prove nothing: the read keeps waiting."""
        try:
            return call.result(timeout=after)
        except grpc.FutureTimeoutError:
            pass
        budget = attempts.leader_recheck()
        if attempts.remaining() < budget:
            return call.result()
        try:
            self._method(address, _base.STATUS, "unary_unary")(cluster_pb2.StatusRequest(), timeout=budget)
        except grpc.RpcError as exc:
            if not call.done() and exc.code() in _base.UNRESPONSIVE_CODES:
                raise _base.Unresponsive(address, after) from None
        return call.result()  # it is alive, only slow (or answered while we asked): its answer stands

    def _ask_who_leads(self, address: str, attempts: _base.Attempts) -> tuple[errors.UnknownOutcome | None, str]:
        """Ask the other endpoints, in turn, who leads while ``address`` does not answer: (the error
        to retry elsewhere with, or None; the leader the first one that answered named)."""
        for other in attempts.others(address):
            try:
                status = self._method(other, _base.STATUS, "unary_unary")(
                    cluster_pb2.StatusRequest(), timeout=min(attempts.leader_recheck(), attempts.remaining())
                )
            except grpc.RpcError:
                continue
            return attempts.leader_moved(address, other, status), _base.believed_leader(status)
        return None, ""

    def _retry(self, attempts: _base.Attempts, once: Callable[[str, float], T]) -> T:
        while True:
            address = attempts.target()
            try:
                result = once(address, attempts.attempt_timeout())
            except grpc.RpcError as exc:
                if self._core.closed:
                    raise RuntimeError("the client was closed during the call") from exc
                time.sleep(attempts.failed(address, _base.error_from_rpc(exc)))
            except (errors.UnknownOutcome, _base.Unresponsive) as exc:  # a deposed leader, a frozen server
                time.sleep(attempts.failed(address, exc))
            else:
                attempts.succeeded(address, _base.leader_address_of(result))
                return result

    def _forget(self, watch: Watch | AuditWatch) -> None:
        with self._lock:
            self._watches.discard(watch)


class Watch:
    """The iterator :meth:`Client.watch` returns. See there for its guarantees.

    One thread iterates; any thread may call :meth:`close`. Its stream stays open until
    :meth:`close` or the client's ``close()``.
    """

    def __init__(self, client: Client, cursor: _base.WatchCursor) -> None:
        self._client = client
        self._cursor = cursor
        self._pending: deque[Event] = deque()
        self._call: Any = None
        self._address = ""
        self._closed = False
        # close() sets it so that a watch waiting out a backoff stops at once.
        self._wake = threading.Event()
        self._lock = threading.Lock()  # orders close() against opening a stream
        self._retries = 0

    @property
    def revision(self) -> int:
        """Every matching event up to this revision has been returned to you (0 before the first
        message). Persist it to resume a later watch with ``from_revision=revision + 1``.
        """
        if self._pending:
            # Events received but not yet returned are not "delivered" to the caller.
            return self._pending[0].revision - 1
        return self._cursor.delivered or 0

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._receive()
        return self._pending.popleft()

    def _receive(self) -> None:
        """Read one stream message into ``_pending``, (re)opening the stream as needed."""
        router = self._client._core.router
        with self._lock:
            if self._closed or self._client._core.closed:
                self._closed = True
                return
            if self._call is None:
                self._address = router.pick(write=False)
                try:
                    method = self._client._method(self._address, _base.WATCH, "unary_stream")
                except RuntimeError:  # the client was closed by another thread just now
                    self._closed = True
                    return
                self._call = method(self._cursor.request())
            call, address = self._call, self._address
        # Servers send a progress notice every second; a stream silent for longer is hung (a frozen
        # server or a partition that keeps the connection open): cancel it and reconnect elsewhere.
        silenced = threading.Event()

        def silence() -> None:
            silenced.set()
            call.cancel()

        watchdog = threading.Timer(_base.WATCH_SILENCE_S, silence)
        watchdog.daemon = True
        watchdog.start()
        try:
            message = next(call)
        except StopIteration:
            # The server ended the stream cleanly (e.g. it is shutting down): reconnect.
            self._drop(call)
            self._backoff()
            return
        except grpc.RpcError as exc:
            self._drop(call)
            if self._closed or self._client._core.closed:
                self._closed = True  # our close() (or the client's) cancelled the stream
                return
            if silenced.is_set():
                router.failed(address)
                self._backoff()
                return
            error = _base.error_from_rpc(exc)
            if not isinstance(error, errors.Unavailable):
                self.close()
                raise error from exc
            router.failed(address)
            self._backoff()
            return
        finally:
            watchdog.cancel()
        self._retries = 0
        router.succeeded(address, "")
        self._pending.extend(self._cursor.accept(message))

    def _drop(self, call: Any) -> None:
        with self._lock:
            if self._call is call:
                self._call = None

    def _backoff(self) -> None:
        self._wake.wait(self._client._core.policy.backoff(self._retries))
        self._retries += 1

    def close(self) -> None:
        """Stop the watch: cancels its stream; the iteration ends (StopIteration). Idempotent."""
        with self._lock:
            self._closed = True
            self._wake.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._client._forget(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AuditWatch:
    """The iterator :meth:`Client.watch_audit` returns. See there for its guarantees.

    One thread iterates; any thread may call :meth:`close`. A thread per server reads that
    server's stream into a bounded buffer, until the watch is closed.
    """

    def __init__(
        self, client: Client, servers: dict[str, str], on_change: _auth.AuditStreamChange | None = None
    ) -> None:
        self._client = client
        #: The servers this watch follows: node id -> client address.
        self.servers = dict(servers)
        self._on_change = on_change
        self._records: queue.Queue[AuditRecord | errors.ControlPlaneError | None] = queue.Queue(_auth.AUDIT_BUFFER)
        self._closed = threading.Event()
        self._changed = threading.Condition()  # a stream subscribed or broke, the watch failed or closed
        self._subscribed: set[str] = set()
        self._failure: errors.ControlPlaneError | None = None
        self._calls: dict[str, Any] = {}
        self._threads = [
            threading.Thread(target=self._follow, args=item, name=f"audit-{item[0]}", daemon=True)
            for item in sorted(self.servers.items())
        ]

    @property
    def following(self) -> tuple[str, ...]:
        """The servers (node ids) whose streams are open now."""
        with self._changed:
            return tuple(sorted(self._subscribed))

    def start(self, deadline: float) -> None:
        """Open every server's stream; wait until all have subscribed or ``deadline`` (monotonic)
        has passed. An error that is an answer (``PermissionDenied``) closes the watch and is
        raised; so does anything that interrupts the wait (Ctrl-C)."""
        try:
            for thread in self._threads:
                thread.start()
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._closed.is_set() or self._failure is not None or len(self._subscribed) == len(self.servers)
                    ),
                    timeout=min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX),
                )
        except BaseException:
            self.close()
            raise
        if self._failure is not None:
            self.close()
            raise self._failure
        if self._closed.is_set():
            raise RuntimeError("the client was closed")

    def _follow(self, name: str, address: str) -> None:
        retries = 0
        try:
            while not self._closed.is_set():
                if self._read_stream(name, address):
                    retries = 0
                self._closed.wait(self._client._core.policy.backoff(retries))
                retries += 1
        except Exception as exc:  # an answer about the caller, credentials that cannot work, a bug
            self._fail(_auth.follow_failure(name, address, exc))

    def _read_stream(self, name: str, address: str) -> bool:
        """Read one stream of ``address`` until it breaks; True if it subscribed. Raises the error
        that ends the watch. Each stream dials a channel of its own: a server back from a restart
        is followed at once, not after a cached channel's reconnect backoff."""
        channel = self._client._channel_factory(address)
        subscribed = False
        try:
            call = _auth.open_audit_stream(channel)
            with self._changed:
                if self._closed.is_set():
                    call.cancel()
                    return False
                self._calls[name] = call
            try:
                if _auth.audit_subscribed(call.initial_metadata()):
                    subscribed = self._mark(name, address, "following")
                for message in call:
                    if not subscribed:  # a server older than the subscribed header
                        subscribed = self._mark(name, address, "following")
                    if not self._hand_over(P.convert(AuditRecord, message)):
                        return subscribed
                reason = "the server ended the stream"
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return subscribed
                error = _auth.audit_stream_error(exc)
                if error is not None:
                    raise error from None
                reason = _auth.describe_rpc_error(exc)
            self._mark(name, address, reason)
            return subscribed
        finally:
            with self._changed:
                self._calls.pop(name, None)
                self._subscribed.discard(name)
                self._changed.notify_all()
            channel.close()

    def _mark(self, name: str, address: str, state: str) -> bool:
        """Record that ``name``'s stream subscribed (``"following"``) or broke, and tell the
        caller's callback; True if it subscribed."""
        with self._changed:
            if self._closed.is_set():
                return False
            if state == "following":
                self._subscribed.add(name)
            else:
                self._subscribed.discard(name)
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change(name, address, state)
        return state == "following"

    def _fail(self, error: errors.ControlPlaneError) -> None:
        with self._changed:
            if self._closed.is_set():
                return
            self._failure = self._failure or error
            self._changed.notify_all()
        self._hand_over(error)

    def _hand_over(self, item: AuditRecord | errors.ControlPlaneError) -> bool:
        """Wait for room in the buffer (the stream is not read meanwhile); False once closed."""
        while not self._closed.is_set():
            try:
                self._records.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> AuditWatch:
        return self

    def __next__(self) -> AuditRecord:
        if self._closed.is_set():
            raise StopIteration
        item = self._records.get()
        if item is None or self._closed.is_set():
            raise StopIteration
        if isinstance(item, errors.ControlPlaneError):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the watch: cancels every stream; the iteration ends (StopIteration). Idempotent."""
        with self._changed:
            self._closed.set()
            calls, self._calls = list(self._calls.values()), {}
            self._changed.notify_all()
        for call in calls:
            call.cancel()
        with contextlib.suppress(queue.Full):
            self._records.put_nowait(None)  # wakes a reader waiting in next(); a full buffer wakes it anyway
        self._client._forget(self)
        current = threading.current_thread()
        for thread in self._threads:
            if thread.is_alive() and thread is not current:
                thread.join(timeout=2.0)  # each ends once its cancelled stream returns

    def __enter__(self) -> AuditWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
