"""Membership at runtime: servers join as learners, are promoted once caught up, are removed (by an
operator or by dead-server cleanup), one change at a time, and a removed server never lingers."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc
import pytest
from pysyncobj.node import Node

from controlplane import errors, tls
from controlplane.client import (
    AlreadyExists,
    Client,
    Consistency,
    ControlPlaneError,
    Credentials,
    FailedPrecondition,
    Member,
    NotFound,
    RetryPolicy,
)
from controlplane.dev import LocalCluster, NodeProcess, free_port
from controlplane.server.config import Peer, RaftTuning, ServerConfig
from controlplane.server.raft import PeerAccess, RaftNode
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import cluster_pb2, command_pb2, common_pb2, kv_pb2, storage_pb2

from .conftest import (
    ElectionWatch,
    assert_same_state,
    channel,
    credentials_for,
    followers,
    kv_stub,
    list_all,
    node_client,
    published_members,
    running,
    status,
    wait_converged,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

# Promotion needs this long of continuous health; short, so the tests wait seconds, not Consul's 10.
FAST_PROMOTION = {"server_stabilization_s": 1.0}
# Never promoted within a test: the server stays a learner.
NO_PROMOTION = {"server_stabilization_s": 3600.0}


def _member_ids(node: NodeProcess) -> set[str]:
    return {member.id for member in status(node).members}


def _wait_members(nodes: list[NodeProcess], expected: set[str], timeout: float = 20.0) -> None:
    for node in nodes:
        wait_until(lambda node=node: _member_ids(node) == expected, timeout, f"{node.id} to list members {expected}")


def _write(client: Client, prefix: str, count: int) -> dict[str, int]:
    return {f"{prefix}{i:03d}": client.put(f"{prefix}{i:03d}", f"{prefix}{i}").revision for i in range(count)}


def _seen_by_leader(cluster: LocalCluster, member_id: str) -> cluster_pb2.Member | None:
    leader = cluster.nodes[cluster.wait_for_leader()]
    return next((member for member in status(leader).members if member.id == member_id), None)


def _join(cluster: LocalCluster, client: Client) -> tuple[NodeProcess, dict[str, Member]]:
    """Start one more server with --join, wait until it answers, admit it: the server and the members."""
    node = cluster.add_server()
    wait_until(lambda: status(node), 20, f"the joining {node.id} to answer")
    members = client.add_member(node.id, node.raft_address, node.client_address)
    return node, {member.id: member for member in members}


def _healthy_learner(cluster: LocalCluster, member_id: str) -> cluster_pb2.Member | None:
    """The leader's view of a learner once its health checks have found it healthy (stable_since set)."""
    member = _seen_by_leader(cluster, member_id)
    return member if member is not None and member.healthy and member.stable_since_unix_ms else None


def _wait_promoted(cluster: LocalCluster, node: NodeProcess, timeout: float = 30.0) -> None:
    """The leader lists ``node`` as a voter (no longer a learner) and ``node`` serves again as a voter."""

    def promoted() -> bool:
        member = _seen_by_leader(cluster, node.id)
        own = status(node)
        return bool(
            member is not None
            and member.voter
            and not member.learner
            and own.ready
            and own.role in (cluster_pb2.ROLE_FOLLOWER, cluster_pb2.ROLE_LEADER)
        )

    wait_until(promoted, timeout, f"{node.id} to be promoted", detail=lambda: _seen_by_leader(cluster, node.id))


def _wait_exit(node: NodeProcess, timeout: float = 20.0) -> int:
    wait_until(lambda: not node.running, timeout, f"{node.id} to stop itself")
    assert node.process is not None
    return node.process.returncode


class StaleReader:
    """Stale reads pinned to one server, as fast as it answers (raw gRPC: no SDK retry hides a refusal).

    Records the revision of every answer and the message of every refusal.
    """

    def __init__(self, node: NodeProcess, prefix: str) -> None:
        self.revisions: list[int] = []
        self.refusals: list[str] = []
        self._node = node
        self._prefix = prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stale-reader-{node.id}", daemon=True)

    def _run(self) -> None:
        request = kv_pb2.ListRequest(
            prefix=self._prefix, limit=1, read=common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_STALE)
        )
        with channel(self._node.client_address) as ch:
            stub = kv_stub(ch)
            while not self._stop.is_set():
                try:
                    self.revisions.append(stub.List(request, timeout=2).header.revision)
                except grpc.RpcError as exc:
                    self.refusals.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]

    def __enter__(self) -> StaleReader:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(30)


