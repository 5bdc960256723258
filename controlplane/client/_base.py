"""What the sync and async clients share: requests, conversions, routing and the retry policy.

Nothing in this module touches the network or sleeps. ``_async.py`` and ``_sync.py`` are thin
transports that run the decisions made here over ``grpc.aio`` and ``grpc`` channels (the split of
httpx's ``BaseClient``), so both clients route, retry and convert identically.

Routing (:class:`Router`, one per client, shared by its calls and thread-safe)
    Reads go to a sticky "current" endpoint from the list the client was given; when an attempt
    there fails with ``Unavailable`` the next endpoint becomes current. Writes go to the leader
    when a response header (or a ``NotLeader`` error) has named its client address, even if that
    address is not in the list; otherwise they go to the current endpoint, and the server forwards
    them. A leader address that fails is distrusted for ``RetryPolicy.leader_hold`` seconds, because
    followers keep advertising a dead leader until the election ends.

Retrying (:class:`Attempts`, one per call)
    A call has one deadline (its ``timeout`` or the client default) and every attempt gets the
    time left as its gRPC deadline. ``Unavailable`` and its children (``NoLeader``, ``Shutdown``,
    ``UnknownOutcome``) are retried after an exponential backoff with full jitter; mutating
    requests are built once, so every retry carries the same ``request_id`` and the state machine
    deduplicates an attempt that did commit. ``NotLeader`` with an address redirects the next
    attempt there. Everything else (``InvalidArgument``, ``NotFound``, ``FailedPrecondition``, ...)
    is the cluster's answer and is raised at once.

    When the deadline passes the call raises :class:`~controlplane.errors.DeadlineExceeded` whose
    ``__cause__`` is the last retryable error. One exception type for "ran out of time" is easier
    to handle than "whichever error happened last"; the cause keeps the detail. For a mutation it
    means the outcome is unknown: pass your own ``request_id`` if you may want to retry it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from controlplane import errors, methods
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
    Role,
    SnapshotInfo,
)
from controlplane.v1 import auth_pb2, cluster_pb2, common_pb2, kv_pb2, watch_pb2

#: Default overall deadline of a call, in seconds.
DEFAULT_TIMEOUT = 5.0
#: Restore streams the backup in chunks of this size (well under gRPC's 4 MiB message limit).
RESTORE_CHUNK_SIZE = 1 << 20

RespT = TypeVar("RespT", bound=Message)


# --- endpoints and retry policy ------------------------------------------------------------------


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` or a sequence of ``"host:port"`` as a tuple, order kept, duplicates dropped."""
    parts = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not result:
        raise ValueError("at least one endpoint ('host:port') is required")
    return result


# Servers send a watch progress notice every second (services.WATCH_PROGRESS_EVERY_S); a stream
# silent for this long is treated as dead and reopened on another server.
WATCH_SILENCE_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a client backs off between attempts. The defaults suit a cluster on a LAN.

    ``rng`` is injectable so tests can make the jitter reproducible.
    """

    #: Upper bound of the first delay; it doubles per retry up to ``max_backoff``.
    initial_backoff: float = 0.025
    max_backoff: float = 1.0
    #: Seconds a leader address that failed is ignored when a response names it again.
    leader_hold: float = 2.0
    #: Longest single attempt. A server that hangs without closing its connection (a frozen
    #: process or VM, a partition) answers nothing; after this the attempt is abandoned and the
    #: call retried elsewhere. Writes keep their request id, so the retry cannot apply twice.
    attempt_timeout: float = 3.0
    #: A write not answered after this long asks another server who leads (Status, local and
    #: cheap), then every ``leader_recheck`` seconds while that server knows no leader. If it names
    #: a leader other than the server the attempt waits on, that one was deposed (frozen, cut off)
    #: or is a follower: the write is retried at the leader with the same request id instead of
    #: waiting out ``attempt_timeout``. If it names the same one, the leader is only slow and the
    #: attempt keeps waiting. A read not answered after this long asks its own server for its
    #: status (as cheap): a server that answers is only slow and the read keeps waiting; one that
    #: answers neither (frozen, cut off) is left, and the read retried at another endpoint.
    #: 0: never ask.
    leader_check_after: float = 1.0
    leader_recheck: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.leader_check_after < 0 or self.leader_recheck <= 0:
            raise ValueError("leader_check_after must be >= 0 (0: never ask) and leader_recheck > 0")

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based), with full jitter (``full_jitter``)."""
        return full_jitter(retry, self.initial_backoff, self.max_backoff, self.rng)


