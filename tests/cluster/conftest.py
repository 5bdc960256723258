"""Fixtures and invariant checks shared by the cluster tests.

Two kinds of cluster:

* ``cluster``: one 3-server cluster for the whole session, for tests that leave it whole (they
  may move leadership or write keys, always under their own prefix). Each test first waits until
  every server runs and agrees on a leader.
* ``make_cluster()``: a fresh cluster owned by one test, for tests that kill, restart or
  reconfigure servers. Stopped in teardown whatever happened.

When a test fails, the tail of every live server's log is attached to the report.

Waiting is always for a condition with a deadline (``wait_until``); never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.client import Client, Consistency, Credentials, KeyValue
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.state import levels
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, kv_pb2_grpc, watch_pb2, watch_pb2_grpc

T = TypeVar("T")

LOG_TAIL_LINES = 60
READY_TIMEOUT_S = 30.0

# Clusters whose processes may be running: their logs go into the report of a failing test.
_LIVE: list[LocalCluster] = []


# --------------------------------------------------------------------------------------- reporting


def log_tails(cluster: LocalCluster, lines: int = LOG_TAIL_LINES) -> str:
    parts = []
    for node in cluster.nodes.values():
        state = "running" if node.running else f"exited ({node.process and node.process.returncode})"
        try:
            tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"<cannot read {node.log_path}: {exc}>"]
        parts.append(f"----- {node.id} ({state}) {node.log_path}\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield  # type: ignore[misc]
    if report.failed:
        for cluster in _LIVE:
            report.sections.append((f"server logs ({cluster.data_dir})", log_tails(cluster)))
    return report  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that. RPC errors count as "not yet".

    On timeout the AssertionError names ``what``, the last result and ``detail()`` if given.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except (grpc.RpcError, ConnectionError, OSError) as exc:
            value, last = None, exc  # type: ignore[assignment]
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r}{extra})")
        time.sleep(interval)  # the poll interval of a condition wait, not a stand-in for one


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """``wait_until`` for coroutines: await ``check()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        value = await check()
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.05)  # the poll interval of a condition wait, not a stand-in for one


# --------------------------------------------------------------------------------------- raw access


def free_base_port(start: int) -> int:
    """A base port for ``cpctl dev --base-port`` whose client, Raft and metrics ports (BASE+1..,
    +101.., +201.. for 3 servers) are all free; scanned from ``start`` (offset by the pid, so two
    test runs at once pick different ones)."""
    for base in range(start + (os.getpid() % 50) * 300, 60000, 300):
        try:
            for port in [base + offset + i for offset in (0, 100, 200) for i in (1, 2, 3)]:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free base port")


def credentials_env(cluster: LocalCluster) -> dict[str, str]:
    """This process's environment without CP_* settings, plus CP_CACERT/CP_CERT/CP_KEY for ``cluster``:
    what a `cpctl` subprocess needs to reach it."""
    creds = cluster.credentials
    env = {key: value for key, value in os.environ.items() if not key.startswith("CP_")}
    files = (("CP_CACERT", creds.ca), ("CP_CERT", creds.cert), ("CP_KEY", creds.key))
    env.update({name: str(path) for name, path in files if path})
    return env


