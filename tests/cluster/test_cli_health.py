"""`cpctl cluster health` and `cluster status --all` on real servers: 0 when whole, 1 naming the
server that is gone."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from controlplane.dev import LocalCluster

from .conftest import cpctl, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def test_health_passes_on_a_whole_cluster_and_names_a_killed_server(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(servers=3)
    leader = cluster.wait_for_leader(60)

    # Whole (once every member is caught up and seen healthy by the leader): exit 0.
    wait_until(lambda: cpctl(cluster, "cluster", "health").returncode == 0, 60, "cluster health to pass")
    every = cpctl(cluster, "cluster", "status", "--all", "--output", "json")
    assert every.returncode == 0, every.stderr
    views = json.loads(every.stdout)
    assert sorted(views) == ["n1", "n2", "n3"] and {v["leader_id"] for v in views.values()} == {leader}

    victim = next(node_id for node_id in cluster.nodes if node_id != leader)
    cluster.kill(victim, signal.SIGKILL)
    unhealthy = cpctl(cluster, "cluster", "health", "--output", "json")
    assert unhealthy.returncode == 1, unhealthy.stderr
    verdict = json.loads(unhealthy.stdout)
    assert not verdict["healthy"] and any(p.startswith(f"{victim} did not answer") for p in verdict["problems"])
    text = cpctl(cluster, "cluster", "status", "--all")
    assert text.returncode == 0 and f"{victim:<8} NOT ANSWERING" in text.stdout