def full_jitter(retry: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Delay before retry number ``retry`` (0-based): uniform in [0, min(maximum, initial * 2**retry)].

    Full jitter (rather than a fixed exponential delay) keeps many clients that failed together from
    retrying together: against a cluster electing a leader, or a gateway that was down for all.
    """
    return rng.uniform(0.0, min(maximum, initial * 2 ** min(retry, 32)))


#: What a status check may fail with for its server to count as unresponsive; any other answer is
#: an answer (a rate limit, a refused credential): the server is alive and the read keeps waiting.
UNRESPONSIVE_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})


class Unresponsive(errors.Unavailable):
    """A read's server answered neither the read nor a status check in time: it may be frozen (a
    stopped process, a paused VM) or cut off. The read is retried at another endpoint. Internal to
    the SDK: a call that runs out of time reports DeadlineExceeded, naming it as the last error."""

    def __init__(self, address: str, waited: float) -> None:
        super().__init__(
            f"{address} answered neither a read within {waited:g} s nor a status check: it may be frozen "
            "or cut off; trying another server"
        )


class Router:
    """Where the next attempt of any call goes (see the module docstring). Thread-safe."""

    def __init__(self, endpoints: tuple[str, ...], policy: RetryPolicy) -> None:
        self._endpoints = endpoints
        self._policy = policy
        self._current = 0
        self._leader = ""
        # address -> monotonic time until which a hint naming it is ignored.
        self._distrusted: dict[str, float] = {}
        # The sync client is used from many threads; every method here is short and never blocks.
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def leader(self) -> str:
        """The leader's client address as last learned, or ``""``."""
        return self._leader

    def pick(self, *, write: bool) -> str:
        with self._lock:
            if write and self._leader:
                return self._leader
            return self._endpoints[self._current]

    def failed(self, address: str) -> None:
        """An attempt at ``address`` found no usable server: steer later attempts elsewhere."""
        with self._lock:
            now = time.monotonic()
            if address == self._leader:
                self._leader = ""
                self._distrusted = {a: t for a, t in self._distrusted.items() if t > now}
                self._distrusted[address] = now + self._policy.leader_hold
            if address == self._endpoints[self._current]:
                self._current = (self._current + 1) % len(self._endpoints)

    def learn_leader(self, address: str, *, authoritative: bool = False) -> None:
        """Remember the leader's address from a response header, or from ``NotLeader`` (authoritative)."""
        if not address:
            return  # the node does not know the leader right now; keep what we know
        with self._lock:
            if authoritative:
                self._distrusted.pop(address, None)
            elif self._distrusted.get(address, 0.0) > time.monotonic():
                return
            self._leader = address

    def succeeded(self, address: str, leader_address: str) -> None:
        with self._lock:
            self._distrusted.pop(address, None)
        self.learn_leader(leader_address)

    def forget_leader(self) -> None:
        with self._lock:
            self._leader = ""


