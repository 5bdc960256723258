"""An in-memory consensus layer: several nodes in one process, one shared log, faults set by the test.

For tests of the node's own logic (reads, write forwarding, membership bookkeeping) in milliseconds,
without server processes: hashicorp/raft's ``InmemTransport`` and etcd-io/raft's ``MemoryStorage``
play this part there. It is not Raft: there are no elections, no terms of its own making and no
replication protocol. The test says who leads (``elect``) and who is cut off (``isolate``);
everything else follows from that, deterministically:

* an entry submitted on the leader commits once the leader and a majority of the voters are
  connected; it is then applied, in log order, on every connected member (a cut-off member
  catches up when healed);
* a cut-off node knows no leader, cannot submit, and cannot reach others over the peer plane;
* ``propose`` calls the leader's ``propose_handler`` directly, as the peer plane would.

Outcomes, callbacks and the status view follow ``consensus.Consensus`` exactly; callbacks run on
the event loop at a later turn, never inside ``submit``, as with the real thing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.errors import Unavailable, UnknownOutcome
from controlplane.server.config import ServerConfig
from controlplane.server.consensus import (
    ROLE_FOLLOWER,
    ROLE_LEADER,
    ROLE_LEARNER,
    ApplyCallback,
    DoneCallback,
    Outcome,
    PeerAccess,
    RaftStatus,
)
from controlplane.state.machine import CommandResult, StateMachine
from controlplane.v1 import command_pb2


@dataclass
class _Entry:
    data: bytes
    # Who waits for this entry's results: (submitting node's address, its callback).
    waiter: tuple[str, ApplyCallback] | None = None


@dataclass
class InMemoryNetwork:
    """The shared log and the faults of one test's in-memory cluster."""

    voters: set[str] = field(default_factory=set)
    nodes: dict[str, InMemoryConsensus] = field(default_factory=dict)
    log: list[_Entry] = field(default_factory=list)
    commit_index: int = 0
    term: int = 0
    leader: str = ""
    isolated: set[str] = field(default_factory=set)

    def factory(
        self,
        config: ServerConfig,
        machine: StateMachine,
        state_lock: threading.Lock,
        on_applied: Callable[[], None],
        on_role_change: Callable[[str, str], None],
        voter: bool = True,
        *,
        peers: PeerAccess,
    ) -> InMemoryConsensus:
        """A ``consensus.ConsensusFactory``: pass it as ``Node(config, consensus=network.factory)``."""
        node = InMemoryConsensus(self, config, machine, state_lock, on_applied, on_role_change, voter, peers)
        self.nodes[node.self_address] = node
        if voter:
            self.voters.add(node.self_address)
        node.catch_up()
        return node

    # ------------------------------------------------------------------ what the test controls

    def elect(self, address: str) -> None:
        """``address`` leads from now on, in a new term; entries not yet committed are discarded."""
        previous = self.leader
        self.term += 1
        self.leader = address
        self._discard_uncommitted()
        for node in self.nodes.values():
            if node.self_address in (previous, address) and previous != address:
                node.role_changed(ROLE_LEADER if node.self_address == address else ROLE_FOLLOWER)
        self._advance()

    def isolate(self, address: str) -> None:
        self.isolated.add(address)
        self._advance()

    def heal(self, address: str) -> None:
        self.isolated.discard(address)
        self._advance()

    def connected(self, address: str) -> bool:
        return address in self.nodes and address not in self.isolated

    # ------------------------------------------------------------------ the log

    def has_quorum(self) -> bool:
        reachable = [voter for voter in self.voters if self.connected(voter)]
        return self.connected(self.leader) and len(reachable) * 2 > len(self.voters)

    def append(self, entry: _Entry) -> None:
        self.log.append(entry)
        self._advance()

    def _advance(self) -> None:
        if self.has_quorum():
            self.commit_index = len(self.log)
        for node in self.nodes.values():
            node.catch_up()

    def _discard_uncommitted(self) -> None:
        for entry in self.log[self.commit_index :]:
            if entry.waiter is not None:
                address, callback = entry.waiter
                node = self.nodes.get(address)
                if node is not None:
                    node.later(callback, None, Outcome.LEADER_CHANGED)
        del self.log[self.commit_index :]


