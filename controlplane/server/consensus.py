"""The seam between a server's node logic and Raft: the few operations the node uses, as one interface.

Two implementations: ``raft.RaftNode`` (pysyncobj, the peer transport, the durable journal) and
``memraft.InMemoryConsensus`` (one process, one shared log, leadership and partitions set by the
test), so the node's read, write-forwarding and membership logic can be tested in milliseconds
without processes, as hashicorp/raft's in-memory transport allows. The node imports this module,
never pysyncobj; ``raft.py`` and the modules it is built from (``peer_transport.py``,
``raft_codec.py``, ``journal.py``) are the only ones that do.

Outcomes are pysyncobj's ``FAIL_REASON`` numbers (``raft.py`` checks that they agree), so a
callback's ``reason`` means the same whichever implementation runs.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from controlplane.server.config import ServerConfig
from controlplane.state.machine import CommandResult, StateMachine
from controlplane.v1 import command_pb2

ROLE_FOLLOWER = "follower"
ROLE_CANDIDATE = "candidate"
ROLE_LEADER = "leader"
# A read-only node: receives the log, never votes.
ROLE_LEARNER = "learner"


class Outcome(IntEnum):
    """How a submitted entry or a membership change ended (pysyncobj's FAIL_REASON values)."""

    SUCCESS = 0
    QUEUE_FULL = 1
    MISSING_LEADER = 2
    DISCARDED = 3
    NOT_LEADER = 4
    LEADER_CHANGED = 5
    REQUEST_DENIED = 6
    UNKNOWN_OUTCOME = 7


SUCCESS = Outcome.SUCCESS

_DESCRIPTIONS = {
    Outcome.QUEUE_FULL: "the Raft queue is full",
    Outcome.MISSING_LEADER: "no leader is known",
    Outcome.DISCARDED: "the entry was discarded by a new leader",
    Outcome.NOT_LEADER: "this server is not the leader",
    Outcome.LEADER_CHANGED: "the leader changed",
    Outcome.REQUEST_DENIED: "the request was denied (another membership change is still committing?)",
    Outcome.UNKNOWN_OUTCOME: "the outcome is unknown",
}


def describe_failure(reason: int) -> str:
    return _DESCRIPTIONS.get(reason, f"Raft failure {reason}")  # type: ignore[call-overload]


# (results or None, an Outcome); called on the event loop.
ApplyCallback = Callable[[list[CommandResult] | None, int], None]
DoneCallback = Callable[[int], None]
# (node id, raft address, learner) -> why it may not connect, or None when it may.
Authorize = Callable[[str, str, bool], str | None]
# (the sending server's id, its commands) -> their results, in order.
ProposeHandler = Callable[[str, list[command_pb2.Command]], Awaitable[list[CommandResult]]]


@dataclass(frozen=True)
class RaftStatus:
    role: str
    leader_address: str
    term: int
    commit_index: int
    applied_index: int
    # Index of the last entry in this node's log.
    log_index: int
    log_size: int
    has_quorum: bool
    # Raft address -> connected (from this node's point of view).
    connected: dict[str, bool]
    # Raft address -> match index (only meaningful on the leader).
    match_index: dict[str, int]


@dataclass(frozen=True)
class PeerAccess:
    """Who may talk Raft to this server, and how: what the node gives the consensus layer."""

    authorize: Authorize
    # None, None only with --insecure-dev.
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None
    propose_handler: ProposeHandler | None = None


class Consensus(Protocol):
    """What the node asks of Raft. Every method runs on the event loop."""

    self_address: str

    @property
    def voter(self) -> bool:
        """Runs as a voting member (False: a learner)."""

    def submit(self, entry: bytes, callback: ApplyCallback) -> None:
        """Append an entry (leader only); ``callback(results, reason)`` once applied or refused."""

    async def propose(
        self, leader_address: str, commands: list[command_pb2.Command], timeout: float
    ) -> list[CommandResult]:
        """Hand commands to the leader over the peer plane: Unavailable if not sent, UnknownOutcome if
        sent and not answered."""

    def is_leader(self) -> bool: ...
    def leads_with_recent_majority(self) -> bool:
        """Leads and heard from a majority within the leader fallback time, judged at the call
        (``is_leader`` may lag until the next tick after the server was frozen), and was not frozen
        lately: what a leader may answer from memory asks this."""

    def leader_state_is_current(self) -> bool:
        """This server leads and its state machine holds every entry any leader committed: it has
        committed an entry of its own term and applied up to its commit index."""

    def leader_address(self) -> str: ...
    def term(self) -> int: ...
    def has_quorum(self) -> bool: ...
    def is_ready(self) -> bool: ...
    def synced(self) -> bool: ...
    def unready_reason(self) -> str | None: ...
    def hold_unready(self, reason: str | None) -> None: ...
    def replayed(self) -> bool: ...
    def listed_as_voter(self) -> bool: ...
    def restart(self, voter: bool, machine: StateMachine, discard_log: bool = False) -> None: ...
    def status(self) -> RaftStatus: ...
    def add_node(self, raft_address: str, done: DoneCallback) -> None: ...
    def remove_node(self, raft_address: str, done: DoneCallback) -> None: ...
    def transfer_leadership(self, raft_address: str | None, done: DoneCallback) -> None: ...
    def revalidate_peers(self) -> None:
        """Close peer connections the member directory no longer admits (a removed server's)."""

    def destroy(self) -> None: ...


class ConsensusFactory(Protocol):
    """How the node creates its consensus layer (``RaftNode`` unless a test passes another)."""

    def __call__(
        self,
        config: ServerConfig,
        machine: StateMachine,
        state_lock: threading.Lock,
        on_applied: Callable[[], None],
        on_role_change: Callable[[str, str], None],
        voter: bool = True,
        *,
        peers: PeerAccess,
    ) -> Consensus: ...