class Attempts:
    """The retry loop of one call without its I/O: where each attempt goes, how long it may take,
    and what its failure means. The transports drive it::

        attempts = core.attempts(rpc, timeout)
        while True:
            address = attempts.target()
            try:
                response = invoke(address, timeout=attempts.attempt_timeout())
            except grpc.RpcError as exc:
                sleep(attempts.failed(address, error_from_rpc(exc)))  # raises when the call must stop
            else:
                attempts.succeeded(address, leader_address_of(response))
                return response
    """

    def __init__(
        self,
        router: Router,
        policy: RetryPolicy,
        *,
        timeout: float,
        write: bool,
        retry_unknown: bool = True,
        capped: bool = True,
    ) -> None:
        self._router = router
        # Capped attempts give up after policy.attempt_timeout and try elsewhere; uncapped ones
        # (bulk transfers: snapshot, restore) may use the whole deadline.
        self._capped = capped
        self._policy = policy
        self._write = write
        self._retry_unknown = retry_unknown
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._attempts = 0
        self._redirected = False
        self._redirect = ""
        self._last: errors.ControlPlaneError | None = None
        # A server was left as unresponsive during this call: the next attempts wait, they do not check.
        self._left_unresponsive = False

    def target(self) -> str:
        """The address for the next attempt."""
        self._attempts += 1
        address, self._redirect = self._redirect, ""
        return address or self._router.pick(write=self._write)

    def remaining(self) -> float:
        """Seconds left before the call's deadline."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._expired(None)
        return left

    def attempt_timeout(self) -> float:
        """The gRPC deadline of the next attempt: the time left, at most ``policy.attempt_timeout``."""
        left = self.remaining()
        return min(left, self._policy.attempt_timeout) if self._capped else left

    def succeeded(self, address: str, leader_address: str) -> None:
        self._router.succeeded(address, leader_address)

    def leader_check_after(self, address: str) -> float:
        """Seconds after which an attempt at ``address`` asks another server who leads; 0: it never
        does (only a write asks, when someone else can answer and the attempt may outlast the wait).
        The server waited on need not be the known leader: a new client's first endpoint may be a
        frozen one."""
        after = self._policy.leader_check_after
        # A call that must not be retried (transfer_leadership) is not cut short either: moving
        # it would only turn its answer into UnknownOutcome.
        if not (after and self._write and self._capped and self._retry_unknown):
            return 0.0
        return after if after < self.attempt_timeout() and self.others(address) else 0.0

    def liveness_check_after(self, address: str) -> float:
        """Seconds after which a read at ``address`` that has not answered checks that its server
        answers at all (``Unresponsive`` otherwise); 0: it never does (writes ask who leads instead,
        and a bulk transfer, or a client with one endpoint, has nowhere better to go)."""
        after = self._policy.leader_check_after
        if not after or self._write or not self._capped or self._left_unresponsive:
            # Once per call: a read so heavy that its server cannot answer a status check meanwhile
            # (a huge list) would otherwise be moved from server to server until its deadline.
            return 0.0
        return after if after < self.attempt_timeout() and self.others(address) else 0.0

    def leader_recheck(self) -> float:
        return self._policy.leader_recheck

    def others(self, address: str) -> list[str]:
        """The endpoints to ask who leads while ``address`` does not answer."""
        return [endpoint for endpoint in self._router.endpoints if endpoint != address]

    def leader_moved(
        self, address: str, asked: str, status: cluster_pb2.StatusResponse
    ) -> errors.UnknownOutcome | None:
        """What ``asked``'s status means for the attempt waiting at ``address``: an error to retry
        the write at the leader it names, or None to keep waiting. A server without quorum is not
        believed: cut off from the others, it may still name the leader it last heard."""
        named = believed_leader(status)
        if not named or named == address:
            return None
        return errors.UnknownOutcome(
            f"the leader at {address} did not answer and {asked} now names {named} as the leader; "
            "the write may have been applied: retrying there with the same request id",
            leader_address=named,
        )

    def failed(self, address: str, error: errors.ControlPlaneError) -> float:
        """Account for a failed attempt at ``address``.

        Returns the delay before the next attempt, or raises the exception the caller gets: the
        error itself when it is the cluster's answer, ``DeadlineExceeded`` when no time is left.
        """
        if isinstance(error, Unresponsive):
            self._left_unresponsive = True
        hint = _leader_hint(error, address)
        if hint and isinstance(error, errors.Unavailable) and not self._retryable(error):
            raise error  # an unknown outcome the caller asked not to retry: the hint changes nothing
        if hint:
            # NotLeader names the leader; so does a server that learned of a new leader while this
            # call was on its way to the old one (Unavailable, UnknownOutcome): go there next.
            if address == self._router.leader:
                self._router.failed(address)  # a deposed leader: ignore hints naming it for a while
            self._router.learn_leader(hint, authoritative=True)
            self._redirect = hint
            if not self._redirected:
                # The first redirect is followed at once: the server named who can answer.
                # Later ones back off, so two nodes that disagree about the leader cannot make
                # us spin.
                self._redirected = True
                self._last = error
                self.remaining()
                return 0.0
        elif isinstance(error, errors.NotLeader) or self._retryable(error):
            self._router.failed(address)
        elif isinstance(error, errors.DeadlineExceeded):
            if time.monotonic() >= self._deadline or not self._retry_unknown or not self._capped:
                raise self._expired(error)
            # Only this attempt ran out (attempt_timeout): the server may be hung. Move on; for a
            # write the outcome is unknown, which the same request id makes safe to retry.
            self._router.failed(address)
        else:
            raise error
        self._last = error
        delay = self._policy.backoff(self._attempts - 1)
        if time.monotonic() + delay >= self._deadline:
            # Sleeping into the deadline only to fail then would waste the caller's time.
            raise self._expired(error)
        return delay

    def _retryable(self, error: errors.ControlPlaneError) -> bool:
        if isinstance(error, errors.UnknownOutcome):
            return self._retry_unknown
        return isinstance(error, errors.Unavailable)

    def _expired(self, error: errors.ControlPlaneError | None) -> errors.DeadlineExceeded:
        last = error if error is not None and not isinstance(error, errors.DeadlineExceeded) else self._last
        message = f"no answer within the {self._timeout:g} s deadline ({self._attempts} attempt(s))"
        if last is not None:
            message += f"; last error: {type(last).__name__}: {last.message}"
        expired = errors.DeadlineExceeded(message)
        expired.__cause__ = last if last is not None else error
        return expired


def _leader_hint(error: errors.ControlPlaneError, address: str) -> str:
    """The leader address ``error`` names, unless it names the server that answered."""
    if isinstance(error, (errors.NotLeader, errors.Unavailable)) and error.leader_address != address:
        return error.leader_address
    return ""


# The one RpcError -> typed exception conversion, shared with the servers.
error_from_rpc = errors.error_from_rpc


# --- the RPCs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rpc(Generic[RespT]):
    """One RPC method: its path, its response type and whether it goes to the leader."""

    path: str
    response: type[RespT]
    #: Mutations are sent to the leader when its address is known (any server forwards them): the
    #: method's ``option (controlplane.v1.write)`` in its proto says which they are.
    write: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "write", methods.is_write(self.path))


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


PUT = Rpc("/controlplane.v1.KV/Put", kv_pb2.PutResponse)
GET = Rpc("/controlplane.v1.KV/Get", kv_pb2.GetResponse)
DELETE = Rpc("/controlplane.v1.KV/Delete", kv_pb2.DeleteResponse)
LIST = Rpc("/controlplane.v1.KV/List", kv_pb2.ListResponse)
COMPARE_AND_SWAP = Rpc("/controlplane.v1.KV/CompareAndSwap", kv_pb2.CompareAndSwapResponse)
WATCH = Rpc("/controlplane.v1.Watch/Watch", watch_pb2.WatchResponse)
STATUS = Rpc("/controlplane.v1.Cluster/Status", cluster_pb2.StatusResponse)
ADD_MEMBER = Rpc("/controlplane.v1.Cluster/AddMember", cluster_pb2.AddMemberResponse)
REMOVE_MEMBER = Rpc("/controlplane.v1.Cluster/RemoveMember", cluster_pb2.RemoveMemberResponse)
TRANSFER_LEADERSHIP = Rpc("/controlplane.v1.Cluster/TransferLeadership", cluster_pb2.TransferLeadershipResponse)
SNAPSHOT = Rpc("/controlplane.v1.Cluster/Snapshot", cluster_pb2.SnapshotChunk)
RESTORE = Rpc("/controlplane.v1.Cluster/Restore", cluster_pb2.RestoreResponse)
CHECK_PERMISSION = Rpc("/controlplane.v1.Auth/Check", auth_pb2.CheckResponse)


def check_permission_request(identity: str, domain: str, verb: str, resource: str) -> auth_pb2.CheckRequest:
    return auth_pb2.CheckRequest(
        identity=identity, permission=auth_pb2.Permission(domain=domain, verb=verb, resource=resource)
    )


def permission_answer(response: auth_pb2.CheckResponse) -> str | None:
    return None if response.allowed else response.reason or "not allowed"


class ClientCore:
    """What one client keeps across calls: endpoints, router, retry policy, default timeout."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float, retry_policy: RetryPolicy | None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self.policy = retry_policy or RetryPolicy()
        self.router = Router(parse_endpoints(endpoints), self.policy)
        self.closed = False

    def attempts(
        self, rpc: Rpc[RespT], timeout: float | None, *, retry_unknown: bool = True, capped: bool = True
    ) -> Attempts:
        self.check_open()
        return Attempts(
            self.router,
            self.policy,
            timeout=self.timeout if timeout is None else timeout,
            write=rpc.write,
            retry_unknown=retry_unknown,
            capped=capped,
        )

    def check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the client is closed")