class InMemoryConsensus:  # implements consensus.Consensus
    def __init__(
        self,
        network: InMemoryNetwork,
        config: ServerConfig,
        machine: StateMachine,
        state_lock: threading.Lock,
        on_applied: Callable[[], None],
        on_role_change: Callable[[str, str], None],
        voter: bool,
        peers: PeerAccess,
    ) -> None:
        self.self_address = config.raft_address
        self._node_id = config.node_id
        self._network = network
        self._machine = machine
        self._lock = state_lock
        self._on_applied = on_applied
        self._on_role_change = on_role_change
        self._voter = voter
        self._peers = peers
        self._loop = asyncio.get_running_loop()
        self._applied = 0
        self._unready_reason: str | None = None
        self._destroyed = False

    # ------------------------------------------------------------------ driven by the network

    @property
    def applied(self) -> int:
        return self._applied

    def later(self, callback: Callable[..., None], *args: object) -> None:
        self._loop.call_soon(callback, *args)

    def role_changed(self, role: str) -> None:
        self.later(self._on_role_change, "?", role)

    def catch_up(self) -> None:
        """Apply every committed entry this node has not applied (if it is connected)."""
        if self._destroyed or not self._network.connected(self.self_address):
            return
        applied_any = False
        while self._applied < self._network.commit_index:
            entry = self._network.log[self._applied]
            self._applied += 1
            with self._lock:
                results = self._machine.apply_entry(entry.data)
            applied_any = True
            if entry.waiter is not None and entry.waiter[0] == self.self_address:
                self.later(entry.waiter[1], results, Outcome.SUCCESS)
        if applied_any:
            self._on_applied()

    # ------------------------------------------------------------------ consensus.Consensus

    @property
    def voter(self) -> bool:
        return self._voter

    def submit(self, entry: bytes, callback: ApplyCallback) -> None:
        if not self.is_leader():
            self.later(callback, None, Outcome.NOT_LEADER)
            return
        self._network.append(_Entry(entry, (self.self_address, callback)))

    async def propose(
        self, leader_address: str, commands: list[command_pb2.Command], timeout: float
    ) -> list[CommandResult]:
        network = self._network
        leader = network.nodes.get(leader_address)
        if leader is None or not network.connected(self.self_address) or not network.connected(leader_address):
            raise Unavailable(f"no peer connection to the leader at {leader_address}")
        handler = leader._peers.propose_handler
        if handler is None:
            raise Unavailable(f"{leader_address} does not take forwarded writes")
        try:
            async with asyncio.timeout(timeout):
                return await handler(self._node_id, commands)
        except TimeoutError:
            raise UnknownOutcome(f"the leader at {leader_address} did not answer in time") from None

    def is_leader(self) -> bool:
        return self._network.leader == self.self_address and self._network.has_quorum()

    def leads_with_recent_majority(self) -> bool:
        return self.is_leader()  # the network's quorum is judged at the call, not at a tick

    def leader_state_is_current(self) -> bool:
        return self.is_leader()  # entries apply as they commit, on every node at once

    def leader_address(self) -> str:
        return self._network.leader if self._network.connected(self.self_address) else ""

    def term(self) -> int:
        return self._network.term

    def has_quorum(self) -> bool:
        return self._network.connected(self.self_address) and self._network.has_quorum()

    def is_ready(self) -> bool:
        return self._unready_reason is None and self.synced()

    def synced(self) -> bool:
        return self._network.connected(self.self_address) and self._applied >= self._network.commit_index

    def unready_reason(self) -> str | None:
        return self._unready_reason

    def hold_unready(self, reason: str | None) -> None:
        self._unready_reason = reason

    def replayed(self) -> bool:
        return True

    def listed_as_voter(self) -> bool:
        return not self._voter and self.self_address in self._network.voters

    def restart(self, voter: bool, machine: StateMachine, discard_log: bool = False) -> None:
        with self._lock:
            self._machine = machine
        self._voter = voter
        self._applied = 0
        if voter:
            self._network.voters.add(self.self_address)
        self.catch_up()

    def status(self) -> RaftStatus:
        network = self._network
        leading = self.is_leader()
        role = ROLE_LEADER if leading else ROLE_FOLLOWER if self._voter else ROLE_LEARNER
        return RaftStatus(
            role=role,
            leader_address=self.leader_address(),
            term=network.term,
            commit_index=network.commit_index,
            applied_index=self._applied,
            log_index=len(network.log),
            log_size=len(network.log),
            has_quorum=self.has_quorum(),
            connected={address: network.connected(address) for address in network.voters | {self.self_address}},
            match_index={
                address: node._applied
                for address, node in network.nodes.items()
                if leading and address in network.voters
            },
        )

    def add_node(self, raft_address: str, done: DoneCallback) -> None:
        self._membership_change(lambda: self._network.voters.add(raft_address), done)

    def remove_node(self, raft_address: str, done: DoneCallback) -> None:
        self._membership_change(lambda: self._network.voters.discard(raft_address), done)

    def _membership_change(self, change: Callable[[], None], done: DoneCallback) -> None:
        if not self.is_leader():
            self.later(done, Outcome.NOT_LEADER)
            return
        change()
        self.later(done, Outcome.SUCCESS)

    def transfer_leadership(self, raft_address: str | None, done: DoneCallback) -> None:
        network = self._network
        target = raft_address or next(
            (v for v in sorted(network.voters) if v != self.self_address and network.connected(v)), ""
        )
        if not self.is_leader() or not target or not network.connected(target):
            self.later(done, Outcome.REQUEST_DENIED)
            return
        network.elect(target)
        self.later(done, Outcome.SUCCESS)

    def revalidate_peers(self) -> None:
        """Nothing to close: admission is the test's to decide (isolate)."""

    def destroy(self) -> None:
        self._destroyed = True
        self._network.nodes.pop(self.self_address, None)
