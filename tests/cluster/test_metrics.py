"""The servers' Prometheus metrics move with what the cluster does: writes, a change of leader,
watch streams, failed proposals. Scraped from real servers' /metrics over HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import httpx
import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.v1 import kv_pb2, watch_pb2

from .conftest import channel, followers, kv_stub, running, scrape, value, wait_converged, wait_until, watch_stub

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_writes_and_a_leader_change_move_the_raft_metrics(cluster: LocalCluster) -> None:
    old_leader = cluster.wait_for_leader()
    target = followers(cluster, old_leader)[0]
    nodes = running(cluster)
    before = {node.id: scrape(node) for node in nodes}

    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        for i in range(5):
            client.put(f"metrics/write-{i}", b"x")
        leader_id, _ = client.transfer_leadership(target.id)
        assert leader_id == target.id
        client.put("metrics/after-transfer", b"x")
    revision = wait_converged(cluster)

    def moved(node: NodeProcess, name: str, **labels: str) -> float:
        return value(scrape(node), name, **labels) - value(before[node.id], name, **labels)

    # Sampled on the health beat (0.25 s): wait for the new leader to be seen everywhere.
    for node in nodes:
        wait_until(
            lambda n=node: moved(n, "controlplane_leader_changes_seen_total") >= 1, 20, f"{node.id} leader change"
        )
    wait_until(lambda: value(scrape(target), "controlplane_is_leader") == 1, 20, "the new leader's is_leader gauge")
    wait_until(lambda: value(scrape(cluster.nodes[old_leader]), "controlplane_is_leader") == 0, 20, "old leader's")

    # The old leader committed the first writes, the new one the last: each timed its commits.
    for leader in (cluster.nodes[old_leader], target):
        assert moved(leader, "controlplane_raft_commit_latency_seconds_count") >= 1, leader.id
    for node in nodes:
        after = scrape(node)
        assert moved(node, "controlplane_raft_apply_latency_seconds_count") >= 6, node.id
        assert moved(node, "controlplane_journal_fsync_duration_seconds_count") >= 1, node.id
        assert value(after, "controlplane_raft_term") > value(before[node.id], "controlplane_raft_term"), node.id
        wait_until(
            lambda n=node: value(scrape(n), "controlplane_applied_revision") >= revision, 20, f"{node.id} revision"
        )
        assert value(after, "controlplane_raft_applied_index") > value(
            before[node.id], "controlplane_raft_applied_index"
        )
        assert value(after, "controlplane_raft_log_index") >= value(after, "controlplane_raft_commit_index") > 0
        assert (
            value(after, "controlplane_data_dir_capacity_bytes")
            >= value(after, "controlplane_data_dir_available_bytes")
            > 0
        )
        peers = {labels for (name, labels), _ in after.items() if name == "controlplane_raft_peer_connected"}
        assert len(peers) == 2, (node.id, peers)  # the two other servers, never itself

    # Every server series the alert rules and the dashboard read is in a real server's scrape.
    exposed = {name for name, _labels in scrape(target)}
    used = set()
    for path in (OBSERVABILITY / "alerts.yml", OBSERVABILITY / "dashboard.json"):
        used |= set(re.findall(r"\bcontrolplane_\w+", path.read_text()))
    used = {name for name in used if not name.startswith("controlplane_gateway_")}
    assert used and used <= exposed, sorted(used - exposed)


def test_open_watch_streams_are_counted(cluster: LocalCluster) -> None:
    node = running(cluster)[0]
    open_before = value(scrape(node), "controlplane_watch_streams")
    with channel(node.client_address) as ch:
        stream = watch_stub(ch).Watch(watch_pb2.WatchRequest(), timeout=60)
        next(stream)  # the stream's first message: it is open on the server
        wait_until(lambda: value(scrape(node), "controlplane_watch_streams") == open_before + 1, 20, "watch counted")
        stream.cancel()
    wait_until(lambda: value(scrape(node), "controlplane_watch_streams") == open_before, 20, "watch uncounted")


def probe(node: NodeProcess, path: str) -> tuple[int, str]:
    """A plain-HTTP probe of the metrics port, as a kubelet makes it (no answer: status 0)."""
    try:
        answer = httpx.get(f"http://{node.metrics_address}{path}", timeout=5)
    except httpx.HTTPError as exc:
        return 0, str(exc)
    return answer.status_code, answer.text.strip()


def test_failed_proposals_are_counted_and_a_server_without_quorum_is_not_ready(make_cluster: object) -> None:
    """Proposals refused without a quorum are counted by reason; the metrics port's /readyz turns
    503 with the reason once a server cannot reach a majority, while /livez stays 200."""
    cluster = make_cluster(servers=3)  # type: ignore[operator]
    assert isinstance(cluster, LocalCluster)
    for node in running(cluster):
        wait_until(lambda n=node: probe(n, "/readyz") == (200, "ready"), 20, f"{node.id} ready")
        assert probe(node, "/livez") == (200, "ok")
    survivor, *others = running(cluster)
    for node in others:
        cluster.kill(node.id)
    _, reason = wait_until(
        lambda: (answer := probe(survivor, "/readyz"))[0] == 503 and answer, 30, "the survivor not ready"
    )
    assert reason.startswith("not ready: "), reason
    assert probe(survivor, "/livez") == (200, "ok")
    assert "controlplane_raft_term" in httpx.get(f"http://{survivor.metrics_address}/metrics", timeout=5).text
    before = scrape(survivor)
    with channel(survivor.client_address) as ch, pytest.raises(grpc.RpcError) as refused:
        kv_stub(ch).Put(kv_pb2.PutRequest(key="metrics/no-quorum", value=b"x"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    after = scrape(survivor)
    failed = {
        reason: value(after, "controlplane_proposal_failures_total", reason=reason)
        - value(before, "controlplane_proposal_failures_total", reason=reason)
        for reason in ("no_leader", "unavailable", "unknown_outcome", "shutdown")
    }
    assert sum(failed.values()) >= 1, failed
    assert failed["shutdown"] == 0, failed