def believed_leader(status: cluster_pb2.StatusResponse) -> str:
    """The leader a server's status names, if it has quorum; ``""`` otherwise. Cut off from the
    others, a server may still name the leader it last heard."""
    return leader_address_of(status) if status.has_quorum else ""


def leader_address_of(response: object) -> str:
    """The leader's client address a response advertises, or ``""``."""
    header = getattr(response, "header", None)
    if isinstance(header, common_pb2.ResponseHeader):
        return header.leader_address
    if isinstance(response, cluster_pb2.StatusResponse):
        return response.leader_address
    return ""


# --- requests ------------------------------------------------------------------------------------


def new_request_id() -> str:
    """A fresh idempotency key. Built once per call, so every retry of that call carries it."""
    return uuid.uuid4().hex


def to_bytes(value: bytes | str) -> bytes:
    """Values are bytes on the wire; a str is stored as its UTF-8 encoding."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"value must be bytes or str, not {type(value).__name__}")


def read_options(consistency: Consistency, min_revision: int) -> common_pb2.ReadOptions:
    if not isinstance(consistency, Consistency):
        raise TypeError(f"consistency must be a Consistency, not {consistency!r}")
    return common_pb2.ReadOptions(consistency=consistency.value, min_revision=min_revision)


@contextlib.contextmanager
def checked_request(method: str) -> Generator[None, None, None]:
    """Building ``method``'s request: a value its field cannot hold (a negative count or port, a
    version beyond 2**32, a string where a number goes) is InvalidArgument naming the call, not
    protobuf's bare ValueError or TypeError."""
    try:
        yield
    except (ValueError, TypeError, OverflowError) as exc:
        hint = ""
        if "out of range" in str(exc):
            hint = (
                "; whole-number arguments (ports, counts, limits, versions, revisions, ids) take 0 or more and must fit"
            )
        raise errors.InvalidArgument(f"{method}: {exc}{hint}") from None