def cpctl(cluster: LocalCluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``cpctl ARGS --endpoints <the cluster>`` as a subprocess, its output captured as text."""
    env = credentials_env(cluster)
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args, "--endpoints", ",".join(cluster.client_addresses)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def cpctl_json(cluster: LocalCluster, *args: str) -> Any:
    """``cpctl ARGS --output json``, which must succeed; its parsed output."""
    done = cpctl(cluster, *args, "--output", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextlib.contextmanager
def channel(address: str) -> Iterator[grpc.Channel]:
    """A raw channel to a server's client port, with the credentials of the live cluster it belongs to."""
    with credentials_for(address).sync_channel_factory()(address) as ch:
        yield ch


def credentials_for(address: str) -> Credentials:
    """The client credentials of the live cluster serving ``address`` (none: plaintext)."""
    for cluster in _LIVE:
        if any(node.client_address == address for node in cluster.nodes.values()):
            return cluster.credentials
    return Credentials()


def kv_stub(ch: grpc.Channel) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(ch)


def watch_stub(ch: grpc.Channel) -> watch_pb2_grpc.WatchStub:
    return watch_pb2_grpc.WatchStub(ch)


def cluster_stub(ch: grpc.Channel) -> cluster_pb2_grpc.ClusterStub:
    return cluster_pb2_grpc.ClusterStub(ch)


def status(node: NodeProcess, timeout: float = 2.0) -> cluster_pb2.StatusResponse:
    return node.status(timeout=timeout)


def collect_events(
    address: str,
    from_revision: int,
    until_revision: int,
    prefix: str = "",
    domains: tuple[str, ...] = (),
    timeout: float = 15.0,
) -> list[watch_pb2.Event]:
    """Every matching event in [from_revision, until_revision] from one server's history (raw Watch)."""
    request = watch_pb2.WatchRequest(
        from_revision=from_revision, filter=watch_pb2.WatchFilter(key_prefix=prefix, domains=list(domains))
    )
    events: list[watch_pb2.Event] = []
    with channel(address) as ch:
        stream = watch_stub(ch).Watch(request, timeout=timeout)
        try:
            for message in stream:
                events.extend(e for e in message.events if e.revision <= until_revision)
                if message.revision >= until_revision:
                    return events
        finally:
            stream.cancel()
    raise AssertionError(f"the watch on {address} ended before revision {until_revision}")


def published_members(node: NodeProcess) -> set[str]:
    """Member ids in the replicated directory, as ``node`` has applied it (from the "cluster" history)."""
    applied = status(node).applied_revision
    members: set[str] = set()
    for event in collect_events(node.client_address, 1, applied, domains=("cluster",), timeout=5.0):
        if event.type == watch_pb2.EVENT_TYPE_PUT:
            members.add(event.key)
        else:
            members.discard(event.key)
    return members


# --------------------------------------------------------------------------------------- SDK helpers


def node_client(node: NodeProcess, timeout: float = 10.0) -> Client:
    """A client pinned to one server: every answer comes from that server (or fails)."""
    return Client(node.client_address, timeout=timeout, credentials=node.credentials)


def list_all(
    client: Client,
    prefix: str = "",
    *,
    consistency: Consistency = Consistency.LINEARIZABLE,
    min_revision: int = 0,
    page: int = 1000,
) -> dict[str, KeyValue]:
    """Every key under ``prefix`` (following pagination), by key."""
    out: dict[str, KeyValue] = {}
    start_after = ""
    while True:
        result = client.list(
            prefix, limit=page, start_after=start_after, consistency=consistency, min_revision=min_revision
        )
        for kv in result.kvs:
            assert kv.key not in out, f"list returned {kv.key!r} twice"
            out[kv.key] = kv
        if not result.more:
            return out
        assert result.kvs, "list said more keys follow but returned none"
        start_after = result.kvs[-1].key


def running(cluster: LocalCluster) -> list[NodeProcess]:
    return [node for node in cluster.nodes.values() if node.running]


def followers(cluster: LocalCluster, leader_id: str) -> list[NodeProcess]:
    return [node for node in running(cluster) if node.id != leader_id]


# ------------------------------------------------------------------------------------------ metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: NodeProcess) -> Samples:
    """Every sample a server's /metrics shows, by (name, sorted labels)."""
    text = httpx.get(f"http://{node.metrics_address}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is absent."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------------------- invariants


def loop_stalls(node: NodeProcess) -> float:
    """The server's count of Raft loop stalls (a gap between ticks longer than the shortest election
    timeout, once its journal was replayed)."""
    return value(scrape(node), "controlplane_raft_loop_stalls_total")


@dataclass
class ElectionWatch:
    """Watches a scenario meant to cause no election: :meth:`start` with the leader, then
    :meth:`assert_no_election`.

    A stall of the leader is the one excuse. The election timeout is 0.4-0.8 s, and on a loaded
    2-core machine a process sometimes does not run for that long; its followers then campaign, for
    a reason the scenario did not cause (CI saw a 2 s stall of every process). Only the leader's
    stalls count: a follower that stalled postpones its election (raft.py), so it cannot start one.
    When the leader stalled, the test cannot judge and warns instead of failing."""

    leader: NodeProcess
    term: int
    stalls: float

    @classmethod
    def start(cls, leader: NodeProcess) -> ElectionWatch:
        stalls = loop_stalls(leader)
        return cls(leader, status(leader).term, stalls)

    def assert_no_election(self, nodes: list[NodeProcess], what: str) -> None:
        """Every running server in ``nodes`` is still at the leader's term from :meth:`start`."""
        terms = {node.id: status(node).term for node in nodes if node.running}
        if terms == dict.fromkeys(terms, self.term):
            return
        stalled = loop_stalls(self.leader) - self.stalls
        if stalled:
            warnings.warn(
                f"{what}: terms {terms} moved from {self.term}, but {stalled:g} loop stall(s) of the leader "
                f"{self.leader.id} excuse it",
                stacklevel=2,
            )
            return
        raise AssertionError(
            f"{what}: an election ran (terms {terms}, expected {self.term}) and the leader {self.leader.id} "
            "did not stall"
        )


def wait_converged(cluster: LocalCluster, nodes: list[NodeProcess] | None = None, timeout: float = 20.0) -> int:
    """Wait until ``nodes`` (default: every running server) hold the same log and state: equal commit
    index, everything committed applied, equal applied revision. Returns that revision.

    Call only when no client is writing (linearizable reads append barriers too).
    """
    nodes = nodes if nodes is not None else running(cluster)

    def agreed() -> tuple[int] | None:
        views = [status(node) for node in nodes]
        positions = {(v.commit_index, v.applied_index, v.applied_revision) for v in views}
        if len(positions) == 1:
            commit, applied, revision = positions.pop()
            if commit == applied:
                return (revision,)  # a tuple, so that revision 0 still counts as agreement
        return None

    (revision,) = wait_until(agreed, timeout, f"{[n.id for n in nodes]} to converge on one log position")
    return revision


def assert_same_state(nodes: list[NodeProcess], revision: int, prefix: str = "") -> dict[str, KeyValue]:
    """Every server in ``nodes``, asked on its own at least at ``revision``, holds the same keys with the
    same values and revisions (the VerifyFSM check). Returns that key space."""
    states = {}
    for node in nodes:
        with node_client(node) as client:
            states[node.id] = list_all(client, prefix, consistency=Consistency.STALE, min_revision=revision)
    reference_id, reference = next(iter(states.items()))
    for node_id, state in states.items():
        if state != reference:
            only_here = sorted(set(state) - set(reference))[:5]
            only_there = sorted(set(reference) - set(state))[:5]
            changed = sorted(k for k in set(state) & set(reference) if state[k] != reference[k])[:5]
            raise AssertionError(
                f"{node_id} and {reference_id} disagree at revision {revision}: only on {node_id}: {only_here}, "
                f"only on {reference_id}: {only_there}, different: {changed}"
            )
    return reference


# --------------------------------------------------------------------------------------- clusters


def wait_ready(cluster: LocalCluster, timeout: float = READY_TIMEOUT_S) -> str:
    """Every running server agrees on a leader and has published itself in the member directory
    (so no directory write lands in the middle of a test). Returns the leader id."""
    leader_id = cluster.wait_for_leader(timeout)
    ids = {node.id for node in running(cluster)}
    wait_until(
        lambda: ids <= published_members(cluster.nodes[leader_id]), timeout, f"members {sorted(ids)} to be published"
    )
    return leader_id


def wait_for_level(cluster: LocalCluster, level: int = levels.APPLY_LEVEL, timeout: float = READY_TIMEOUT_S) -> None:
    """Every running server applies commands at cluster ``level`` (the leader raises it once every
    server has answered its health check at least once: a moment after a cluster starts)."""

    def at_level() -> bool:
        try:
            return all(status(node).cluster_level >= level for node in running(cluster))
        except grpc.RpcError:
            return False

    wait_until(at_level, timeout, f"cluster level {level} on every server")


def _resume_all(cluster: LocalCluster) -> None:
    # A SIGSTOPped server ignores SIGTERM until continued: never let a test's pause outlive it.
    for node in running(cluster):
        with contextlib.suppress(ProcessLookupError):
            assert node.pid is not None
            os.kill(node.pid, signal.SIGCONT)


@contextlib.contextmanager
def started_cluster(data_dir: Path, servers: int = 3, **options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(data_dir, servers=servers, **options)
    _LIVE.append(cluster)
    try:
        cluster.start()
        wait_ready(cluster)
        # The leader raises the cluster level a moment after the start (one write): let it land, so
        # that no test counting revisions sees it. A cluster held lower (apply_level) waits for that.
        wait_for_level(cluster, cluster.extra_config.get("apply_level") or levels.APPLY_LEVEL)
        yield cluster
    finally:
        try:
            _resume_all(cluster)
            cluster.stop()
        finally:
            _LIVE.remove(cluster)


@pytest.fixture(scope="session")
def _shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with started_cluster(tmp_path_factory.mktemp("shared-cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(_shared_cluster: LocalCluster) -> LocalCluster:
    """The session's 3-server cluster, whole and with an agreed leader."""
    for node in _shared_cluster.nodes.values():
        if not node.running:  # a previous test broke it; bring it back rather than fail this one
            _shared_cluster.restart(node.id)
    _shared_cluster.wait_for_leader(READY_TIMEOUT_S)
    return _shared_cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """A factory of fresh clusters owned by this test: ``make_cluster(servers=3, **LocalCluster options)``."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(servers: int = 3, **options: Any) -> LocalCluster:
            nonlocal count
            count += 1
            return stack.enter_context(started_cluster(tmp_path / f"cluster-{count}", servers, **options))

        yield make
