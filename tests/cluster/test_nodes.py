"""Nodes, networks and flags against real servers: real `cpctl agent` processes that die (kill -9) or
stop cleanly, lease expiry decided by the leader, reassignment of the clients a dead member served,
the unified node view, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.client import (
    Client,
    Connectivity,
    Consistency,
    FailedPrecondition,
    InvalidArgument,
    NodeState,
    NotFound,
    ResourceExhausted,
)
from controlplane.dev import LocalCluster
from controlplane.v1 import (
    membership_pb2,
    membership_pb2_grpc,
)

from .conftest import channel, collect_events, cpctl, credentials_env, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

TTL_S = 2.0


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """`cpctl agent` processes started by the test, stopped (or reaped) whatever happened."""
    started: dict[str, subprocess.Popen[str]] = {}
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.wait(10)


def start_agent(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], node_id: str, *extra: str, name: str = ""
) -> subprocess.Popen[str]:
    """``name``: the process's key in ``agents`` (default the node id; another for a second process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "agent", "--id", node_id, "--ttl", str(TTL_S), *extra,
         "--endpoints", ",".join(cluster.client_addresses)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    agents[name or node_id] = process
    return process


def node_state(client: Client, node_id: str) -> NodeState | None:
    try:
        return client.membership.get_node(node_id).node.state
    except NotFound:
        return None