def put_request(key: str, value: bytes | str, *, prev_kv: bool, request_id: str | None) -> kv_pb2.PutRequest:
    return kv_pb2.PutRequest(key=key, value=to_bytes(value), prev_kv=prev_kv, request_id=request_id or new_request_id())


@checked_request("get")
def get_request(key: str, consistency: Consistency, min_revision: int) -> kv_pb2.GetRequest:
    return kv_pb2.GetRequest(key=key, read=read_options(consistency, min_revision))


def delete_request(key: str, request_id: str | None) -> kv_pb2.DeleteRequest:
    return kv_pb2.DeleteRequest(key=key, request_id=request_id or new_request_id())


@checked_request("list")
def list_request(
    prefix: str, *, limit: int, start_after: str, keys_only: bool, consistency: Consistency, min_revision: int
) -> kv_pb2.ListRequest:
    return kv_pb2.ListRequest(
        prefix=prefix,
        limit=limit,
        start_after=start_after,
        keys_only=keys_only,
        read=read_options(consistency, min_revision),
    )


@checked_request("compare_and_swap")
def compare_and_swap_request(
    key: str, value: bytes | str, expected_mod_revision: int, *, delete: bool, request_id: str | None
) -> kv_pb2.CompareAndSwapRequest:
    return kv_pb2.CompareAndSwapRequest(
        key=key,
        value=to_bytes(value),
        expected_mod_revision=expected_mod_revision,
        delete=delete,
        request_id=request_id or new_request_id(),
    )


