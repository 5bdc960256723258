"""Recovery from a lost quorum (docs/operations.md, "Lost quorum"), with real processes.

Two of three servers are killed with SIGKILL and their data directories deleted: the cluster can
never elect a leader again. Then the two documented ways back, each ending with three voters:

* from the survivor's data directory (``cpctl serve --force-new-cluster``): every acknowledged write
  is back;
* from a backup (``cpctl cluster snapshot save`` earlier, ``snapshot restore --with-auth`` into a
  fresh server): every write acknowledged before the backup is back, and so are its users, roles
  and tokens.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.client import Client, Consistency, ControlPlaneError, FailedPrecondition, PermissionDenied
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.v1 import cluster_pb2

from .conftest import (
    assert_same_state,
    cpctl,
    cpctl_json,
    credentials_env,
    list_all,
    node_client,
    status,
    wait_converged,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

FAST_PROMOTION = {"server_stabilization_s": 1.0}
COMPACTING = {"raft": {"compaction_min_entries": 40}}
PREFIX = "recovery/"
UNACKNOWLEDGED = PREFIX + "no-quorum"


def _write(client: Client, prefix: str, count: int) -> dict[str, str]:
    written = {}
    for i in range(count):
        key, value = f"{prefix}{i:04d}", f"value-{prefix}{i}"
        client.put(key, value)  # returns only once committed: acknowledged
        written[key] = value
    return written


def _lose_for_good(cluster: LocalCluster, node_ids: list[str]) -> None:
    """kill -9, then the disk is gone too."""
    for node_id in node_ids:
        cluster.kill(node_id, signal.SIGKILL)
        shutil.rmtree(cluster.nodes[node_id].data_dir)


def _sole_leader(node: NodeProcess) -> bool:
    view = status(node)
    return view.role == cluster_pb2.ROLE_LEADER and view.has_quorum and view.ready


def _values(node: NodeProcess, prefix: str) -> dict[str, str]:
    with node_client(node) as client:
        return {key: kv.value.decode() for key, kv in list_all(client, prefix).items()}


def _admitted(client: Client, node: NodeProcess) -> bool:
    """Admit ``node``; False while another membership change is in flight (the leader may still be
    finishing the old members' removal after they left the directory: the answer says to retry)."""
    try:
        client.add_member(node.id, node.raft_address, node.client_address)
    except FailedPrecondition as exc:
        if "already in flight" not in exc.message:
            raise
        return False
    return True


def _grow_to_three(cluster: LocalCluster, seed: NodeProcess, gone: list[str]) -> list[NodeProcess]:
    """Start two new servers (--join, new ids), admit them, wait until all three are voters and agree."""
    with node_client(seed, timeout=20) as client:
        # The old members leave the directory first (the autopilot finishes their removal), one change
        # at a time: an AddMember meanwhile would be refused as a concurrent change.
        wait_until(
            lambda: not {m.id for m in status(seed).members} & set(gone),
            60,
            f"{gone} to be removed from the member directory",
            detail=lambda: [(m.id, m.voter) for m in status(seed).members],
        )
        added = []
        for _ in range(2):
            node = cluster.add_server()
            wait_until(lambda node=node: status(node), 30, f"the joining {node.id} to answer")
            wait_until(lambda node=node: _admitted(client, node), 60, f"{node.id} to be admitted")
            added.append(node)

    def three_voters() -> bool:
        members = status(seed).members
        return len(members) == 3 and all(m.voter and not m.learner and m.healthy for m in members)

    wait_until(three_voters, 90, "three healthy voters", detail=lambda: status(seed).members)
    return [seed, *added]


@pytest.mark.parametrize("compacting", [False, True], ids=["journal-only", "dump-and-journal"])
def test_a_survivor_forced_into_a_new_cluster_keeps_every_acknowledged_write(
    make_cluster: Callable[..., LocalCluster], compacting: bool
) -> None:
    """``compacting``: a full dump every 40 entries, so the survivor's state is a dump (holding the old
    configuration) plus the journal behind it; else the journal alone (--peer names the configuration)."""
    cluster = make_cluster(extra_config={**FAST_PROMOTION, **(COMPACTING if compacting else {})})
    survivor = cluster.nodes[cluster.wait_for_leader()]
    with node_client(survivor, timeout=20) as client:
        acknowledged = _write(client, PREFIX, 150)
    # At once, without waiting for the others: the survivor holds every acknowledged entry (it led),
    # some of them possibly beyond the commit index its journal recorded.
    gone = [node_id for node_id in cluster.nodes if node_id != survivor.id]
    _lose_for_good(cluster, gone)
    # Without a quorum no write is acknowledged. This one reached the survivor's log, so it may come
    # back (every entry of the survivor's log is kept, docs/operations.md): it must never be half there.
    with node_client(survivor, timeout=2) as client, pytest.raises(ControlPlaneError):
        client.put(UNACKNOWLEDGED, "x")
    cluster.kill(survivor.id, signal.SIGTERM)
    assert survivor.data_dir.joinpath("raft.dump").exists() == compacting

    survivor.extra_args = ["--force-new-cluster", "--yes"]  # its --peer flags still name the dead servers
    cluster.restart(survivor.id)
    wait_until(lambda: _sole_leader(survivor), 60, f"{survivor.id} to lead a cluster of its own")
    assert "forced_new_cluster" in survivor.log_path.read_text()

    values = _values(survivor, PREFIX)
    assert values.get(UNACKNOWLEDGED) in (None, "x")
    assert {key: values.get(key) for key in acknowledged} == acknowledged, "an acknowledged write was lost"
    with node_client(survivor, timeout=20) as client:
        after = _write(client, PREFIX + "after/", 20)

    # Restarted as usual (the flag dropped, the old --peer flags kept): still a cluster of its own.
    survivor.extra_args = []
    cluster.restart(survivor.id)
    wait_until(lambda: _sole_leader(survivor), 60, f"{survivor.id} to lead again after a plain restart")

    nodes = _grow_to_three(cluster, survivor, gone)
    with node_client(survivor, timeout=20) as client:
        more = _write(client, PREFIX + "grown/", 20)
    revision = wait_converged(cluster, nodes)
    state = assert_same_state(nodes, revision, PREFIX)
    state.pop(UNACKNOWLEDGED, None)
    assert {key: kv.value.decode() for key, kv in state.items()} == {**acknowledged, **after, **more}
    removed = set(status(survivor).removed_member_ids)
    assert removed >= set(gone), "the old members' ids must be barred"


def test_force_new_cluster_is_refused_while_the_quorum_is_there(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    revision_before = wait_converged(cluster)
    node = cluster.nodes["n3"]
    cluster.kill(node.id, signal.SIGTERM)
    node.extra_args = ["--force-new-cluster", "--yes"]
    cluster.restart(node.id)
    assert node.process is not None
    assert node.process.wait(60) == 2
    log = node.log_path.read_text()
    assert "refusing --force-new-cluster" in log and "has its quorum" in log, log[-2000:]

    # Without --yes and no terminal: refused before anything is touched.
    node.extra_args = ["--force-new-cluster"]
    cluster.restart(node.id)
    assert node.process is not None
    assert node.process.wait(60) == 2
    assert "without --yes" in node.log_path.read_text()

    # Nothing was changed: it rejoins its cluster as it was.
    node.extra_args = []
    cluster.restart(node.id)
    wait_converged(cluster, timeout=60)
    assert status(node).applied_revision >= revision_before
    assert {m.id for m in status(node).members if m.voter} == {"n1", "n2", "n3"}


def test_a_new_cluster_from_a_backup_holds_the_backed_up_state(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    old = make_cluster()
    with old.client(timeout=20) as client:
        backed_up = _write(client, PREFIX, 100)
    # A user who may read PREFIX, and a token for him: the backup carries them, and --with-auth
    # brings them back with the data.
    for args in (("users", "add", "bob"), ("roles", "add", "reader"), ("users", "grant", "bob", "reader")):
        done = cpctl(old, *args)
        assert done.returncode == 0, done.stderr
    done = cpctl(old, "roles", "grant-permission", "reader", "kv", "read", PREFIX)
    assert done.returncode == 0, done.stderr
    bobs_token = cpctl_json(old, "tokens", "create", "bob")["token"]
    backup = tmp_path / "backup.snap"
    env = credentials_env(old)
    saved = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "cluster",
            "snapshot",
            "save",
            str(backup),
            "--endpoints",
            old.endpoints,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert saved.returncode == 0, saved.stderr
    with old.client(timeout=20) as client:
        _write(client, PREFIX + "after-backup/", 10)  # lost with the cluster: not in the backup
    _lose_for_good(old, ["n2", "n3"])
    old.stop()

    new = make_cluster(servers=1, extra_config=FAST_PROMOTION)
    seed = new.nodes["n1"]
    wait_until(lambda: _sole_leader(seed), 60, "the fresh server to lead")
    restored = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "cluster",
            "snapshot",
            "restore",
            str(backup),
            "--yes",
            "--with-auth",
            "--endpoints",
            new.endpoints,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=credentials_env(new),
    )
    assert restored.returncode == 0, restored.stderr
    assert _values(seed, PREFIX) == backed_up
    # The audit log says this restore replaced the users and tokens, not only the data.
    audit = [json.loads(line) for line in (seed.data_dir / "audit.log").read_text().splitlines()]
    restores = [line for line in audit if line["method"] == "/controlplane.v1.Cluster/Restore"]
    assert [(line["resource"], line["code"]) for line in restores] == [("with-auth", "OK")]
    # Bob's token from the old cluster is good on the new one, for what his role allows only (a token
    # rides on a TLS connection with a client certificate; the token names the caller).
    as_bob = dataclasses.replace(new.credentials, token=bobs_token)
    with Client(new.client_addresses, credentials=as_bob, timeout=20) as client:
        assert client.get(PREFIX + "0000") is not None
        with pytest.raises(PermissionDenied):
            client.put(PREFIX + "by-bob", "x")
    with node_client(seed, timeout=20) as client:
        after = _write(client, PREFIX + "restored/", 10)

    nodes = _grow_to_three(new, seed, [])
    revision = wait_converged(new, nodes)
    state = assert_same_state(nodes, revision, PREFIX)
    assert {key: kv.value.decode() for key, kv in state.items()} == {**backed_up, **after}
    with node_client(nodes[-1]) as client:
        assert client.get(PREFIX + "0000", consistency=Consistency.LINEARIZABLE) is not None
