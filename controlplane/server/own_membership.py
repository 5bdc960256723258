"""A server's view of its own membership: refuse to start when removed, stop once removed,
switch to voter once promoted, start over as a learner when outside the configuration.

Every server runs this on itself all the time (``watch``); it asks the other servers when its own
log cannot know (a removed voter is sent nothing more). DESIGN.md, "Membership", has the rules.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog

from controlplane.server.config import ConfigError
from controlplane.server.consensus import Consensus
from controlplane.server.datadir import open_private_for_writing
from controlplane.state.machine import StateMachine
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc

if TYPE_CHECKING:
    from controlplane.server.node import Node

log = structlog.get_logger("controlplane.node")

# How often every server looks at its own membership (removed? promoted?).
MEMBERSHIP_WATCH_S = 0.1
# A server without quorum this long asks the others whether it was removed (the leader stops
# sending a removed voter anything, so its own log never says so), and again as often while it
# lasts. The question is a Cluster.Status to each peer: cheap enough to ask every second, and a
# removed server's address (a replacement's, often) is free that much sooner.
CUT_OFF_CHECK_S = 1.0
# Bound on one "was I removed?" question to another server.
PEER_CHECK_TIMEOUT_S = 1.0
# Bound on waiting at start for the journal's committed entries to be applied again (local work).
REPLAY_WAIT_S = 30.0

_stop_reason: str | None = None


def stop_reason() -> str | None:
    """Why the server stopped itself, or None when it was stopped from outside (a signal)."""
    return _stop_reason


class StartupRefused(ConfigError):
    """This data directory must not be served: it holds the state of a server removed from its cluster."""


class OwnMembership:
    def __init__(self, node: Node, stop_process: Callable[[], None]) -> None:
        self._node = node
        self._stop_process = stop_process
        # After a Raft restart (promotion, or back to learner): the machine the new node applies into,
        # served only once it has caught up (see _restart_raft), and when that restart began.
        self._pending_machine: StateMachine | None = None
        self._restart_began = 0.0

    @property
    def raft(self) -> Consensus:
        return self._node.raft

    def _removed_locally(self) -> bool:
        with self._node.state_lock:
            machines = (
                [self._node.machine] if self._pending_machine is None else [self._node.machine, self._pending_machine]
            )
            return any(self._node.node_id in machine.directory.removed_members for machine in machines)

    def _removed_message(self, source: str) -> str:
        node = self._node
        return (
            f"server {node.node_id!r} was removed from this cluster ({source}); its id may never rejoin. To bring "
            f"this machine back, wipe its data directory ({node.config.data_dir}), start it with --join and the "
            f"current members as --peer, and admit it under a new id: `cpctl cluster members add NEW_ID ...`"
        )

    async def refuse_if_removed(self) -> None:
        """At start with an existing journal: refuse to serve the data of a server that was removed.

        Two sources: the journal itself (it applied its own removal before it stopped), and the
        other servers (it was removed while it was down, so its journal cannot know). Peers that
        do not answer prove nothing; the running check (watch) asks again later.
        """
        deadline = asyncio.get_running_loop().time() + REPLAY_WAIT_S
        while not self.raft.replayed() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # Raft ticks replay the journal; pysyncobj has no completion callback
        source = "its own log says so" if self._removed_locally() else (await self._ask_peers()).removed
        if source:
            self.raft.destroy()
            raise StartupRefused("refusing to start: " + self._removed_message(source))

    async def _ask_peers(self) -> _PeerVerdict:
        """Ask every other known server about this one: removed? a learner outside the configuration?"""
        me = self._node.config.raft_address
        addresses = {
            m.client_address for m in self._node.members().values() if m.raft_address != me and m.client_address
        }
        addresses |= {peer.client_address for peer in self._node.config.peers}
        addresses.discard(self._node.config.advertise_address)

        async def ask(address: str) -> cluster_pb2.StatusResponse | None:
            stub = cluster_pb2_grpc.ClusterStub(self._node.peer_channel(address))
            try:
                answer: cluster_pb2.StatusResponse = await stub.Status(
                    cluster_pb2.StatusRequest(), timeout=PEER_CHECK_TIMEOUT_S
                )
            except grpc.aio.AioRpcError:
                return None
            return answer

        verdict = _PeerVerdict()
        for answer in await asyncio.gather(*(ask(address) for address in sorted(addresses))):
            if answer is None:
                continue
            # Any server's applied directory is committed state: one answer is proof enough.
            if self._node.node_id in answer.removed_member_ids:
                verdict.removed = f"{answer.node_id} lists it as removed"
            # Only the leader's configuration is authoritative about who votes.
            mine = next((m for m in answer.members if m.raft_address == me), None)
            if answer.role == cluster_pb2.ROLE_LEADER and mine is not None and mine.learner and not mine.voter:
                verdict.learner_per_leader = answer.node_id
        return verdict

    async def watch(self) -> None:
        """Every server, all the time: stop once removed; as a learner, switch to voter once promoted.

        A removed learner applies its own removal (it still receives the log). A removed voter does
        not - the leader drops it from the configuration first and sends it nothing more - so a
        server that has lost quorum for CUT_OFF_CHECK_S asks the others. The same question finds a
        server running as a voter that the leader's configuration does not hold while the directory
        says learner (its promotion's configuration entry was lost with a leader before it
        committed, or it was started as a voter and then admitted): it starts over as a learner.
        """
        cut_off_since: float | None = None
        next_peer_check = 0.0
        directory_seen = -1
        was_synced = False
        while True:
            await asyncio.sleep(MEMBERSHIP_WATCH_S)  # a timer: pysyncobj has no change notification
            try:
                synced = self.raft.synced()
                if self._node.machine.directory.version != directory_seen or (synced and not was_synced):
                    # Admission to the peer plane is checked at the handshake: a removed server's
                    # open links must go when the directory says so, not at its next reconnect;
                    # and the links a server admitted while behind, once it has caught up.
                    directory_seen = self._node.machine.directory.version
                    self.raft.revalidate_peers()
                was_synced = synced
                if self._removed_locally():
                    await self._stop_removed("its own log says so")
                    return
                self._serve_restarted_machine()
                if self.raft.listed_as_voter():
                    await self._restart_raft(voter=True)
                    cut_off_since = None
                    continue
                now = asyncio.get_running_loop().time()
                cut_off_since = None if self.raft.has_quorum() else (cut_off_since or now)
                if cut_off_since is None or now - cut_off_since < CUT_OFF_CHECK_S or now < next_peer_check:
                    continue
                verdict = await self._ask_peers()
                # From the answer, not the question: peers that never answer cost PEER_CHECK_TIMEOUT_S
                # each time, and the watch must not spend all its time asking.
                next_peer_check = asyncio.get_running_loop().time() + CUT_OFF_CHECK_S
                if verdict.removed:
                    await self._stop_removed(verdict.removed)
                    return
                if verdict.learner_per_leader and self.raft.voter:
                    log.warning(
                        "voter_outside_configuration",
                        leader=verdict.learner_per_leader,
                        hint="the leader lists this server as a learner: starting over as one",
                    )
                    await self._restart_raft(voter=False)
                    cut_off_since = None
            except Exception:  # a bug: keep watching, and say so loudly
                log.exception("membership_watch_failed")

    async def _stop_removed(self, source: str) -> None:
        """A removed server stops rather than linger as a zombie: not ready at once, then exit non-zero."""
        global _stop_reason  # read once by the CLI after the event loop ends
        message = self._removed_message(source)
        self.raft.hold_unready("it was removed from the cluster and is stopping")
        _stop_reason = message
        log.error("removed_from_cluster", hint=message)
        await asyncio.to_thread(self._stop_process)

    async def _restart_raft(self, voter: bool) -> None:
        """Restart Raft as a voter (promoted) or as a learner (outside the configuration).

        The new node replays into a fresh machine (replaying into the live one would apply every
        entry twice). Until it has caught up, this server answers from the old machine - consistent
        but frozen - and reports not ready, so stale reads are refused and health says NOT_SERVING;
        linearizable reads and reads at a revision wait as usual. ``_serve_restarted_machine`` swaps
        the machines once the new node is synced and has passed what the old one had applied, so the
        revision a reader sees never goes backwards. The watch loop keeps running meanwhile: a new
        node that never catches up (outside the configuration) is still found and handled.
        """
        marker = self._node.config.voter_marker_file
        if voter:
            log.info("promoted_to_voter", hint="restarting the Raft node as a voter on the same journal and dump")
            await asyncio.to_thread(_write_marker, marker, self._node.node_id)
        else:
            await asyncio.to_thread(marker.unlink, True)
        fresh = StateMachine(history_limit=self._node.config.history_limit)
        self.raft.restart(voter, fresh, not voter)
        self._pending_machine, self._restart_began = fresh, asyncio.get_running_loop().time()

    def _serve_restarted_machine(self) -> None:
        fresh = self._pending_machine
        if fresh is None or not self.raft.synced() or fresh.revision < self._node.machine.revision:
            return
        self._pending_machine = None
        self._node.serve_machine(fresh)
        self.raft.hold_unready(None)
        log.info(
            "raft_restarted",
            as_voter=self.raft.voter,
            revision=fresh.revision,
            switch_s=round(asyncio.get_running_loop().time() - self._restart_began, 3),
        )


def _write_marker(path: Path, node_id: str) -> None:
    """Durably note that this server was promoted (it then starts as a voter even with --join)."""
    with open(open_private_for_writing(path), "w") as out:
        out.write(node_id + "\n")
        out.flush()
        os.fsync(out.fileno())


@dataclass
class _PeerVerdict:
    """What the other servers said about this one (``_ask_peers``)."""

    #: Why this server counts as removed, or None.
    removed: str | None = None
    #: The leader that lists this server as a learner outside its configuration, or None.
    learner_per_leader: str | None = None