def add_member_request(id: str, raft_address: str, client_address: str) -> cluster_pb2.AddMemberRequest:
    return cluster_pb2.AddMemberRequest(
        id=id, raft_address=raft_address, client_address=client_address, request_id=new_request_id()
    )


def remove_member_request(id: str) -> cluster_pb2.RemoveMemberRequest:
    return cluster_pb2.RemoveMemberRequest(id=id, request_id=new_request_id())


# --- responses -----------------------------------------------------------------------------------


def key_value(pb: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        key=pb.key,
        value=pb.value,
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
    )


def put_result(request: kv_pb2.PutRequest, response: kv_pb2.PutResponse) -> PutResult:
    return PutResult(
        revision=response.header.revision,
        kv=written(response.kv, request.value),
        prev_kv=key_value(response.prev_kv) if response.HasField("prev_kv") else None,
    )


def written(pb: kv_pb2.KeyValue, value: bytes) -> KeyValue:
    """The key a write created. Servers answer writes with the key's metadata only, to keep answers
    small; the value is the one this client sent, so it is filled in here.
    """
    return KeyValue(
        key=pb.key,
        value=pb.value or value,
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
    )


def get_result(response: kv_pb2.GetResponse) -> KeyValue | None:
    return key_value(response.kv) if response.found else None


def delete_result(response: kv_pb2.DeleteResponse) -> DeleteResult:
    return DeleteResult(
        revision=response.header.revision,
        deleted=response.deleted,
        prev_kv=key_value(response.prev_kv) if response.HasField("prev_kv") else None,
    )


def list_result(response: kv_pb2.ListResponse) -> ListResult:
    return ListResult(
        revision=response.header.revision,
        kvs=tuple(key_value(kv) for kv in response.kvs),
        more=response.more,
    )


def cas_result(request: kv_pb2.CompareAndSwapRequest, response: kv_pb2.CompareAndSwapResponse) -> CasResult:
    if not response.found:
        kv = None
    elif response.succeeded:
        kv = written(response.kv, request.value)
    else:
        kv = key_value(response.kv)  # the current holder, value included
    return CasResult(revision=response.header.revision, succeeded=response.succeeded, kv=kv)


def member(pb: cluster_pb2.Member) -> Member:
    return Member(
        id=pb.id,
        raft_address=pb.raft_address,
        client_address=pb.client_address,
        role=role(pb.role),
        healthy=pb.healthy,
        voter=pb.voter,
        match_index=pb.match_index,
        learner=pb.learner,
        applied_index=pb.applied_index,
        stable_since_unix_ms=pb.stable_since_unix_ms,
        last_contact_unix_ms=pb.last_contact_unix_ms,
        commit_index=pb.commit_index,
    )


def role(value: int) -> Role:
    try:
        return Role(value)
    except ValueError:  # a role a newer server knows and this client does not
        return Role.UNKNOWN