class Writer:
    """Puts one key after another from a thread until stopped; records what was acknowledged and what failed."""

    def __init__(self, endpoints: list[str], prefix: str) -> None:
        self.acked: dict[str, int] = {}
        self.failures: list[ControlPlaneError] = []
        self._endpoints = endpoints
        self._prefix = prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{prefix}", daemon=True)

    def _run(self) -> None:
        with Client(self._endpoints, timeout=30, credentials=credentials_for(self._endpoints[0])) as client:
            index = 0
            while not self._stop.is_set():
                key = f"{self._prefix}{index:05d}"
                try:
                    self.acked[key] = client.put(key, key.encode()).revision
                except ControlPlaneError as exc:
                    self.failures.append(exc)
                index += 1

    def wait_for(self, more: int, timeout: float = 20.0) -> None:
        """Until ``more`` further writes were acknowledged: the cluster is taking writes now."""
        target = len(self.acked) + more
        wait_until(lambda: len(self.acked) >= target, timeout, f"{more} more acknowledged writes")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer is stuck"


# --------------------------------------------------------------------------------------- joining


def test_a_new_server_is_a_learner_until_caught_up_while_clients_write(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(extra_config=FAST_PROMOTION)
    original = set(cluster.nodes)
    elections = ElectionWatch.start(cluster.leader())
    with Writer(cluster.client_addresses, "members/join/") as writer:
        writer.wait_for(20)
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
            new, members = _join(cluster, client)
        # Admitted as a learner: listed, but it does not vote, so admitting it cannot cost quorum.
        assert set(members) == original | {new.id}
        assert not members[new.id].voter
        assert all(members[node_id].voter for node_id in original)
        own = status(new)
        assert own.role == cluster_pb2.ROLE_LEARNER
        assert not {m.id: m for m in own.members}[new.id].voter
        # It receives the log as a learner: its applied index moves with the writes.
        applied = own.applied_index
        writer.wait_for(20)
        wait_until(lambda: status(new).applied_index > applied, 10, "the learner to apply new entries")
        with StaleReader(new, "members/join/") as reader:
            _wait_promoted(cluster, new)
            writer.wait_for(20)
    # While it restarted its Raft node as a voter it refused stale reads, and the revision it answered
    # at never went backwards (the new node replays from its dump; the old view is served until then).
    assert any("restarting its Raft node as a voter" in refusal for refusal in reader.refusals), reader.refusals[:5]
    assert all(refusal.startswith("UNAVAILABLE") for refusal in reader.refusals), reader.refusals[:5]
    assert reader.revisions and all(a <= b for a, b in itertools.pairwise(reader.revisions))
    assert not writer.failures, f"writes failed during the join: {writer.failures[:3]}"
    last = max(writer.acked.values())
    # Every acknowledged write is on the new voter (asked alone, at least at the last revision).
    with node_client(new) as on_new:
        state = list_all(on_new, "members/join/", consistency=Consistency.STALE, min_revision=last)
    assert {key: kv.mod_revision for key, kv in state.items()} == writer.acked
    leader = cluster.nodes[cluster.wait_for_leader()]
    assert {m.id for m in status(leader).members if m.voter} == original | {new.id}
    elections.assert_no_election(running(cluster), "the promotion disrupted the leader")
    assert new.id in published_members(leader)
    revision = wait_converged(cluster)
    assert_same_state(running(cluster), revision, "members/join/")


def test_a_learner_killed_before_promotion_does_not_count_for_quorum(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Learners stay out of the Raft configuration: losing one never costs quorum, and a removed learner
    (which still receives the log) applies its own removal and stops."""
    cluster = make_cluster(extra_config=NO_PROMOTION)
    voters = set(cluster.nodes)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        # A learner removed while it runs stops itself.
        doomed, _ = _join(cluster, client)
        wait_until(lambda: status(doomed).ready, 20, f"the learner {doomed.id} to catch up")
        client.remove_member(doomed.id)
        assert _wait_exit(doomed) != 0
        assert "was removed from this cluster" in doomed.log_path.read_text()

        learner, _ = _join(cluster, client)
        wait_until(lambda: status(learner).ready, 20, f"the learner {learner.id} to catch up")
        member = wait_until(lambda: _healthy_learner(cluster, learner.id), 20, "the leader to see the learner healthy")
        assert member.learner and not member.voter and member.role == cluster_pb2.ROLE_LEARNER
        assert 0 < member.last_contact_unix_ms <= time.time_ns() // 1_000_000 + 1000 and member.applied_index > 0
        assert member.commit_index >= member.applied_index  # both from its answer to one health check
        with pytest.raises(FailedPrecondition):  # leadership never goes to a learner
            client.transfer_leadership(learner.id)
        cluster.kill(learner.id)
        before = _write(client, "members/learner-dead/", 20)
        leader_id = cluster.wait_for_leader()
        leader = cluster.nodes[leader_id]
        assert {m.id for m in status(leader).members if m.voter} == voters
        # 2 of the 3 voters are still a majority: the dead learner does not count either way.
        cluster.kill(followers(cluster, leader_id)[0].id)
        after = _write(client, "members/voter-dead/", 20)
        assert status(leader).has_quorum
    survivors = running(cluster)
    revision = wait_converged(cluster, survivors)
    state = assert_same_state(survivors, revision, "members/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


def test_a_single_server_grows_to_two_voters(make_cluster: Callable[..., LocalCluster]) -> None:
    """With one voter the promotion's configuration entry can only commit with the learner's vote: the
    learner must switch to voter when the entry reaches its log, not when it commits."""
    cluster = make_cluster(servers=1, extra_config=FAST_PROMOTION)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        before = _write(client, "members/single/before-", 20)
        new, _ = _join(cluster, client)
        _wait_promoted(cluster, new)
        after = _write(client, "members/single/after-", 20)
    assert {m.id for m in status(cluster.nodes["n1"]).members if m.voter} == {"n1", new.id}
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision, "members/single/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


def test_a_server_running_as_a_voter_outside_the_configuration_starts_over_as_a_learner(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """What a promotion whose configuration entry died with its leader leaves behind: a server that runs
    as a voter (its raft.voter marker says promoted) but that the configuration does not hold, while the
    directory says learner. Cut off, it asks the others, sets its log aside, catches up as a learner
    and is promoted properly."""
    cluster = make_cluster(extra_config=FAST_PROMOTION)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        before = _write(client, "members/outside/before-", 20)
        stray = cluster.add_server()
        wait_until(lambda: status(stray), 20, f"{stray.id} to answer")
        cluster.kill(stray.id)
        (stray.data_dir / "raft.voter").write_text(stray.id + "\n")
        cluster.restart(stray.id)
        wait_until(lambda: status(stray).role != cluster_pb2.ROLE_LEARNER, 20, f"{stray.id} to run as a voter")
        client.add_member(stray.id, stray.raft_address, stray.client_address)
        _wait_promoted(cluster, stray)
        after = _write(client, "members/outside/after-", 20)
    assert '"voter_outside_configuration"' in stray.log_path.read_text()
    assert (stray.data_dir / "raft.wal.discarded").exists()
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision, "members/outside/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


def test_a_learner_catches_up_from_a_leader_its_snapshot_does_not_list(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """A snapshot can predate the voter that sends it. n4 joins while the cluster runs on two
    voters, so the snapshot it receives lists n2 and n3 only; once n4 leads (and has not compacted
    since), that is the snapshot a new learner gets. The learner dialled only the voters its
    configuration listed and hung up on n4: it never caught up (the fault suite's member-replace
    nemesis)."""
    cluster = make_cluster(extra_config={**FAST_PROMOTION, "raft": {"compaction_min_entries": 100}})
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        client.remove_member("n1")
        assert _wait_exit(cluster.nodes["n1"]) == 1
        before = _write(client, "members/stale-snapshot/before-", 150)  # every voter compacts
        wait_until(lambda: all((node.data_dir / "raft.dump").exists() for node in running(cluster)), 30, "dumps")
        n4, _ = _join(cluster, client)
        _wait_promoted(cluster, n4)
        assert client.transfer_leadership("n4", timeout=30)[0] == "n4"
        # The case under test: the snapshot n4 will send does not list n4 (it has not compacted).
        snapshot = storage_pb2.RaftDump.FromString((n4.data_dir / "raft.dump").read_bytes())
        assert n4.raft_address not in snapshot.cluster, "n4 compacted since it joined: the test lost its case"
        n5, _ = _join(cluster, client)
        _wait_promoted(cluster, n5)
        after = _write(client, "members/stale-snapshot/after-", 10)
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision, "members/stale-snapshot/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


# --------------------------------------------------------------------------------------- removing


def test_add_a_fourth_server_then_remove_another(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(extra_config=FAST_PROMOTION)
    original = set(cluster.nodes)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        before = _write(client, "members/before/", 50)

        new, members = _join(cluster, client)
        assert set(members) == original | {new.id}
        added = members[new.id]
        assert (added.raft_address, added.client_address) == (new.raft_address, new.client_address)
        _wait_promoted(cluster, new)

        after_add = _write(client, "members/after-add/", 50)
        last = max(after_add.values())

        # The new server has everything: what was there before it joined and what came after.
        with node_client(new) as on_new:
            kv = on_new.get("members/before/000")
            assert kv is not None and kv.mod_revision == before["members/before/000"]
            new_state = list_all(on_new, "members/", consistency=Consistency.STALE, min_revision=last)
        assert {key: kv.mod_revision for key, kv in new_state.items()} == {**before, **after_add}
        _wait_members(running(cluster), original | {new.id})
        assert new.id in published_members(new)

        # Remove one of the original servers (not the leader), then keep writing.
        leader = cluster.wait_for_leader()
        victim = next(node for node in followers(cluster, leader) if node.id != new.id)
        members = client.remove_member(victim.id)
        expected = original - {victim.id} | {new.id}
        assert {m.id for m in members} == expected
        elections = ElectionWatch.start(cluster.nodes[leader])
        # The others drop their connections to the removed server: it loses quorum, asks them, learns it
        # was removed and stops itself (exit status 1), without disturbing them.
        after_remove = _write(client, "members/after-remove/", 50)
        assert _wait_exit(victim) == 1
        after_remove.update(_write(client, "members/after-remove/more-", 50))
        assert victim.id not in _member_ids(cluster.nodes[leader])
        assert victim.id in status(cluster.nodes[leader]).removed_member_ids
        # Its certificate no longer speaks for a server: the cluster's status, and nothing else.
        victim_files = tls.TlsFiles.from_directory(cluster.pki_dir, tls.Identity("server", victim.id))
        as_victim = Credentials(ca=victim_files.ca, cert=victim_files.cert, key=victim_files.key)
        with Client(cluster.client_addresses, credentials=as_victim, timeout=20) as removed_servers_key:
            assert victim.id not in {member.id for member in removed_servers_key.status().members}
            with pytest.raises(errors.PermissionDenied, match=f"server {victim.id} was removed from this cluster"):
                removed_servers_key.put("members/by-a-removed-server", "refused")
        # What an agent's artifact port asks of the cluster about it: nothing held any more.
        refusal = client.check_permission(f"server:{victim.id}", "models", "read", "any-model")
        assert refusal == f"server {victim.id} was removed from this cluster"
        assert client.check_permission(f"server:{new.id}", "models", "read", "any-model") is None

    remaining = running(cluster)
    assert {node.id for node in remaining} == expected
    _wait_members(remaining, expected)
    assert victim.id not in published_members(remaining[0])
    elections.assert_no_election(remaining, "the removed server disrupted the cluster")
    revision = wait_converged(cluster, remaining)
    state = assert_same_state(remaining, revision, "members/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after_add, **after_remove}

    # Started again on its old data directory, it refuses: its id is barred (exit status 2).
    cluster.restart(victim.id)
    assert _wait_exit(victim) == 2
    assert "refusing to start" in victim.log_path.read_text()


def test_remove_a_server_while_clients_write_then_it_cannot_come_back(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """The removed server is one that joined (started with --join) and was promoted: it stops itself once
    removed, and started again with --join on its old data directory it refuses to start."""
    cluster = make_cluster(extra_config=FAST_PROMOTION)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        joined, _ = _join(cluster, client)
        _wait_promoted(cluster, joined)
        with Writer([n.client_address for n in cluster.nodes.values() if n is not joined], "members/rm/") as writer:
            writer.wait_for(20)
            members = client.remove_member(joined.id)
            assert joined.id not in {m.id for m in members}
            writer.wait_for(20)
            assert _wait_exit(joined) == 1
            writer.wait_for(20)
    assert not writer.failures, f"writes failed during the removal: {writer.failures[:3]}"
    log_text = joined.log_path.read_text()
    assert "removed_from_cluster" in log_text and "wipe its data directory" in log_text

    remaining = running(cluster)
    assert {node.id for node in remaining} == set(cluster.nodes) - {joined.id}
    revision = wait_converged(cluster, remaining)
    state = assert_same_state(remaining, revision, "members/rm/")
    assert {key: kv.mod_revision for key, kv in state.items()} == writer.acked

    cluster.restart(joined.id)  # with --join, as it was first started
    assert _wait_exit(joined) == 2
    assert "refusing to start" in joined.log_path.read_text()
    assert joined.id not in _member_ids(remaining[0])


def test_a_configured_server_removed_before_it_published_itself_is_barred_and_stops(tmp_path: Path) -> None:
    """A server of the configured peer list writes its own directory record once a leader exists.
    One removed before it had (paused here from its start; the fault suite's member-replace-kill
    hit it 1.7 s into a run) had no record, so the removal barred nothing: told "not removed" by
    its peers it ran on for ever, and its address stayed taken for a replacement."""
    cluster = LocalCluster(tmp_path / "cluster", servers=3, extra_config=FAST_PROMOTION)
    late = cluster.nodes["n3"]
    try:
        cluster.start()
        assert late.pid is not None
        os.kill(late.pid, signal.SIGSTOP)  # long before it can publish (a Python start takes seconds)
        leader = cluster.nodes[cluster.wait_for_leader(60, among=["n1", "n2"])]
        addresses = [cluster.nodes["n1"].client_address, cluster.nodes["n2"].client_address]
        with Client(addresses, credentials=cluster.credentials, timeout=30) as client:
            client.remove_member("n3")
            os.kill(late.pid, signal.SIGCONT)
            assert _wait_exit(late, 60) == 1
            assert "n3" in status(leader).removed_member_ids
            replacement = cluster.replace_server("n3")
            wait_until(lambda: status(replacement), 30, f"the joining {replacement.id} to answer")
            client.add_member(replacement.id, replacement.raft_address, replacement.client_address)
            _wait_promoted(cluster, replacement)
    finally:
        if late.running and late.pid is not None:
            os.kill(late.pid, signal.SIGCONT)
        cluster.stop()


def test_remove_the_leader_itself(make_cluster: Callable[..., LocalCluster]) -> None:
    """The leader cannot remove itself in pysyncobj: it hands leadership over and the new leader does it."""
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        before = _write(client, "members/leader-removal/before-", 20)
        # A handover plus a removal take well under a second on loopback; 10 s is generous.
        members = client.remove_member(old_leader, timeout=10)
        expected = set(cluster.nodes) - {old_leader}
        assert {m.id for m in members} == expected
        remaining = [cluster.nodes[node_id] for node_id in sorted(expected)]
        new_leader = cluster.wait_for_leader(among=[node.id for node in remaining])
        assert new_leader != old_leader
        after = _write(client, "members/leader-removal/after-", 20)
    _wait_exit(cluster.nodes[old_leader])
    _wait_members(remaining, expected)
    revision = wait_converged(cluster, remaining)
    state = assert_same_state(remaining, revision, "members/leader-removal/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


def test_dead_servers_are_cleaned_up_but_never_below_min_quorum(make_cluster: Callable[..., LocalCluster]) -> None:
    """Five voters, dead_server_cleanup_s 2, min_quorum 3: the first two dead servers are removed, one at
    a time; a third is kept (three voters is min_quorum) while the two live ones keep the cluster writable."""
    cluster = make_cluster(servers=5, extra_config={"dead_server_cleanup_s": 2.0, "min_quorum": 3})
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    doomed = [node for node in followers(cluster, leader_id)][:3]
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        for count, victim in enumerate(doomed[:2], start=1):
            cluster.kill(victim.id)
            wait_until(
                lambda victim=victim: victim.id in status(leader).removed_member_ids,
                20,
                f"the dead {victim.id} to be removed",
            )
            assert {m.id for m in status(leader).members if m.voter} == set(cluster.nodes) - {
                node.id for node in doomed[:count]
            }
            _write(client, f"members/cleanup-{count}/", 10)

        # Three voters left, min_quorum 3: the next dead one stays a member.
        last = doomed[2]
        cluster.kill(last.id)
        wait_until(
            lambda: '"dead_server_kept"' in leader.log_path.read_text(), 20, "the leader to keep the dead server"
        )
        view = status(leader)
        assert last.id in {m.id for m in view.members if m.voter} and last.id not in view.removed_member_ids
        assert not {m.id: m for m in view.members}[last.id].healthy
        _write(client, "members/cleanup-kept/", 10)

    # A cleaned-up server that comes back with its old data refuses to start.
    first = doomed[0]
    cluster.restart(first.id)
    assert _wait_exit(first) == 2
    assert "refusing to start" in first.log_path.read_text()


# --------------------------------------------------------------------------------------- one at a time


def test_membership_errors_are_clear(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    existing = cluster.nodes["n2"]
    spare = f"127.0.0.1:{free_port()}"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        with pytest.raises(AlreadyExists) as caught:
            client.add_member("n2", spare, spare)
        assert "n2" in caught.value.message
        with pytest.raises(AlreadyExists) as caught:
            client.add_member("n7", existing.raft_address, spare)
        assert existing.raft_address in caught.value.message
        # The very same member again is a retry, not an error: nothing changes.
        members = client.add_member("n2", existing.raft_address, existing.client_address)
        assert {m.id for m in members} == set(cluster.nodes)
        with pytest.raises(NotFound) as missing:
            client.remove_member("no-such-member")
        assert "no-such-member" in missing.value.message
        client.put("members/still-writable", b"1")
    _wait_members(running(cluster), set(cluster.nodes))


def _hold_commits(cluster: LocalCluster, leader_id: str) -> tuple[NodeProcess, NodeProcess]:
    """Freeze both followers (SIGSTOP): nothing commits, and the leader keeps leading (the cluster runs
    with a long leader_fallback_s), so a membership change stays in flight on it."""
    first, second = followers(cluster, leader_id)
    for node in (first, second):
        assert node.pid is not None
        os.kill(node.pid, signal.SIGSTOP)
    return first, second


def _release(node: NodeProcess) -> None:
    assert node.pid is not None
    os.kill(node.pid, signal.SIGCONT)


# Frozen followers must not make the leader step down while a test holds a change in flight.
HOLDING = {"raft": {"leader_fallback_s": 60.0}}


def test_second_membership_change_while_one_is_in_flight_is_refused(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """While an AddMember cannot commit, another AddMember is FAILED_PRECONDITION naming the first.

    Resuming the followers one at a time keeps the pending entry safe: the first one back lacks it, so
    the leader (which has it) wins the election the resumed follower starts, and commits it.
    """
    cluster = make_cluster(extra_config=HOLDING)
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    ghost_raft, ghost_client = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    first_outcome: list[object] = []

    def first_add() -> None:
        with Client(leader.client_address, credentials=leader.credentials, timeout=60) as client:
            try:
                first_outcome.append(client.add_member("ghost", ghost_raft, ghost_client))
            except ControlPlaneError as exc:
                first_outcome.append(exc)

    frozen = _hold_commits(cluster, leader_id)
    adder = threading.Thread(target=first_add)
    try:
        adder.start()
        wait_until(lambda: "ghost" in status(leader).membership_change, 10, "the ghost add to be in flight")
        with (
            Client(leader.client_address, credentials=leader.credentials) as client,
            pytest.raises(FailedPrecondition) as caught,
        ):
            client.add_member("n9", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        assert "in flight" in caught.value.message and "ghost" in caught.value.message
    finally:
        _release(frozen[0])
        adder.join(60)
        _release(frozen[1])
    assert not adder.is_alive()
    assert isinstance(first_outcome[0], list), first_outcome
    assert not {m.id: m for m in first_outcome[0]}["ghost"].voter

    # The ghost is a learner that never answers: never promoted, and removable again.
    cluster.wait_for_leader()
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        client.remove_member("ghost")
        put = client.put("members/after-ghost", b"1")
    _wait_members(running(cluster), set(cluster.nodes))
    assert wait_converged(cluster) >= put.revision


def test_add_member_slower_than_one_sdk_attempt_still_succeeds(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """An AddMember that takes longer than one SDK attempt (``RetryPolicy.attempt_timeout``): the SDK
    gives up on the attempt and retries with the same request id. The retry must end in the outcome of
    the one change, not in an error while the change goes on to commit behind the caller's back. The
    change is held up as in the test above, for one attempt timeout and a bit more."""
    cluster = make_cluster(extra_config=HOLDING)
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    ghost_raft, ghost_client = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    hold_s = RetryPolicy().attempt_timeout + 2.0
    outcome: list[object] = []

    def add() -> None:
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=60) as client:
            try:
                outcome.append(client.add_member("ghost", ghost_raft, ghost_client))
            except ControlPlaneError as exc:
                outcome.append(exc)

    frozen = _hold_commits(cluster, leader_id)
    adder = threading.Thread(target=add)
    try:
        adder.start()
        wait_until(lambda: "ghost" in status(leader).membership_change, 10, "the ghost add to be in flight")
        adder.join(hold_s)  # the fault: the followers stay frozen this long
    finally:
        _release(frozen[0])
        adder.join(60)
        _release(frozen[1])
    assert not adder.is_alive()
    assert isinstance(outcome[0], list), f"AddMember failed although it committed: {outcome[0]!r}"
    assert "ghost" in {m.id for m in outcome[0]}

    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        client.remove_member("ghost")
        put = client.put("members/after-slow-add", b"1")
    _wait_members(running(cluster), set(cluster.nodes))
    assert wait_converged(cluster) >= put.revision


# --------------------------------------------------------------------------------------- pysyncobj facts


async def test_pysyncobj_read_only_nodes_do_what_learners_rely_on(tmp_path: Path) -> None:
    """In one process, through RaftNode on the event loop: a read-only node (learner) applies entries,
    keeps a journal, writes a full dump through our hooks, catches up from a snapshot, restarts from its
    own files, and switches to a voter on the same files when its promotion reaches its log. A voter
    restarted from a dump does not count itself as a partner (the address-string dump defect)."""
    leader = _raft_node(tmp_path, "a", [], voter=True)
    nodes = [leader]
    try:
        await _until(leader.raft.is_leader, 10, "a one-voter cluster to elect itself")
        await leader.put(50)
        # A learner that joins after a compaction gets the dump (our deserializer), then the log.
        leader.raft._sync.forceLogCompaction()
        await _until(leader.dump_written, 10, "the leader's dump")
        await leader.put(20)
        learner = _raft_node(tmp_path, "b", [leader], voter=False)
        nodes.append(learner)
        await _until(lambda: learner.machine.revision == leader.machine.revision, 10, "the learner to catch up")
        assert learner.raft.status().role == "learner" and learner.raft.is_ready()
        assert not learner.raft.listed_as_voter()
        # Its own dump goes through our serializer (pysyncobj passes the read-only node as None).
        learner.raft._sync.forceLogCompaction()
        await _until(learner.dump_written, 10, "the learner's dump")
        dump = storage_pb2.RaftDump.FromString(learner.config.dump_file.read_bytes())
        assert list(dump.cluster) == [leader.config.raft_address]
        await leader.put(10)
        await _until(lambda: learner.machine.revision == leader.machine.revision, 10, "the learner to follow")
        # Never counted: the leader's configuration is itself alone, so it commits without the learner.
        assert set(leader.raft.status().connected) == {leader.config.raft_address}

        # A restart from its own journal and dump, still as a learner.
        learner.stop()
        learner = nodes[1] = _raft_node(tmp_path, "b", [leader], voter=False)
        await _until(lambda: learner.machine.revision == leader.machine.revision, 10, "the restarted learner")

        # Promotion: the entry naming it reaches its log, then it restarts as a voter on the same files.
        done: list[int] = []
        leader.raft.add_node(learner.config.raft_address, done.append)
        await _until(learner.raft.listed_as_voter, 10, "the learner to see its promotion")
        fresh = StateMachine()
        learner.raft.restart(True, fresh)
        learner.machine = fresh
        await _until(lambda: done == [0], 10, "the promotion to commit (it needs the new voter)")
        await leader.put(10)
        await _until(lambda: fresh.revision == leader.machine.revision, 10, "the new voter to apply")
        assert learner.raft.status().role == "follower"
        assert set(leader.raft.status().connected) == {leader.config.raft_address, learner.config.raft_address}

        # A voter restarted from a dump that lists it must not list itself as a partner.
        learner.raft._sync.forceLogCompaction()
        await _until(learner.dump_written, 10, "the voter's dump")
        learner.stop()
        learner = nodes[1] = _raft_node(tmp_path, "b", [leader], voter=True)
        await _until(lambda: learner.raft.is_ready(), 10, "the voter to restart")
        assert {node.id for node in learner.raft._sync.otherNodes} == {leader.config.raft_address}
    finally:
        for node in nodes:
            node.stop()


async def test_a_leader_drops_an_ack_from_a_peer_it_no_longer_tracks(tmp_path: Path) -> None:
    """An ack can outlive the link it came on: a learner's, held for the leader's fsync while the
    learner was promoted (from then on tracked under its voter identity). pysyncobj read its match
    index unguarded and raised KeyError out of the tick. Held or not, an ack goes through the same
    check on delivery; here it is delivered at once (a lone voter holds no acks), and dropped."""
    leader = _raft_node(tmp_path, "a", [], voter=True)
    try:
        await _until(leader.raft.is_leader, 10, "a one-voter cluster to elect itself")
        await leader.put(5)
        receive = leader.raft._sync._SyncObj__transport._onMessageReceivedCallback
        receive(Node("learner:gone"), {"type": "next_node_idx", "reset": False, "next_node_idx": 3, "success": True})
        await leader.put(5)
    finally:
        leader.stop()


async def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """``wait_until`` for a test that runs on the event loop the Raft nodes tick on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)  # the poll interval of a condition wait: the nodes tick meanwhile


def _any_peer(_peer_id: str, _raft_address: str, _learner: bool) -> str | None:
    return None  # the in-process nodes run --insecure-dev: this test is about pysyncobj, not admission


class _InProcessRaft:
    def __init__(self, config: ServerConfig, voter: bool) -> None:
        self.config = config
        self.machine = StateMachine()
        self._puts = 0
        access = PeerAccess(authorize=_any_peer, server_tls=None, client_tls=None)
        self.raft = RaftNode(
            config, self.machine, threading.Lock(), lambda: None, lambda old, new: None, voter, peers=access
        )
        self._dump_mtime = self._mtime()

    def _mtime(self) -> float:
        return self.config.dump_file.stat().st_mtime if self.config.dump_file.exists() else 0.0

    def dump_written(self) -> bool:
        """A dump newer than the last one seen (then remembered)."""
        mtime = self._mtime()
        if mtime > self._dump_mtime:
            self._dump_mtime = mtime
            return True
        return False

    async def put(self, count: int) -> None:
        results: list[int] = []
        for _ in range(count):
            self._puts += 1
            command = command_pb2.Command(kv_put=command_pb2.KvPut(key=f"k{self._puts}", value=b"v"))
            self.raft.submit(batch_entry(1, "a", [command]), lambda _results, reason: results.append(reason))
        await _until(lambda: len(results) == count, 10, f"{count} entries to commit")
        assert set(results) == {0}

    def stop(self) -> None:
        self.raft.destroy()


def _raft_node(tmp_path: Path, name: str, peers: list[_InProcessRaft], voter: bool) -> _InProcessRaft:
    port_file = tmp_path / f"{name}.port"
    if not port_file.exists():
        port_file.write_text(str(free_port()))
    address = f"127.0.0.1:{port_file.read_text()}"
    config = ServerConfig(
        node_id=name,
        client_address="127.0.0.1:1",
        raft_address=address,
        metrics_address="",
        data_dir=tmp_path / name,
        insecure_dev=True,
        peers=tuple(Peer(p.config.node_id, p.config.raft_address, "127.0.0.1:1") for p in peers),
        raft=RaftTuning(compaction_min_s=3600),
    )
    return _InProcessRaft(config, voter)
