"""Raft membership changes and leadership transfer, as the leader runs them (and followers hand over).

Why a module of its own: these are the steps with the subtlest invariants in a server - one change
at a time, learners before voters, a directory record that says "voter" only once the Raft change
committed, a leader that steps aside before removing itself - and they need only a narrow view of
the node (its cluster view, its writes and its consensus layer). DESIGN.md, "Membership", says why
each step is where it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from controlplane.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoLeader,
    NotFound,
    Unavailable,
)
from controlplane.server.authz import forwarded_error
from controlplane.server.consensus import SUCCESS, Consensus, Outcome, describe_failure
from controlplane.state import limits
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, command_pb2

if TYPE_CHECKING:
    from controlplane.server.node import MemberAddress, Node

log = structlog.get_logger("controlplane.node")

MEMBERSHIP_TIMEOUT_S = 15.0
# How often a new leader checks whether it has applied every committed entry before an admin call.
LEADER_STATE_POLL_S = 0.01
# How often a leader checks again whether a leadership transfer can go out (target caught up).
TRANSFER_RETRY_S = 0.02
# How long a leader that sent TimeoutNow waits for the target to win before it asks again: a few
# election timeouts (election_max_s defaults to 0.8 s), since a busy target may be slow to campaign.
TRANSFER_ELECTION_WAIT_S = 3.0

Response = TypeVar("Response")


class ClusterChanges:
    """Add and remove members, promote learners, transfer leadership: one change at a time."""

    def __init__(self, node: Node) -> None:
        self._node = node
        # The change in flight: (its key, a description, its task); see _one_membership_change.
        self._membership_change: tuple[tuple[str, ...], str, asyncio.Future[None]] | None = None

    @property
    def raft(self) -> Consensus:
        return self._node.raft

    async def on_leader(
        self,
        method: str,
        request: Any,
        timeout: float | None,
        local: Callable[[], Awaitable[Response]],
    ) -> Response:
        """Run an admin call here if this server leads, or forward it to the leader's Cluster service.

        The leader decides from its own state machine, so it first waits until that holds every
        committed entry. A new leader may not yet: a removal committed under the last leader would
        look undone, and a replacement's address taken (DESIGN.md, Membership, Invariants). No log
        entry is needed for that: a leader with commits stuck (no quorum) still refuses a second
        change at once.
        """
        if self.raft.is_leader():
            # The caller's gRPC deadline bounds the wait and the change together.
            await self._wait_until_leader_state_current(timeout or MEMBERSHIP_TIMEOUT_S)
            return await local()
        leader = self._node.leader()
        if leader is None or not leader.client_address:
            raise NoLeader("no leader is known (an election is running or quorum is lost); retry shortly")
        call = getattr(cluster_pb2_grpc.ClusterStub(self._node.peer_channel(leader.client_address)), method)
        try:
            response: Response = await call(request, timeout=timeout or MEMBERSHIP_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise forwarded_error(exc, self._node.node_id) from None
        return response

    async def _wait_until_leader_state_current(self, timeout: float) -> None:
        """Wait (polling: pysyncobj has no commit notification) until this leader's state machine
        holds every committed entry; Unavailable when it stops leading or the deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.raft.leader_state_is_current():
            if not self.raft.is_leader():
                raise NoLeader("leadership changed during the call; retry shortly")
            if loop.time() >= deadline:
                raise Unavailable(
                    f"{self._node.node_id} leads but has not yet committed an entry of its term within "
                    f"{timeout:g} s (no quorum?); check `cpctl cluster status` and retry"
                )
            await asyncio.sleep(LEADER_STATE_POLL_S)

    async def _raft_call(
        self,
        start: Callable[[Callable[[int], None]], None],
        what: str,
        timeout: float,
        membership: bool = False,
    ) -> None:
        """Run a pysyncobj admin call and wait for its callback.

        For membership changes every refusal is transient (a new leader's first entry not yet
        committed, the previous change still committing, leadership lost mid-change): Unavailable,
        so the SDK retries with the same request id and the idempotent steps finish the job.
        """
        reason = await self._raft_outcome(start, what, timeout)
        if reason != SUCCESS:
            if membership:
                raise Unavailable(f"{what} not done yet: {describe_failure(reason)}; retry")
            raise FailedPrecondition(f"{what} refused: {describe_failure(reason)}")

    async def _raft_outcome(self, start: Callable[[Callable[[int], None]], None], what: str, timeout: float) -> int:
        """Start a pysyncobj admin call and return the Outcome its callback reports."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def settle(reason: int) -> None:
            if not future.done():
                future.set_result(reason)

        def done(reason: int) -> None:  # inside a Raft tick
            loop.call_soon(settle, reason)

        start(done)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Unavailable(f"{what} did not commit within {timeout:.0f} s; check `cpctl cluster status`") from None

    async def add_member(
        self, request: cluster_pb2.AddMemberRequest, timeout: float | None
    ) -> list[cluster_pb2.Member]:
        problem = (
            limits.check_member_id(request.id)
            or limits.check_address(request.raft_address, "raft_address")
            or limits.check_address(request.client_address, "client_address")
        )
        if problem:
            raise InvalidArgument(problem)

        async def local() -> cluster_pb2.AddMemberResponse:
            members = self._node.members()
            if request.raft_address in members and members[request.raft_address].id == request.id:
                # Already a member (a retried call): nothing to change.
                return cluster_pb2.AddMemberResponse(members=self._node.status().members)
            if any(m.id == request.id for m in members.values()):
                raise AlreadyExists(f"a member with id {request.id!r} already exists")
            if request.raft_address in members:
                raise AlreadyExists(
                    f"raft address {request.raft_address} already belongs to {members[request.raft_address].id!r}"
                )
            with self._node.state_lock:
                removed = request.id in self._node.machine.directory.removed_members
            if removed:
                raise FailedPrecondition(
                    f"member {request.id!r} was removed and may not rejoin under that id; use a new id"
                )

            async def change() -> None:
                # Only the directory changes: the server joins as a learner, outside the Raft
                # configuration, so admitting it cannot cost quorum however far behind (or dead) it
                # is. The autopilot makes it a voter once it has stayed caught up.
                await self._node.write(
                    command_pb2.Command(
                        request_id=request.request_id,
                        member_upsert=command_pb2.MemberUpsert(
                            member=command_pb2.MemberRecord(
                                id=request.id,
                                raft_address=request.raft_address,
                                client_address=request.client_address,
                                learner=True,
                            )
                        ),
                    ),
                    MEMBERSHIP_TIMEOUT_S,
                )

            key = ("add", request.id, request.raft_address, request.client_address)
            await self._one_membership_change(key, f"adding {request.id} as a learner", change)
            log.info("learner_added", member=request.id, raft_address=request.raft_address)
            return cluster_pb2.AddMemberResponse(members=self._node.status().members)

        response = await self.on_leader("AddMember", request, timeout, local)
        return list(response.members)

    async def remove_member(
        self, request: cluster_pb2.RemoveMemberRequest, timeout: float | None
    ) -> list[cluster_pb2.Member]:
        problem = limits.check_member_id(request.id)
        if problem:
            raise InvalidArgument(problem)

        async def local() -> cluster_pb2.RemoveMemberResponse:
            target = next((m for m in self._node.members().values() if m.id == request.id), None)
            with self._node.state_lock:
                already_removed = request.id in self._node.machine.directory.removed_members
            if target is None and already_removed:
                # A retry of a removal that completed: the answer is the same as the first time.
                return cluster_pb2.RemoveMemberResponse(members=self._node.status().members)
            if target is None:
                raise NotFound(f"no member {request.id!r} in this cluster")
            if target.id == self._node.node_id:
                # pysyncobj cannot remove the leader itself: hand leadership over, then let the
                # new leader do it.
                await self._transfer(None, timeout or MEMBERSHIP_TIMEOUT_S)
                raise _SteppedAside

            async def change() -> None:
                await self._removal_steps(request.id, target.raft_address, request.request_id)

            await self._one_membership_change(("remove", request.id), f"removing {request.id}", change)
            log.info("member_removed", member=request.id)
            return cluster_pb2.RemoveMemberResponse(members=self._node.status().members)

        try:
            response = await self.on_leader("RemoveMember", request, timeout, local)
        except _SteppedAside:
            # This server led and stepped aside to be removed: the new leader finishes the job.
            self_address, wait_s = self._node.config.raft_address, timeout or MEMBERSHIP_TIMEOUT_S
            if not await self._wait_for_leader_other_than(self_address, wait_s):
                raise Unavailable("no new leader took over in time; check `cpctl cluster status`") from None
            response = await self.on_leader("RemoveMember", request, timeout, local)
        return list(response.members)

    async def _removal_steps(self, member_id: str, raft_address: str, request_id: str = "") -> None:
        """Take a server out: the Raft configuration first, then the directory (which bars its id).

        Each step is skipped when already done, so a retry (or the autopilot, which finishes a
        removal whose directory step is missing) completes what an earlier attempt started: the
        Raft change can commit after the leader that proposed it stepped down. A removed voter
        learns of it by asking the others once it has lost quorum; a learner applies it itself.
        """
        if raft_address in self.raft.status().connected:
            await self._raft_call(
                lambda done: self.raft.remove_node(raft_address, done),
                f"removing {member_id or raft_address} ({raft_address})",
                MEMBERSHIP_TIMEOUT_S,
                membership=True,
            )
        with self._node.state_lock:
            in_directory = member_id in self._node.machine.directory.members
            barred = member_id in self._node.machine.directory.removed_members
        if member_id and not in_directory and not barred:
            # A server of the configured peer list that had not yet published itself has no record,
            # and a removal without one bars nothing: the removed server, told "not removed" by
            # its peers, ran on for ever, and its address stayed taken for a replacement. Write its
            # record first (what the peer list says), so that the removal below bars its id.
            in_directory = await self._record_configured_peer(member_id, raft_address)
        if in_directory:
            await self._node.write(
                command_pb2.Command(request_id=request_id, member_remove=command_pb2.MemberRemove(id=member_id)),
                MEMBERSHIP_TIMEOUT_S,
            )

    async def _record_configured_peer(self, member_id: str, raft_address: str) -> bool:
        """Write the directory record of a configured peer that has none (its own publish may race
        this one: both write the same record, and a record for a removed id is refused). False
        when this server knows no addresses for it."""
        known = self._node.members().get(raft_address)
        if known is None or known.id != member_id or not known.client_address:
            log.warning("member_not_barred", member=member_id, reason="no record and no configured addresses")
            return False
        record = command_pb2.MemberRecord(id=member_id, raft_address=raft_address, client_address=known.client_address)
        await self._node.write(
            command_pb2.Command(member_upsert=command_pb2.MemberUpsert(member=record)), MEMBERSHIP_TIMEOUT_S
        )
        return True

    async def promote(self, member_id: str) -> None:
        """Autopilot: make a learner a voter - the Raft configuration first, then the directory.

        The learner sees the configuration entry that names it as soon as it is appended and
        restarts its Raft node as a voter; in a one-voter cluster the entry cannot commit before
        that. The directory record (learner=false) follows the commit. Both steps are idempotent.
        """
        record = next((r for r in self._node.directory().values() if r.id == member_id), None)
        if record is None:
            return

        async def change() -> None:
            if record.raft_address not in self.raft.status().connected:
                await self._raft_call(
                    lambda done: self.raft.add_node(record.raft_address, done),
                    f"promoting {member_id} ({record.raft_address})",
                    MEMBERSHIP_TIMEOUT_S,
                    membership=True,
                )
            if record.learner:
                promoted = command_pb2.MemberRecord()
                promoted.CopyFrom(record)
                promoted.learner = False
                await self._node.write(
                    command_pb2.Command(member_upsert=command_pb2.MemberUpsert(member=promoted)), MEMBERSHIP_TIMEOUT_S
                )

        await self._one_membership_change(("promote", member_id), f"promoting {member_id} to voter", change)
        log.info("learner_promoted", member=member_id, raft_address=record.raft_address)

    async def remove_server(self, member_id: str, raft_address: str, why: str) -> None:
        """Autopilot: remove a server (a dead one, or finish a removal), one change at a time."""

        async def change() -> None:
            await self._removal_steps(member_id, raft_address)

        # The key of RemoveMember: an operator's RemoveMember for the same server joins this change.
        description = f"removing {member_id or raft_address} ({why})"
        await self._one_membership_change(("remove", member_id), description, change)
        log.warning("member_removed_by_autopilot", member=member_id, raft_address=raft_address, reason=why)

    def membership_change_in_flight(self) -> str:
        """What the one membership change running now does, or "" (only a leader runs them)."""
        current = self._membership_change
        return current[1] if current is not None and not current[2].done() else ""

    async def _one_membership_change(
        self, key: tuple[str, ...], description: str, change: Callable[[], Awaitable[None]]
    ) -> None:
        """Run one Raft membership change at a time, detached from the RPC that asked for it.

        A client that gives up (its deadline passes, or the SDK abandons a slow attempt) cancels
        its handler, but not a change pysyncobj is already committing: cancelling half-way would
        free the one-change slot while the change still commits. A retry of the same change joins
        the one in flight; any other change is refused until it completes.
        """
        current = self._membership_change
        if current is not None and not current[2].done():
            if current[0] == key:
                await asyncio.shield(current[2])
                return
            raise FailedPrecondition(
                f"a membership change is already in flight ({current[1]}); retry when it completes"
            )
        task = asyncio.ensure_future(change())
        # Retrieve the outcome even if every caller gave up, so a failure is logged, not lost.
        task.add_done_callback(
            lambda done: (
                done.cancelled()
                or done.exception() is None
                or log.warning("membership_change_failed", change=description, error=str(done.exception()))
            )
        )
        self._membership_change = (key, description, task)
        await asyncio.shield(task)

    async def transfer_leadership(self, target_id: str, timeout: float | None) -> tuple[str, int]:
        request = cluster_pb2.TransferLeadershipRequest(target_id=target_id)

        async def local() -> cluster_pb2.TransferLeadershipResponse:
            target_address = None
            if target_id:
                target = next((m for m in self._node.members().values() if m.id == target_id), None)
                if target is None:
                    raise NotFound(f"no member {target_id!r} in this cluster")
                if target.id == self._node.node_id:
                    return cluster_pb2.TransferLeadershipResponse(leader_id=self._node.node_id, term=self.raft.term())
                target_address = target.raft_address
            leader_id, term = await self._transfer(target_address, timeout or MEMBERSHIP_TIMEOUT_S)
            return cluster_pb2.TransferLeadershipResponse(leader_id=leader_id, term=term)

        response = await self.on_leader("TransferLeadership", request, timeout, local)
        return response.leader_id, response.term

    async def _transfer(self, target_address: str | None, timeout: float) -> tuple[str, int]:
        """Hand leadership to ``target_address`` (or the most caught-up follower) and wait for it.

        Raft's rule, as etcd applies it: the leader stops growing its log, waits for the target to
        match it, then sends TimeoutNow. pysyncobj has only the last step and denies it while the
        target is behind, which under a steady write load (gossip rounds, lease renewals) is most
        of the time; and an entry appended after the TimeoutNow makes the old leader refuse the
        target its vote and win the next election itself. So new batches are held in the proposer
        for the whole transfer and leave, to the new leader, once it is elected; the TimeoutNow
        goes out only when no batch of ours is in flight and pysyncobj finds the target caught up.
        A target whose election still fails is asked again until the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self_address = self._node.config.raft_address
        resume = self._node.proposer.pause()
        try:
            while True:
                problem = self._transfer_blocker(target_address)
                if problem:
                    raise FailedPrecondition(f"leadership transfer refused: {problem}")
                if self._node.proposer.in_flight == 0:
                    reason = await self._raft_outcome(
                        lambda done: self.raft.transfer_leadership(target_address, done),
                        "leadership transfer",
                        max(deadline - loop.time(), TRANSFER_RETRY_S),
                    )
                    if reason == SUCCESS:
                        election = min(TRANSFER_ELECTION_WAIT_S, max(deadline - loop.time(), TRANSFER_RETRY_S))
                        leader = await self._wait_for_leader_other_than(self_address, election)
                        if leader is not None:
                            return leader.id, self.raft.term()
                    elif reason != Outcome.REQUEST_DENIED:
                        raise FailedPrecondition(f"leadership transfer refused: {describe_failure(reason)}")
                if loop.time() + TRANSFER_RETRY_S > deadline:
                    waiting_for = (
                        "this leader's own writes to commit"
                        if self._node.proposer.in_flight
                        else "the target to catch up with the leader's log and win its election"
                    )
                    raise FailedPrecondition(
                        f"leadership transfer refused: gave up after {timeout:.0f} s waiting for {waiting_for}; "
                        "check `cpctl cluster status`"
                    )
                await asyncio.sleep(TRANSFER_RETRY_S)
        finally:
            resume()

    def _transfer_blocker(self, target_address: str | None) -> str | None:
        """Why no leadership transfer can start now, or None when the only obstacle may be lag."""
        connected = self.raft.status().connected
        others = {address: up for address, up in connected.items() if address != self._node.config.raft_address}
        if target_address is None:
            return None if any(others.values()) else "no other voting server is connected to this leader"
        if target_address not in others:
            return f"{target_address} is not a voter in the Raft configuration (a learner cannot lead)"
        if not others[target_address]:
            return f"{target_address} is not connected to this leader; check `cpctl cluster status`"
        return None

    async def _wait_for_leader_other_than(self, address: str, timeout: float) -> MemberAddress | None:
        """The leader once it is not ``address``; None if none took over within ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            leader = self._node.leader()
            if leader is not None and leader.raft_address != address:
                return leader
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.02)  # polling pysyncobj's leader field: it has no change notification


class _SteppedAside(Exception):
    """The leader handed leadership over so that it can be removed; the caller retries on the new one."""