def members(pbs: Iterable[cluster_pb2.Member]) -> list[Member]:
    return [member(pb) for pb in pbs]


def cluster_status(response: cluster_pb2.StatusResponse) -> ClusterStatus:
    return ClusterStatus(
        node_id=response.node_id,
        role=role(response.role),
        leader_id=response.leader_id,
        leader_address=response.leader_address,
        term=response.term,
        commit_index=response.commit_index,
        applied_index=response.applied_index,
        applied_revision=response.applied_revision,
        members=tuple(member(m) for m in response.members),
        has_quorum=response.has_quorum,
        oldest_revision=response.oldest_revision,
        raft_log_size=response.raft_log_size,
        version=response.version,
        ready=response.ready,
        membership_change=response.membership_change,
        durability=response.durability,
        peer_security=response.peer_security,
        # 0 from a server older than cluster levels: the base level, 1.
        apply_level=response.apply_level or 1,
        cluster_level=response.cluster_level or 1,
    )


def event(pb: watch_pb2.Event) -> Event | None:
    """The event, or None for an event type this client does not know (a newer server's)."""
    try:
        kind = EventType(pb.type)
    except ValueError:
        return None
    # Both import this module: top-level imports would be circular.
    from controlplane.client import _gossip, _membership, _models, _ports

    return Event(
        revision=pb.revision,
        type=kind,
        domain=pb.domain,
        key=pb.key,
        # A DELETE may carry a tombstone (key and revision, no value): None says "gone" plainly.
        kv=key_value(pb.kv) if pb.HasField("kv") and kind is EventType.PUT else None,
        prev_kv=key_value(pb.prev_kv) if pb.HasField("prev_kv") else None,
        time_unix_ms=pb.time_unix_ms,
        port=_ports.convert(_ports.PortEvent, pb.port) if pb.HasField("port") else None,
        model=_ports.convert(_models.ModelEvent, pb.model) if pb.HasField("model") else None,
        membership=(_ports.convert(_membership.MembershipEvent, pb.membership) if pb.HasField("membership") else None),
        gossip=_ports.convert(_gossip.GossipEvent, pb.gossip) if pb.HasField("gossip") else None,
    )


# --- watch ---------------------------------------------------------------------------------------


class WatchCursor:
    """Where a watch stands, so that a new stream continues exactly where a broken one stopped.

    Invariant: every matching event with revision <= ``delivered`` has been handed to the caller
    (or buffered for it), and none above it has. A new stream therefore starts at
    ``delivered + 1``: no gap, and no duplicate because anything at or below ``delivered`` that a
    server sends again is dropped. The server's progress messages move ``delivered`` forward even
    when nothing matched, so a resumed watch does not rescan filtered-out history.
    """

    def __init__(self, prefix: str, from_revision: int, domains: Iterable[str], types: Iterable[EventType]) -> None:
        if from_revision < 0:
            raise errors.InvalidArgument(f"from_revision must be 0 or more, got {from_revision}")
        self._filter = watch_pb2.WatchFilter(key_prefix=prefix, domains=list(domains), types=[t.value for t in types])
        # None: "from now", and no stream has said yet which revision "now" is. A stream that breaks
        # before its first message is reopened "from now" again: nothing was promised before it.
        self.delivered: int | None = from_revision - 1 if from_revision else None

    def request(self) -> watch_pb2.WatchRequest:
        start = 0 if self.delivered is None else self.delivered + 1
        return watch_pb2.WatchRequest(from_revision=start, filter=self._filter)

    def accept(self, message: watch_pb2.WatchResponse) -> list[Event]:
        """The new events of one stream message, in order; advances ``delivered``."""
        floor = self.delivered
        fresh = [pb for pb in message.events if floor is None or pb.revision > floor]
        top = max([message.revision, *(pb.revision for pb in fresh)])
        self.delivered = top if floor is None else max(floor, top)
        return [e for e in map(event, fresh) if e is not None]


