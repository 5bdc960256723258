"""``registry_restart`` of `make bench`: how soon a restarted server serves again, with the registry full.

Run after the registry scenarios, on the same cluster (100,000 versions and more by then). One
follower is stopped (SIGTERM, then in a second line ``kill -9``) and started again on its data
directory; from the moment its process is spawned, it reports:

- ``ready_s``: until ``Cluster.Status`` says ready;
- ``read_s``: until it answers a LINEARIZABLE ``KV.Get`` itself (a read barrier through the leader);
- ``search_s``: until a LINEARIZABLE search *on that server* finds the last model of the bulk
  registration, at or past the revision the cluster had reached before the stop (its search index
  caught up);
- ``index``: what its log says of the search index: ``reused`` (caught up from the persisted index
  by revision) or ``rebuilt``;
- ``state_from``: ``journal`` when it replayed every entry since the cluster began (no log
  compaction had happened yet: one comes every 300 s or 20,000 entries, and the bench is often
  within its first minutes), ``dump and journal`` when it loaded a dump (its own, or one a leader
  sent it) and replayed only what followed;
- ``rss_mib``: its resident memory once it answers.

The issue's target is serving linearizable reads and search within 5 s of start at 100k versions
(``target_s``). Timings poll from outside every 20 ms, so they are up to that much late.
``tests/scale_restart.py`` runs the same measurement on a cluster of its own, by hand.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from bench.common import log, process_rss_bytes

T = TypeVar("T")

#: Serve linearizable reads and search within this long of a restart (the issue's target).
TARGET_S = 5.0
PROBE_KEY = "bench-restart/probe"
#: The longest a restarted server may take before the scenario gives up on it.
RESTART_TIMEOUT_S = 300.0


def poll(check: Callable[[], T | None], timeout: float, what: str, node: Any = None) -> T:
    """``check()`` until it returns something other than None; RPC errors count as "not yet".
    ``node``: the server polled; its exit ends the wait at once."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if node is not None and not node.running:
            raise RuntimeError(f"{what}: {node.id} exited (see {node.log_path})")
        try:
            result = check()
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        else:
            if result is not None:
                return result
        time.sleep(0.02)  # a measurement polling a process from outside
    raise TimeoutError(f"{what} not within {timeout:g} s ({last})")


def linearizable() -> Any:
    from controlplane.v1 import common_pb2

    return common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_LINEARIZABLE)


def search_finds(node: Any, model: str, revision: int) -> Callable[[], float | None]:
    """A check: a LINEARIZABLE search on ``node`` finds ``model`` at or past ``revision``."""
    from controlplane.v1 import models_pb2, models_pb2_grpc

    def check() -> float | None:
        with node.channel() as channel:
            response = models_pb2_grpc.ModelsStub(channel).Search(
                models_pb2.SearchRequest(read=linearizable(), query=model, limit=5), timeout=2.0
            )
        found = any(hit.model.name == model for hit in response.hits)
        return time.monotonic() if found and response.header.revision >= revision else None

    return check


def get_answers(node: Any) -> Callable[[], float | None]:
    """A check: ``node`` answers a LINEARIZABLE get of the probe key (it exists: it was written first)."""
    from controlplane.v1 import kv_pb2, kv_pb2_grpc

    def check() -> float | None:
        with node.channel() as channel:
            response = kv_pb2_grpc.KVStub(channel).Get(
                kv_pb2.GetRequest(key=PROBE_KEY, read=linearizable()), timeout=2.0
            )
        return time.monotonic() if response.found else None

    return check


def restart_log(node: Any, since: int) -> dict[str, int]:
    """How often the server's log since byte ``since`` says its search index was reused or rebuilt,
    and whether it loaded its state from a dump (else it replayed its whole journal)."""
    with open(node.log_path, "rb") as log_file:
        log_file.seek(since)
        text = log_file.read().decode(errors="replace")
    return {
        "reused": text.count("search_index_reused"),
        "rebuilt": text.count("search_index_rebuilt"),
        "dump_loaded": text.count("raft_dump_loaded"),
    }


def restart_and_time(cluster: Any, node_id: str, sig: int, model: str, revision: int) -> dict[str, Any]:
    """Stop ``node_id`` with ``sig``, start it again, and time it to ready, a read and a search."""
    node = cluster.nodes[node_id]
    cluster.kill(node_id, sig)
    log_size = node.log_path.stat().st_size
    spawned = time.monotonic()
    cluster.restart(node_id)

    def ready() -> float | None:
        return time.monotonic() if node.status(timeout=1.0).ready else None

    ready_at = poll(ready, RESTART_TIMEOUT_S, f"{node_id} ready", node)
    read_at = poll(get_answers(node), RESTART_TIMEOUT_S, f"a linearizable get on {node_id}", node)
    search_at = poll(
        search_finds(node, model, revision), RESTART_TIMEOUT_S, f"a linearizable search on {node_id}", node
    )
    said = restart_log(node, log_size)
    rss = process_rss_bytes(node.pid) if node.pid is not None else None
    return {
        "ready_s": round(ready_at - spawned, 2),
        "read_s": round(read_at - spawned, 2),
        "search_s": round(search_at - spawned, 2),
        "index": "rebuilt" if said["rebuilt"] else "reused" if said["reused"] else "unknown",
        # A dump is written every compaction_min_s (300 s) or compaction_min_entries (20,000): a
        # server restarted before its first replays its whole journal instead.
        "state_from": "dump and journal" if said["dump_loaded"] else "journal",
        "rss_mib": None if rss is None else round(rss / 2**20, 1),
    }


def bench_restart(cluster: Any, last_model: str, versions: int) -> list[dict[str, Any]]:
    """One line per way of stopping a follower (SIGTERM, kill -9), each restarted on its data; a
    restart that does not come back gives a line with its ``error`` instead."""
    from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc

    lines = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        line: dict[str, Any] = {"scenario": "registry_restart", "system": "ours", "signal": sig.name}
        line["versions"] = versions
        try:
            # The leader of now (it may have moved since the registry scenarios began).
            leader_id = cluster.wait_for_leader(timeout=60.0)
            leader = cluster.nodes[leader_id]
            with leader.channel() as channel:
                kv_pb2_grpc.KVStub(channel).Put(kv_pb2.PutRequest(key=PROBE_KEY, value=b"x"), timeout=30.0)
                status = cluster_pb2_grpc.ClusterStub(channel).Status(cluster_pb2.StatusRequest(), timeout=5.0)
            victim = next(n.id for n in cluster.nodes.values() if n.id != leader_id)
            log(f"registry restart: {victim} stopped with {sig.name} and started again")
            line.update(restart_and_time(cluster, victim, sig, last_model, status.applied_revision))
            log(
                f"registry restart ({sig.name}): ready {line['ready_s']} s, linearizable read {line['read_s']} s, "
                f"search {line['search_s']} s, index {line['index']}, state from the {line['state_from']}"
            )
        except Exception as exc:  # a finding of the run, reported in its line; the scenarios after it go on
            line["error"] = f"{type(exc).__name__}: {exc}"
            log(f"registry restart ({sig.name}) failed: {line['error']}")
        line["target_s"] = TARGET_S
        lines.append(line)
    return lines
