"""The gauges sampled from the Raft status on the health beat (controlplane/server/app.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from controlplane.server.app import _Sampler
from controlplane.server.consensus import RaftStatus

ME, PEER_A, PEER_B = "127.0.0.1:17201", "127.0.0.1:17202", "127.0.0.1:17203"


def raft_status(leader: str, term: int, connected: dict[str, bool]) -> RaftStatus:
    return RaftStatus(
        role="follower",
        leader_address=leader,
        term=term,
        commit_index=7,
        applied_index=7,
        log_index=9,
        log_size=100,
        has_quorum=True,
        connected={ME: True, **connected},
        match_index={},
    )


def sampler(tmp_path: Path) -> _Sampler:
    node: Any = SimpleNamespace(
        config=SimpleNamespace(data_dir=tmp_path, raft_address=ME), proposer=SimpleNamespace(queued=3)
    )
    return _Sampler(node)


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_leader_changes_count_each_new_leader_or_term_once(tmp_path: Path) -> None:
    beat = sampler(tmp_path)
    before = sample("controlplane_leader_changes_seen_total") or 0.0
    for leader, term in [("", 1), (PEER_A, 2), (PEER_A, 2), (PEER_A, 2), ("", 2), (PEER_B, 3), (PEER_B, 4)]:
        beat.sample(raft_status(leader, term, {PEER_A: True, PEER_B: True}))
    # No leader known is not a change; the same leader in a new term is (it won another election).
    assert sample("controlplane_leader_changes_seen_total") == before + 3


def test_peers_are_reported_without_this_server_and_forgotten_once_removed(tmp_path: Path) -> None:
    beat = sampler(tmp_path)
    beat.sample(raft_status(PEER_A, 2, {PEER_A: True, PEER_B: False}))
    assert sample("controlplane_raft_peer_connected", peer=PEER_A) == 1
    assert sample("controlplane_raft_peer_connected", peer=PEER_B) == 0
    assert sample("controlplane_raft_peer_connected", peer=ME) is None
    # PEER_B removed from the configuration: its series goes, so no "member down" alert stays behind.
    beat.sample(raft_status(PEER_A, 2, {PEER_A: True}))
    assert sample("controlplane_raft_peer_connected", peer=PEER_B) is None
    assert sample("controlplane_raft_peer_connected", peer=PEER_A) == 1
    assert sample("controlplane_raft_log_index") == 9
    assert sample("controlplane_proposals_queued") == 3
    capacity = sample("controlplane_data_dir_capacity_bytes")
    available = sample("controlplane_data_dir_available_bytes")
    assert capacity and available and capacity >= available > 0
