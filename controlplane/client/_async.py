"""The asyncio client: the decisions of ``_base`` run over ``grpc.aio`` channels."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from controlplane import errors
from controlplane.client import _auth, _base, _discovery
from controlplane.client import _ports as P
from controlplane.client._api_async import (
    AsyncAuth,
    AsyncGossip,
    AsyncLeases,
    AsyncMembership,
    AsyncModels,
    AsyncPorts,
    AsyncServices,
)
from controlplane.client._auth import AuditRecord
from controlplane.client._base import RespT, RetryPolicy, Rpc
from controlplane.client._calls import CallCarrier, CarriedUnary
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

__all__ = ["AsyncAuditWatch", "AsyncClient", "AsyncWatch"]

T = TypeVar("T")
#: Builds the channel for one ``host:port``; inject one to add credentials, options or a test double.
AsyncChannelFactory = Callable[[str], grpc.aio.Channel]
MemberList = list[Member]


class AsyncClient:
    """An asyncio client for a control-plane cluster.

    ``endpoints`` is ``"host:port,host:port"`` or a sequence of ``"host:port"``: any subset of the
    servers is enough, since any server answers any request. Every call finds a server that can
    answer, retries what is safe to retry until its deadline (``timeout`` seconds, default the
    client's), and raises the typed errors of :mod:`controlplane.errors` otherwise. Mutations carry
    one ``request_id`` across all their retries, so a retry never applies twice. See
    ``controlplane/client/DESIGN.md`` for the routing and retry rules.

    Channels are opened lazily, one per address, and closed by :meth:`close` (or ``async with``).
    Create and use the client on one event loop.
    """

    @classmethod
    async def from_gateway(
        cls,
        url: str,
        *,
        token: str | None = None,
        seeds: Sequence[str] = (),
        timeout: float = _base.DEFAULT_TIMEOUT,
        credentials: Credentials | None = None,
    ) -> AsyncClient:
        """A client for the servers the gateway at ``url`` names (asked once; the client then talks
        to the servers directly and follows the leader itself). ``seeds``: server addresses to ask
        if the gateway is down. Raises ``NoLeader`` while no cluster runs. ``token`` is not sent (a
        gateway answers discovery without one): give the cluster's token in ``credentials``."""
        _discovery.warn_unused_token(token)
        endpoints = await _discovery.discover_endpoints(url, seeds=seeds, credentials=credentials)
        return cls(endpoints, timeout=timeout, credentials=credentials)

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = _base.DEFAULT_TIMEOUT,
        channel_factory: AsyncChannelFactory | None = None,
        retry_policy: RetryPolicy | None = None,
        credentials: Credentials | None = None,
        carry_calls: bool = True,
    ) -> None:
        if channel_factory is not None and credentials is not None:
            raise ValueError("pass credentials or channel_factory, not both")
        #: Unary calls travel as messages on one stream per server (``Calls.Carry``), which costs a
        #: server about half the CPU of a call of its own, and less under load, batched; False
        #: sends each as a call of its own.
        self.carry_calls = carry_calls
        self.credentials = credentials or Credentials()
        self._core = _base.ClientCore(endpoints, timeout, retry_policy)
        #: Port assignments, ranges, reservations, conflicts and repair.
        self.ports = AsyncPorts(self._unary)
        #: Service manifests whose declared ports are allocated atomically.
        self.services = AsyncServices(self._unary)
        #: Leases that port assignments (and agents) hang on.
        self.leases = AsyncLeases(self._unary)
        #: The model registry: versions, aliases, replicas and search.
        self.models = AsyncModels(self._unary)
        #: Nodes and their liveness, networks, client places and feature flags.
        self.membership = AsyncMembership(self._unary)
        #: The gossip layer's bandwidth matrix and rounds.
        self.gossip = AsyncGossip(self._unary)
        #: Users, roles, permissions and bearer tokens.
        self.auth = AsyncAuth(self._unary)
        self._channel_factory = channel_factory or self.credentials.async_channel_factory()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, str, str], Any] = {}
        self._carriers: dict[str, CallCarrier] = {}
        self._watches: set[AsyncWatch | AsyncAuditWatch] = set()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._core.router.endpoints

    @property
    def leader_address(self) -> str:
        """The leader's client address as last learned from a response, or ``""``."""
        return self._core.router.leader

    # --- KV ---------------------------------------------------------------------------------------

    async def put(
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
        return _base.put_result(request, await self._unary(_base.PUT, request, timeout))

    async def get(
        self,
        key: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        """The key's current value, or None if it does not exist.

        ``Consistency.STALE`` answers from whichever server receives the read; ``min_revision``
        makes that server wait until it has applied that revision (read-your-writes: pass the
        ``revision`` of your write).
        """
        request = _base.get_request(key, consistency, min_revision)
        return _base.get_result(await self._unary(_base.GET, request, timeout))

    async def delete(self, key: str, *, request_id: str | None = None, timeout: float | None = None) -> DeleteResult:
        """Delete ``key``. Deleting a missing key succeeds with ``deleted=False``."""
        request = _base.delete_request(key, request_id)
        return _base.delete_result(await self._unary(_base.DELETE, request, timeout))

    async def list(
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
        ``keys_only`` leaves values empty.
        """
        request = _base.list_request(
            prefix,
            limit=limit,
            start_after=start_after,
            keys_only=keys_only,
            consistency=consistency,
            min_revision=min_revision,
        )
        return _base.list_result(await self._unary(_base.LIST, request, timeout))

    async def compare_and_swap(
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
        return _base.cas_result(request, await self._unary(_base.COMPARE_AND_SWAP, request, timeout))

    # --- Watch ------------------------------------------------------------------------------------

    def watch(
        self,
        prefix: str = "",
        *,
        from_revision: int = 0,
        domains: Iterable[str] = (),
        types: Iterable[EventType] = (),
    ) -> AsyncWatch:
        """An async iterator over every change under ``prefix``, in revision order, without end.

        ``from_revision`` 0 means "changes after now"; otherwise the first revision to deliver.
        ``domains`` defaults to ``("kv",)`` server-side; ``types`` empty means all.

        The watch survives server restarts and failovers: when its stream breaks it reconnects
        (to any endpoint, with backoff, for as long as it takes) from the revision after the last
        one delivered, so events are neither lost nor repeated. It raises ``OutOfRange`` (with
        ``oldest_revision``) when the history it needs has been compacted, and the typed error for
        any answer that is not a transient failure. Stop it with ``await watch.aclose()``,
        ``async with``, by cancelling the task iterating it, or by closing the client.
        """
        self._core.check_open()
        watch = AsyncWatch(self, _base.WatchCursor(prefix, from_revision, domains, types))
        self._watches.add(watch)
        return watch

    async def watch_audit(
        self, *, on_change: _auth.AuditStreamChange | None = None, timeout: float | None = None
    ) -> AsyncAuditWatch:
        """An async iterator over every changing call the cluster's servers judge from now on, as
        their audit logs record it: when, which server, who, the method, what it named and the
        outcome. For cluster admins: ``PermissionDenied`` otherwise, raised here.

        Each server audits the calls it answers, so this follows every member the cluster lists
        (the endpoints when it lists none), one stream each, and returns once every one has
        subscribed or ``timeout`` has passed, whichever comes first: a call judged afterwards by a
        server in ``following`` is delivered. Records of different servers come in the order they
        arrive. A server whose stream breaks (a restart, a partition, a rate limit) is followed
        again, with backoff, for as long as the watch is open; ``on_change(node_id, address,
        state)`` is told each time a stream subscribes (``"following"``) or breaks (why), on
        the event loop; should it raise, the watch ends with ``Internal``. What a
        server judged meanwhile, and records it skipped for a reader that fell behind
        (``AuditRecord.missed``), are in its ``data_dir/audit.log``. Stop it with ``await
        watch.aclose()``, ``async with``, or by closing the client. A task (and a channel) per
        server reads its stream while the watch is open.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._core.timeout if timeout is None else timeout)
        members = (await self.status(timeout=max(deadline - loop.time(), 0.0))).members
        self._core.check_open()
        watch = AsyncAuditWatch(self, _auth.audit_servers(members, self.endpoints), on_change)
        self._watches.add(watch)
        await watch.start(deadline)
        return watch

    # --- Cluster ----------------------------------------------------------------------------------

    async def status(self, *, timeout: float | None = None) -> ClusterStatus:
        """The status of whichever server answers (see ``node_id``); also refreshes the leader hint."""
        request = cluster_pb2.StatusRequest()
        return _base.cluster_status(await self._unary(_base.STATUS, request, timeout))

    async def check_permission(
        self, identity: str, domain: str, verb: str, resource: str = "", *, timeout: float | None = None
    ) -> str | None:
        """Whether ``identity`` (``user:alice``, ``agent:n1``, ``server:s1``) holds a permission, as the
        answering server's state says: None if it does, else why not. For agents and servers that
        guard a port of their own (an agent's artifact port); callers need cluster admin otherwise."""
        request = _base.check_permission_request(identity, domain, verb, resource)
        return _base.permission_answer(await self._unary(_base.CHECK_PERMISSION, request, timeout))

    async def add_member(
        self, id: str, raft_address: str, client_address: str, *, timeout: float | None = None
    ) -> MemberList:
        """Add a server as a Raft voter; returns the new membership.

        One change at a time: while another is in flight this raises ``FailedPrecondition``.
        """
        request = _base.add_member_request(id, raft_address, client_address)
        return _base.members((await self._unary(_base.ADD_MEMBER, request, timeout)).members)

    async def remove_member(self, id: str, *, timeout: float | None = None) -> MemberList:
        """Remove a voter; returns the new membership."""
        request = _base.remove_member_request(id)
        return _base.members((await self._unary(_base.REMOVE_MEMBER, request, timeout)).members)

    async def transfer_leadership(self, target_id: str = "", *, timeout: float | None = None) -> tuple[str, int]:
        """Hand leadership to ``target_id`` (empty: the most caught-up follower); returns the new
        leader's id and term.

        Not retried after ``UnknownOutcome``: without a target a second attempt could move
        leadership twice.
        """
        request = cluster_pb2.TransferLeadershipRequest(target_id=target_id)
        response = await self._unary(_base.TRANSFER_LEADERSHIP, request, timeout, retry_unknown=bool(target_id))
        self._core.router.forget_leader()  # the old hint is wrong now; the next response names the new one
        return response.leader_id, response.term

    async def snapshot(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> SnapshotInfo:
        """Write a consistent backup of the replicated state to ``path``.

        The stream is written to a temporary file beside ``path``, checked against the size and
        sha256 its first chunk announces, fsynced and renamed over ``path``: ``path`` is never left
        partial. A broken stream is restarted from scratch (within the deadline; large states need
        a larger ``timeout``). A stream that does not match its own checksum raises ``Internal``.
        """
        attempts = self._core.attempts(_base.SNAPSHOT, timeout, capped=False)
        request = cluster_pb2.SnapshotRequest()

        async def once(address: str, remaining: float) -> SnapshotInfo:
            sink = await asyncio.to_thread(_base.SnapshotSink, path, address)
            try:
                call = self._method(address, _base.SNAPSHOT, "unary_stream")(request, timeout=remaining)
                async for chunk in call:
                    await asyncio.to_thread(sink.write, chunk)
                return await asyncio.to_thread(sink.commit)
            except BaseException:
                sink.abort()  # a close and an unlink: quick, and must happen even when cancelled
                raise

        return await self._retry(attempts, once)

    async def restore(
        self, path: str | os.PathLike[str], *, include_auth: bool = False, timeout: float | None = None
    ) -> int:
        """Replace the replicated state with the backup at ``path``; returns the revision at which
        the restored state took effect.

        The file is hashed first, then streamed in 1 MiB chunks, the first announcing its size and
        sha256 so the server can refuse a damaged upload. Retried like any write, with one request
        id, so a retry is applied once. ``include_auth`` also brings back the backup's users, roles
        and tokens (disaster recovery into a new cluster); tokens this cluster revoked stay revoked.
        """
        header = await asyncio.to_thread(_base.restore_header, path, include_auth)
        attempts = self._core.attempts(_base.RESTORE, timeout, capped=False)

        async def once(address: str, remaining: float) -> cluster_pb2.RestoreResponse:
            method = self._method(address, _base.RESTORE, "stream_unary")
            response: cluster_pb2.RestoreResponse = await method(_read_chunks(path, header), timeout=remaining)
            return response

        response = await self._retry(attempts, once)
        _base.check_auth_restored(response, include_auth)
        return response.revision

    # --- lifecycle --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every watch and close every channel. Calls in flight fail; later calls raise RuntimeError."""
        self._core.closed = True
        for watch in list(self._watches):
            await watch.aclose()
        channels, self._channels = list(self._channels.values()), {}
        carriers, self._carriers = list(self._carriers.values()), {}
        self._methods.clear()
        for carrier in carriers:
            await carrier.close()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- transport --------------------------------------------------------------------------------

    def _method(self, address: str, rpc: Rpc[Any], kind: str) -> Any:
        """The multicallable for ``rpc`` on the channel to ``address`` (opened on first use)."""
        self._core.check_open()
        cached = self._methods.get((address, rpc.path, kind))
        if cached is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = self._channel_factory(address)
            if kind == "unary_unary" and self.carry_calls:
                carrier = self._carriers.get(address)
                if carrier is None:
                    carrier = self._carriers[address] = CallCarrier(channel)
                cached = CarriedUnary.on(carrier, channel, rpc.path, _base.serialize, rpc.response.FromString)
            else:
                cached = getattr(channel, kind)(
                    rpc.path,
                    request_serializer=_base.serialize,
                    response_deserializer=rpc.response.FromString,
                )
            self._methods[(address, rpc.path, kind)] = cached
        return cached

    def _status_alone(self, address: str) -> Any:
        """``Cluster.Status`` at ``address`` as a call of its own: a check of whether a server is
        alive, or who leads, must not wait behind the calls on its stream."""
        method = self._method(address, _base.STATUS, "unary_unary")
        return method.alone if isinstance(method, CarriedUnary) else method

    async def _unary(
        self, rpc: Rpc[RespT], request: Any, timeout: float | None, *, retry_unknown: bool = True
    ) -> RespT:
        attempts = self._core.attempts(rpc, timeout, retry_unknown=retry_unknown)

        async def once(address: str, remaining: float) -> RespT:
            method = self._method(address, rpc, "unary_unary")
            check_after = attempts.leader_check_after(address)
            probe_after = attempts.liveness_check_after(address)
            if not check_after and not probe_after:
                response: RespT = await method(request, timeout=remaining)
                return response
            call = method(request, timeout=remaining)
            waiter: asyncio.Future[RespT] = asyncio.ensure_future(call)
            wait = check_after
            try:
                if probe_after:
                    return await self._unless_unresponsive(waiter, address, probe_after, attempts)
                while True:
                    done, _ = await asyncio.wait({waiter}, timeout=wait)
                    if done:
                        return waiter.result()
                    moved, named = await self._ask_who_leads(address, attempts)
                    if waiter.done():  # it answered while we asked: that answer stands
                        return waiter.result()
                    if moved is not None:
                        raise moved
                    if named:  # the same leader, only slow: wait for it
                        return await waiter
                    wait = attempts.leader_recheck()  # nobody knows a leader yet: ask again soon
            finally:
                if not waiter.done():
                    call.cancel()
                    waiter.cancel()
                elif not waiter.cancelled():
                    # Done, but nobody may read it now (the caller was cancelled while asking who
                    # leads): retrieved here, or asyncio prints it at exit with a traceback.
                    waiter.exception()

        return await self._retry(attempts, once)

    async def _unless_unresponsive(
        self, waiter: asyncio.Future[RespT], address: str, after: float, attempts: _base.Attempts
    ) -> RespT:
        """The read's answer; or, when it has not come after ``after`` seconds and the server does
        not answer a status check either, ``Unresponsive`` (the caller cancels the call). With less
        time left than a whole check, silence would prove nothing: the read keeps waiting."""
        done, _ = await asyncio.wait({waiter}, timeout=after)
        if done:
            return waiter.result()
        budget = attempts.leader_recheck()
        if attempts.remaining() < budget:
            return await waiter
        try:
            await self._status_alone(address)(cluster_pb2.StatusRequest(), timeout=budget)
        except grpc.aio.AioRpcError as exc:
            if not waiter.done() and exc.code() in _base.UNRESPONSIVE_CODES:
                raise _base.Unresponsive(address, after) from None
        return await waiter  # it is alive, only slow (or answered while we asked): its answer stands

    async def _ask_who_leads(self, address: str, attempts: _base.Attempts) -> tuple[errors.UnknownOutcome | None, str]:
        """Ask the other endpoints, in turn, who leads while ``address`` does not answer: (the error
        to retry elsewhere with, or None; the leader the first one that answered named)."""
        for other in attempts.others(address):
            try:
                status = await self._status_alone(other)(
                    cluster_pb2.StatusRequest(), timeout=min(attempts.leader_recheck(), attempts.remaining())
                )
            except grpc.aio.AioRpcError:
                continue
            return attempts.leader_moved(address, other, status), _base.believed_leader(status)
        return None, ""

    async def _retry(self, attempts: _base.Attempts, once: Callable[[str, float], Awaitable[T]]) -> T:
        while True:
            address = attempts.target()
            try:
                result = await once(address, attempts.attempt_timeout())
            except grpc.aio.AioRpcError as exc:
                self._core.check_open()
                await asyncio.sleep(attempts.failed(address, _base.error_from_rpc(exc)))
            except (errors.UnknownOutcome, _base.Unresponsive) as exc:  # a deposed leader, a frozen server
                await asyncio.sleep(attempts.failed(address, exc))
            except asyncio.CancelledError:
                # close() cancels calls in flight by closing their channel; that is not a
                # cancellation of the caller's task, so report it as what it is.
                task = asyncio.current_task()
                if self._core.closed and (task is None or not task.cancelling()):
                    raise RuntimeError("the client was closed during the call") from None
                raise
            else:
                attempts.succeeded(address, _base.leader_address_of(result))
                return result

    def _forget(self, watch: AsyncWatch | AsyncAuditWatch) -> None:
        self._watches.discard(watch)


async def _read_chunks(
    path: str | os.PathLike[str], header: cluster_pb2.SnapshotChunk
) -> AsyncIterator[cluster_pb2.SnapshotChunk]:
    """``_base.restore_chunks`` with each file read in a worker thread, off the event loop."""
    chunks = _base.restore_chunks(path, header)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        # If a read was still running in its worker thread (cancellation), the generator cannot be
        # closed now; it closes its file when collected.
        with contextlib.suppress(ValueError):
            chunks.close()


class AsyncWatch:
    """The async iterator :meth:`AsyncClient.watch` returns. See there for its guarantees.

    One task iterates it. Its stream stays open until :meth:`aclose` or the client's ``close()``.
    """

    def __init__(self, client: AsyncClient, cursor: _base.WatchCursor) -> None:
        self._client = client
        self._cursor = cursor
        self._pending: deque[Event] = deque()
        self._call: Any = None
        self._address = ""
        self._closed = False
        # Set by aclose() so that a watch waiting out a backoff stops at once.
        self._wake = asyncio.Event()
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

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            await self._receive()
        return self._pending.popleft()

    async def _receive(self) -> None:
        """Read one stream message into ``_pending``, (re)opening the stream as needed."""
        router = self._client._core.router
        if self._client._core.closed:
            self._closed = True
            return
        if self._call is None:
            self._address = router.pick(write=False)
            method = self._client._method(self._address, _base.WATCH, "unary_stream")
            self._call = method(self._cursor.request())
        call, address = self._call, self._address
        try:
            async with asyncio.timeout(_base.WATCH_SILENCE_S):
                message = await call.read()
        except TimeoutError:
            # Servers send a progress notice every second: this one is hung (or cut off).
            call.cancel()
            self._call = None
            router.failed(address)
            await self._backoff()
            return
        except asyncio.CancelledError:
            call.cancel()
            self._call = None
            task = asyncio.current_task()
            if (self._closed or self._client._core.closed) and (task is None or not task.cancelling()):
                # Our own aclose() or the client's close() cancelled the RPC, not someone cancelling
                # this task: end the iteration instead of leaking CancelledError to the caller.
                self._closed = True
                raise StopAsyncIteration from None
            raise
        except grpc.aio.AioRpcError as exc:
            self._call = None
            if self._closed or self._client._core.closed:
                self._closed = True
                return
            error = _base.error_from_rpc(exc)
            if not isinstance(error, errors.Unavailable):
                await self.aclose()
                raise error from exc
            router.failed(address)
            await self._backoff()
            return
        if message is grpc.aio.EOF:
            # The server ended the stream cleanly (e.g. it is shutting down): reconnect.
            self._call = None
            await self._backoff()
            return
        self._retries = 0
        router.succeeded(address, "")
        self._pending.extend(self._cursor.accept(message))

    async def _backoff(self) -> None:
        delay = self._client._core.policy.backoff(self._retries)
        self._retries += 1
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def aclose(self) -> None:
        """Stop the watch: cancels its stream; the iteration ends (StopAsyncIteration)."""
        self._closed = True
        self._wake.set()
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._client._forget(self)

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncAuditWatch:
    """The async iterator :meth:`AsyncClient.watch_audit` returns. See there for its guarantees.

    One task iterates it. A task per server reads that server's stream into a bounded buffer,
    until the watch is closed.
    """

    def __init__(
        self, client: AsyncClient, servers: dict[str, str], on_change: _auth.AuditStreamChange | None = None
    ) -> None:
        self._client = client
        #: The servers this watch follows: node id -> client address.
        self.servers = dict(servers)
        self._on_change = on_change
        self._records: asyncio.Queue[AuditRecord | errors.ControlPlaneError | None] = asyncio.Queue(_auth.AUDIT_BUFFER)
        self._closed = False
        self._wake = asyncio.Event()  # set by aclose(), so that a stream waiting out a backoff stops
        self._changed = asyncio.Event()  # a stream subscribed or broke, the watch failed or closed
        self._subscribed: set[str] = set()
        self._failure: errors.ControlPlaneError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def following(self) -> tuple[str, ...]:
        """The servers (node ids) whose streams are open now."""
        return tuple(sorted(self._subscribed))

    async def start(self, deadline: float) -> None:
        """Open every server's stream; wait until all have subscribed or ``deadline`` (the loop's
        clock) has passed. An error that is an answer (``PermissionDenied``) closes the watch and is
        raised; so does a cancellation of the wait."""
        try:
            self._tasks = [asyncio.create_task(self._follow(*item)) for item in sorted(self.servers.items())]
            loop = asyncio.get_running_loop()
            while not self._closed and self._failure is None and len(self._subscribed) < len(self.servers):
                self._changed.clear()
                try:
                    async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                        await self._changed.wait()
                except TimeoutError:
                    break
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        if self._failure is not None:
            await self.aclose()
            raise self._failure
        if self._closed:
            raise RuntimeError("the client was closed")

    async def _follow(self, name: str, address: str) -> None:
        retries = 0
        try:
            while not self._closed:
                if await self._read_stream(name, address):
                    retries = 0
                delay = self._client._core.policy.backoff(retries)
                retries += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        except Exception as exc:  # an answer about the caller, credentials that cannot work, a bug
            await self._fail(_auth.follow_failure(name, address, exc))

    async def _read_stream(self, name: str, address: str) -> bool:
        """Read one stream of ``address`` until it breaks; True if it subscribed. Raises the error
        that ends the watch. Each stream dials a channel of its own: a server back from a restart
        is followed at once, not after a cached channel's reconnect backoff."""
        channel = self._client._channel_factory(address)
        subscribed = False
        call: Any = None
        try:
            call = _auth.open_audit_stream(channel)
            try:
                if _auth.audit_subscribed(await call.initial_metadata()):
                    subscribed = self._mark(name, address, "following")
                async for message in call:
                    if not subscribed:  # a server older than the subscribed header
                        subscribed = self._mark(name, address, "following")
                    await self._records.put(P.convert(AuditRecord, message))
                reason = "the server ended the stream"
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return subscribed
                error = _auth.audit_stream_error(exc)
                if error is not None:
                    raise error from None
                reason = _auth.describe_rpc_error(exc)
            self._mark(name, address, reason)
            return subscribed
        finally:
            if call is not None:
                call.cancel()
            self._subscribed.discard(name)
            self._changed.set()
            await channel.close()

    def _mark(self, name: str, address: str, state: str) -> bool:
        """Record that ``name``'s stream subscribed (``"following"``) or broke, and tell the
        caller's callback; True if it subscribed."""
        if self._closed:
            return False
        if state == "following":
            self._subscribed.add(name)
        else:
            self._subscribed.discard(name)
        self._changed.set()
        if self._on_change is not None:
            self._on_change(name, address, state)
        return state == "following"

    async def _fail(self, error: errors.ControlPlaneError) -> None:
        if self._closed:
            return
        self._failure = self._failure or error
        self._changed.set()
        await self._records.put(error)

    def __aiter__(self) -> AsyncAuditWatch:
        return self

    async def __anext__(self) -> AuditRecord:
        if self._closed:
            raise StopAsyncIteration
        item = await self._records.get()
        if item is None or self._closed:
            raise StopAsyncIteration
        if isinstance(item, errors.ControlPlaneError):
            await self.aclose()
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the watch: cancels every stream; the iteration ends (StopAsyncIteration). Idempotent."""
        self._closed = True
        self._wake.set()
        self._changed.set()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.QueueFull):
            self._records.put_nowait(None)  # wakes a reader waiting in __anext__
        self._client._forget(self)

    async def __aenter__(self) -> AsyncAuditWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