def test_a_killed_agent_dies_by_lease_and_its_clients_move(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.membership.set_flag("multi_network", True)
        client.membership.create_network("kill-main", "kill-model", 10, priority=5)
        client.membership.create_network("kill-spare", "kill-model", 10)
        victim = start_agent(cluster, agents, "kill-a1", "--join", "kill-main", "--capability", "gpu")
        start_agent(cluster, agents, "kill-a2", "--join", "kill-spare")
        for node_id in ("kill-a1", "kill-a2"):
            wait_until(lambda n=node_id: node_state(client, n) is NodeState.ACTIVE, 20, f"{node_id} active")
        wait_until(lambda: client.membership.get_network("kill-main").network.active_members == 1, 20, "a1 joined")
        wait_until(lambda: client.membership.get_network("kill-spare").network.active_members == 1, 20, "a2 joined")
        placed = [client.membership.assign(f"kill-c{i}", "kill-model") for i in range(3)]
        assert {(r.placement.network, r.placement.node_id) for r in placed if r.placement} == {("kill-main", "kill-a1")}
        view = client.membership.get_node("kill-a1")
        assert view.connectivity is Connectivity.CONNECTED and view.clients_served == 3 and view.lease_ttl_ms == 2000
        assert view.node.spec.capabilities == ("gpu",) and view.networks == ("kill-main",)
        start = client.status().applied_revision + 1

        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        # The leader expires the lease after the TTL; the node is DEAD and holds nothing.
        wait_until(lambda: node_state(client, "kill-a1") is NodeState.DEAD, 20, "kill-a1 declared dead")
        dead = client.membership.get_node("kill-a1")
        assert dead.networks == () and dead.clients_served == 0 and dead.connectivity is Connectivity.GONE
        assert "expired" in dead.node.reason
        placements = {p.client_id: p for p in client.membership.placements(network="kill-spare")}
        assert sorted(placements) == ["kill-c0", "kill-c1", "kill-c2"]
        assert {p.node_id for p in placements.values()} == {"kill-a2"}
        # The other agent is unaffected.
        assert node_state(client, "kill-a2") is NodeState.ACTIVE
        until = client.status().applied_revision
        # Every server holds the same outcome (read from each one, pinned).
        for node in cluster.nodes.values():
            with Client(node.client_address, credentials=node.credentials, timeout=10) as pinned:
                pinned_view = pinned.membership.get_node("kill-a1", min_revision=until)
                assert pinned_view.node.state is NodeState.DEAD

    events = collect_events(cluster.client_addresses[0], start, until, domains=("membership",))
    moves = [e.membership for e in events if e.key.startswith("placements/kill-c")]
    assert len(moves) == 3 and all(
        m.previous.node_id == "kill-a1" and m.placement.network == "kill-spare" for m in moves
    )
    assert any(e.key == "nodes/kill-a1" and e.membership.node.state == membership_pb2.NODE_STATE_DEAD for e in events)


def test_a_second_agent_with_the_same_id_is_refused_while_the_first_holds_its_lease(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    """Issue 17: two `cpctl agent --id X` side by side shared one lease, and the first to stop ended it
    for both. The second now exits with a clear message; once the first's lease expired the id is free."""
    first = start_agent(cluster, agents, "dup-a1")
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        wait_until(lambda: node_state(client, "dup-a1") is NodeState.ACTIVE, 20, "dup-a1 active")
        held = client.membership.get_node("dup-a1").node
        assert held.instance_id

        second = start_agent(cluster, agents, "dup-a1", name="second")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1, out
        assert "node id dup-a1 is in use by another running agent" in out and "lease expires no earlier than" in out
        assert "Traceback" not in out
        # The first keeps its node, its lease and its instance; nothing was deregistered.
        assert first.poll() is None
        kept = client.membership.get_node("dup-a1").node
        assert kept.state is NodeState.ACTIVE and kept.lease_id == held.lease_id
        assert (kept.instance_id, kept.incarnation) == (held.instance_id, held.incarnation)

        # A killed agent's id is free once the leader expired its lease: a new agent takes it over.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_until(lambda: node_state(client, "dup-a1") is NodeState.DEAD, 20, "dup-a1 declared dead")
        start_agent(cluster, agents, "dup-a1", name="third")
        wait_until(lambda: node_state(client, "dup-a1") is NodeState.ACTIVE, 20, "dup-a1 taken over")
        taken = client.membership.get_node("dup-a1").node
        assert taken.incarnation == held.incarnation + 1 and taken.instance_id != held.instance_id


def test_an_agent_restarted_with_the_same_instance_id_takes_its_node_back_at_once(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    """What the systemd unit does (--instance-id %m): a restart after kill -9 is the same instance, so
    the new process keeps the node and its lease instead of being refused until the lease expires."""
    machine = "0123456789abcdef0123456789abcdef"
    killed = start_agent(cluster, agents, "restart-a1", "--instance-id", machine)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        wait_until(lambda: node_state(client, "restart-a1") is NodeState.ACTIVE, 20, "restart-a1 active")
        before = client.membership.get_node("restart-a1").node
        assert before.instance_id and machine not in before.instance_id  # recorded hashed, never as given
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        restarted = start_agent(cluster, agents, "restart-a1", "--instance-id", machine, name="restarted")
        assert restarted.stdout is not None
        for line in restarted.stdout:  # until it says it registered (or exits: the loop ends, and fails)
            if "agent restart-a1 registered" in line:
                break
        else:
            pytest.fail(f"the restarted agent exited with status {restarted.wait(10)} before registering")
        after = client.membership.get_node("restart-a1").node
        assert after.state is NodeState.ACTIVE and restarted.poll() is None
        assert (after.lease_id, after.incarnation, after.instance_id) == (
            before.lease_id,
            before.incarnation,
            before.instance_id,
        )


def test_an_agent_frozen_past_its_lease_whose_id_was_taken_over_stops_and_leaves_the_new_holder_alone(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    """An agent frozen (SIGSTOP: a paused VM, a stalled host) until its lease expired and another
    agent took its id finds, when it thaws, that the node is not its own: it exits 1 without renewing
    or deregistering the new holder's node."""
    frozen = start_agent(cluster, agents, "thaw-a1")
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        wait_until(lambda: node_state(client, "thaw-a1") is NodeState.ACTIVE, 20, "thaw-a1 active")
        frozen.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: node_state(client, "thaw-a1") is NodeState.DEAD, 20, "thaw-a1 declared dead")
            start_agent(cluster, agents, "thaw-a1", name="successor")
            wait_until(lambda: node_state(client, "thaw-a1") is NodeState.ACTIVE, 20, "thaw-a1 taken over")
            holder = client.membership.get_node("thaw-a1").node
        finally:
            frozen.send_signal(signal.SIGCONT)
        out, _ = frozen.communicate(timeout=60)
        assert frozen.returncode == 1, out
        assert "agent thaw-a1 stopped: node thaw-a1 was registered again by another agent" in out
        assert "Traceback" not in out and "deregistered" not in out, out
        after = client.membership.get_node("thaw-a1").node
        assert after.state is NodeState.ACTIVE and after.lease_id == holder.lease_id
        assert (after.instance_id, after.incarnation) == (holder.instance_id, holder.incarnation)
        assert agents["successor"].poll() is None


def test_an_agent_told_to_join_a_network_that_does_not_exist_says_so_and_leaves(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    process = start_agent(cluster, agents, "nojoin-a1", "--join", "nojoin-no-such-network")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1, out
    assert "agent nojoin-a1 could not join network nojoin-no-such-network" in out and "Traceback" not in out, out
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        assert node_state(client, "nojoin-a1") is NodeState.LEFT  # deregistered, not left to expire


def test_a_stopped_agent_deregisters_and_cli_shows_the_unified_view(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    process = start_agent(cluster, agents, "stop-a1", "--label", "zone=eu")
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        wait_until(lambda: node_state(client, "stop-a1") is NodeState.ACTIVE, 20, "stop-a1 active")
        listed = json.loads(cpctl(cluster, "nodes", "list", "--label", "zone=eu", "--output", "json").stdout)
        assert [v["node"]["spec"]["id"] for v in listed] == ["stop-a1"]
        assert listed[0]["connectivity"] == "CONNECTED" and listed[0]["node"]["spec"]["role"] == "AGENT"
        servers = json.loads(cpctl(cluster, "nodes", "list", "--role", "server", "--output", "json").stdout)
        assert sorted(v["node"]["spec"]["id"] for v in servers) == sorted(cluster.nodes)
        roles = sorted(v["raft_role"] for v in servers)
        assert roles == ["follower", "follower", "leader"] and all(v["voter"] for v in servers)

        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0, out
        assert "deregistered" in out
        left = client.membership.get_node("stop-a1")
        assert left.node.state is NodeState.LEFT and left.node.lease_id == 0
        # Gone nodes are listed only when asked for.
        assert "stop-a1" not in cpctl(cluster, "nodes", "list").stdout
        assert "stop-a1" in cpctl(cluster, "nodes", "list", "--all").stdout
        assert client.membership.forget("stop-a1")
        assert node_state(client, "stop-a1") is None


def test_capacity_flags_and_bad_input(cluster: LocalCluster) -> None:
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.membership.set_flag("multi_network", True)
        client.membership.register_node("cap-a1", ttl_s=30)
        client.membership.heartbeat("cap-a1")
        client.membership.create_network("cap-net", "cap-model", 2)
        client.membership.join("cap-net", node_id="cap-a1")
        client.membership.join("cap-net", client_id="cap-c1")
        client.membership.join("cap-net", client_id="cap-c2")
        with pytest.raises(ResourceExhausted, match="cap-net"):
            client.membership.join("cap-net", client_id="cap-c3")
        with pytest.raises(FailedPrecondition, match="holds 2 clients"):
            client.membership.update_network("cap-net", max_clients=1)
        with pytest.raises(InvalidArgument, match="max_clients"):
            client.membership.create_network("cap-zero", "cap-model", 0)
        with pytest.raises(NotFound, match=r"register it again|no node"):
            client.membership.heartbeat("cap-never-registered")
        assert client.membership.deregister("cap-a1").moved == ()
        assert [p.client_id for p in client.membership.placements(network="cap-net")] == []

    # Through the CLI: a clear message and exit code, no traceback.
    off = cpctl(cluster, "flags", "set", "multi_network", "maybe")
    assert off.returncode == 2 and "on or off" in off.stderr
    flags = json.loads(cpctl(cluster, "flags", "list", "--output", "json").stdout)
    assert {f["name"]: f["enabled"] for f in flags}["multi_network"] is True
    bad = cpctl(cluster, "networks", "create", "bad name", "--model", "m", "--max-clients", "1")
    assert bad.returncode == 2 and "network name" in bad.stderr and "Traceback" not in bad.stderr

    # Raw gRPC: malformed registrations are INVALID_ARGUMENT before they reach the log.
    with channel(cluster.client_addresses[0]) as ch:
        stub = membership_pb2_grpc.MembershipStub(ch)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterNode(membership_pb2.RegisterNodeRequest(node=membership_pb2.NodeSpec(id="x", role=9)))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "role" in raised.value.details()  # type: ignore[attr-defined]


def test_heartbeats_are_answered_from_the_leaders_memory_and_checkpointed(cluster: LocalCluster) -> None:
    """A keepalive with no news costs no log entry (as etcd's); followers hand theirs to the leader, and
    the leader's periodic checkpoint brings every server's view of the node's liveness up to date."""
    leader = cluster.leader()
    follower = next(node for node in cluster.nodes.values() if node.id != leader.id)
    with (
        Client(leader.client_address, credentials=leader.credentials, timeout=10) as on_leader,
        Client(follower.client_address, credentials=follower.credentials, timeout=10) as on_follower,
    ):
        on_leader.membership.register_node("mem-a1", ttl_s=30)
        assert on_leader.membership.heartbeat("mem-a1") is NodeState.ACTIVE  # news: through the log
        start = on_leader.status().commit_index
        for _ in range(20):
            assert on_leader.membership.heartbeat("mem-a1") is NodeState.ACTIVE
            assert on_follower.membership.heartbeat("mem-a1") is NodeState.ACTIVE
        # 40 heartbeats; the log grew by a checkpoint or two at most (and whatever else ran meanwhile).
        assert on_leader.status().commit_index - start < 10
        beat = on_leader.membership.get_node("mem-a1").last_heartbeat_unix_ms
        wait_until(
            lambda: (
                on_follower.membership.get_node("mem-a1", consistency=Consistency.STALE).last_heartbeat_unix_ms
                >= beat - 100
            ),
            10,
            "the follower to see the checkpointed renewal",
        )
        # A heartbeat with news (an activity) still goes through the log, and every server sees it.
        on_follower.membership.heartbeat("mem-a1", activity="training")
        assert on_leader.membership.get_node("mem-a1").node.activity == "training"
        on_leader.membership.deregister("mem-a1")
        with pytest.raises(NotFound):
            on_leader.membership.heartbeat("mem-a1")


def test_an_agent_the_cluster_refuses_as_invalid_exits_instead_of_retrying(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]]
) -> None:
    """An INVALID_ARGUMENT answer cannot change on a retry: the agent exits 1 with the cluster's
    message (it retried every second for ever, logging a warning each time)."""
    process = start_agent(cluster, agents, "bad id with spaces")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "not started" in output and "agent_register_retry" not in output


def test_an_agent_reads_its_settings_from_a_file_and_the_environment(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """--config < CP_AGENT_* < flags given: what the agent registers shows where each value came from."""
    config = tmp_path / "agent.toml"
    config.write_text('capability = ["gpu", "fast"]\nlabel = ["zone=file", "rack=7"]\ngpus = 2\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "agent", "--config", str(config), "--id", "settings-a1",
         "--ttl", str(TTL_S), "--endpoints", ",".join(cluster.client_addresses)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1", "CP_AGENT_LABEL": "zone=env", "CP_AGENT_GPUS": ""},
    )  # fmt: skip
    agents["settings-a1"] = process
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        wait_until(lambda: node_state(client, "settings-a1") is NodeState.ACTIVE, 30, "the agent to be active")
        spec = client.membership.get_node("settings-a1").node.spec
    assert set(spec.capabilities) >= {"gpu", "fast"}  # the file
    assert dict(spec.labels) == {"zone": "env"}  # the environment replaces the file's list
    assert spec.resources.gpus == 2  # the file: an empty variable is unset