# --- snapshot and restore ------------------------------------------------------------------------


class SnapshotSink:
    """Receives one Snapshot stream into a temporary file beside ``path``.

    :meth:`commit` checks the size and sha256 the first chunk announced, then fsyncs and renames the
    file over ``path``: a reader of ``path`` sees the old file or the complete new one, never a
    torn or unverified backup. :meth:`abort` removes the temporary file. Blocking file I/O: the async
    client runs these methods in a worker thread.
    """

    def __init__(self, path: str | os.PathLike[str], source: str) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._source = source
        directory, name = os.path.split(self._path)
        fd, self._temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self._size = 0
        self._header: tuple[int, int, str] | None = None  # revision, total_bytes, sha256

    def write(self, chunk: cluster_pb2.SnapshotChunk) -> None:
        if self._header is None:
            if not chunk.sha256:
                raise self._corrupt("the first chunk carries no sha256")
            self._header = (chunk.revision, chunk.total_bytes, chunk.sha256.lower())
        self._file.write(chunk.data)
        self._sha.update(chunk.data)
        self._size += len(chunk.data)
        if self._size > self._header[1]:
            raise self._corrupt(f"more than the announced {self._header[1]} bytes")

    def commit(self) -> SnapshotInfo:
        if self._header is None:
            raise self._corrupt("the stream ended before its first chunk")
        revision, total, expected = self._header
        if self._size != total:
            raise self._corrupt(f"received {self._size} bytes, {total} announced")
        actual = self._sha.hexdigest()
        if actual != expected:
            raise self._corrupt(f"sha256 {actual} does not match the announced {expected}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self._path)
        _fsync_directory(os.path.dirname(self._path))
        return SnapshotInfo(revision=revision, size=total, sha256=actual)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)

    def _corrupt(self, reason: str) -> errors.Internal:
        # A stream that ended OK but does not match its own header is a server bug, not a
        # transient fault: retrying would most likely fetch the same bytes.
        return errors.Internal(f"snapshot from {self._source} rejected: {reason}; {self._path} left unchanged")


def _fsync_directory(directory: str) -> None:
    """Make a rename durable (POSIX). Best effort: some platforms cannot open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Size and hex sha256 of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(RESTORE_CHUNK_SIZE):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def restore_header(path: str | os.PathLike[str], include_auth: bool) -> cluster_pb2.SnapshotChunk:
    """What the first chunk of a Restore announces: size, sha256, whether auth is restored too, and
    a request id made once per restore call (every retry sends the same)."""
    size, sha256 = file_digest(path)
    return cluster_pb2.SnapshotChunk(
        total_bytes=size, sha256=sha256, include_auth=include_auth, request_id=new_request_id()
    )


def check_auth_restored(response: cluster_pb2.RestoreResponse, include_auth: bool) -> None:
    """A restore asked to bring back users, roles and tokens, answered by a server that did not
    (older than include_auth): FailedPrecondition, saying what did happen."""
    if include_auth and not response.auth_restored:
        raise errors.FailedPrecondition(
            f"the data was restored (revision {response.revision}) but not the users, roles and tokens: the "
            "server is older than include_auth. Upgrade every server (cpctl cluster status --all shows their "
            "versions), then restore again with include_auth"
        )


def restore_chunks(
    path: str | os.PathLike[str], header: cluster_pb2.SnapshotChunk
) -> Generator[cluster_pb2.SnapshotChunk, None, None]:
    """The Restore request stream: the file in 1 MiB chunks, the first carrying ``header``.

    Reads lazily, so a large backup is never held in memory. An empty file is one empty chunk, so
    the server still receives the announcement.
    """
    with open(path, "rb") as file:
        first = cluster_pb2.SnapshotChunk()
        first.CopyFrom(header)
        first.data = file.read(RESTORE_CHUNK_SIZE)
        yield first
        while data := file.read(RESTORE_CHUNK_SIZE):
            yield cluster_pb2.SnapshotChunk(data=data)
