"""Both event loops a server can run on (`event_loop`): uvloop, the default, which every other
cluster test uses, and the standard library's, kept working here: a cluster on it elects, takes
writes, loses its leader to kill -9 and converges."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster, NodeProcess

from .conftest import assert_same_state, running, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _loop_of(node: NodeProcess) -> str:
    for line in node.log_path.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "server_started":
            return str(json.loads(line)["event_loop"])
    raise AssertionError(f"{node.id} logged no server_started")


def test_servers_run_on_uvloop_by_default(cluster: LocalCluster) -> None:
    assert {node.id: _loop_of(node) for node in running(cluster)} == dict.fromkeys(cluster.nodes, "uvloop")


def test_a_cluster_on_the_standard_librarys_loop_survives_a_leader_kill(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(extra_env={"CP_EVENT_LOOP": "asyncio"})
    assert {node.id: _loop_of(node) for node in running(cluster)} == dict.fromkeys(cluster.nodes, "asyncio")
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        before = {f"loop/{i}": client.put(f"loop/{i}", b"before").revision for i in range(20)}
        old_leader = cluster.wait_for_leader()
        cluster.kill(old_leader, signal.SIGKILL)
        after = {f"loop/after-{i}": client.put(f"loop/after-{i}", b"after").revision for i in range(20)}
    assert cluster.wait_for_leader() != old_leader
    revision = wait_converged(cluster, running(cluster))
    state = assert_same_state(running(cluster), revision, "loop/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}
