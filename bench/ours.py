"""Our side of the bench: a 3-server LocalCluster, its KV.Put for the generator, and leader failover.

The cluster comes from ``controlplane.dev.LocalCluster`` (free loopback ports, a dev CA and mutual
TLS on the peer plane, the server defaults unless ``extra_config`` says otherwise, e.g.
``{"durability": "none"}`` for ``ours-nofsync``). Writes go through our KV service, carried on one
``Calls.Carry`` stream per server as the asyncio SDK sends them (``--ours-calls unary``: a gRPC call
each); the leader is found with Cluster.Status.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.common import WORK_DIR, log
from bench.load import CHANNEL_OPTIONS, VALUE_SIZE, System

OURS_DATA = WORK_DIR / "ours"


class OursUnavailable(RuntimeError):
    """Our cluster cannot be started (e.g. controlplane.dev is missing)."""


def import_ours() -> tuple[Any, Any, Any, Any, Any]:
    try:
        from controlplane.dev import LocalCluster
        from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc
    except ImportError as e:
        raise OursUnavailable(f"cannot import our cluster helper: {e}") from e
    return LocalCluster, cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc


def ours_put_fn(kv_pb2: Any):  # type: ignore[no-untyped-def]
    """put(stub, key, value) through our KV service; request_id is unique per op (keys are)."""
    run = uuid.uuid4().hex[:8]

    async def put(stub: Any, key: str, value: bytes) -> None:
        await stub.Put(kv_pb2.PutRequest(key=key, value=value, request_id=f"{run}:{key}"), timeout=10.0)

    return put


class CarriedStub:
    """The methods of a service's stub that the bench calls, carried as messages on the channel's
    ``Calls.Carry`` stream, as the asyncio SDK sends its unary calls (``controlplane/client/_calls.py``).
    ``methods``: name -> (request class, response class)."""

    def __init__(self, channel: grpc.aio.Channel, service: str, methods: dict[str, tuple[Any, Any]]) -> None:
        from controlplane.client._calls import CallCarrier, CarriedUnary

        carrier = CallCarrier(channel)
        for name, (request, response) in methods.items():
            path = f"/{service}/{name}"
            setattr(self, name, CarriedUnary.on(carrier, channel, path, request.SerializeToString, response.FromString))


def stub_factory_for(calls: str, service: str, methods: dict[str, tuple[Any, Any]], unary_stub: Any) -> Any:
    """How the generator's clients call us: ``carried`` (as the asyncio SDK) or ``unary`` (a gRPC
    call each, as the blocking SDK and generated stubs)."""
    if calls == "unary":
        return unary_stub
    return lambda channel: CarriedStub(channel, service, methods)


def ours_allocate_fn():  # type: ignore[no-untyped-def]
    """An op that allocates a port: Ports.Allocate for a fresh service, one host per client.

    The load generator hands every op a distinct key ``bench/<run>/<scenario>/<client>/<n>``; the
    client index picks the host (so no host's dynamic range fills during a run) and n the service.
    """
    from controlplane.v1 import ports_pb2

    run = uuid.uuid4().hex[:8]

    async def allocate(stub: Any, key: str, value: bytes) -> None:
        _, _, _, client, n = key.split("/")
        request = ports_pb2.AllocateRequest(host=f"bench-{run}-{client}", service=f"svc-{n}", request_id=f"{run}:{key}")
        await stub.Allocate(request, timeout=10.0)

    return allocate


def ours_allocate_system(cluster: Any, leader: str, calls: str = "carried") -> System:
    from controlplane.v1 import ports_pb2, ports_pb2_grpc

    allocate = {"Allocate": (ports_pb2.AllocateRequest, ports_pb2.AllocateResponse)}
    return System(
        name="ours",
        endpoints=list(cluster.client_addresses),
        leader=leader,
        stub_factory=stub_factory_for(calls, "controlplane.v1.Ports", allocate, ports_pb2_grpc.PortsStub),
        put=ours_allocate_fn(),
        server_pids=[n.pid for n in cluster.nodes.values() if n.pid is not None],
        extra={"client_calls": calls},
    )


def client_channel_factory(cluster: Any) -> Callable[[str], grpc.aio.Channel]:
    """Channels to ``cluster``'s client ports: TLS as its dev admin when it serves TLS, else plaintext."""
    if getattr(cluster, "client_tls", False):
        factory: Callable[[str], grpc.aio.Channel] = cluster.credentials.async_channel_factory()
        return factory
    return lambda address: grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def status_all(
    addresses: list[str],
    cluster_pb2: Any,
    cluster_pb2_grpc: Any,
    timeout: float = 1.0,
    channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
):
    """Cluster.Status from every address; None where a server does not answer."""
    make = channel_factory or (lambda a: grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS))
    channels = [make(a) for a in addresses]
    try:

        async def one(ch: grpc.aio.Channel) -> Any:
            try:
                return await cluster_pb2_grpc.ClusterStub(ch).Status(cluster_pb2.StatusRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                return None

        return await asyncio.gather(*(one(ch) for ch in channels))
    finally:
        for ch in channels:
            await ch.close()


async def wait_healthy(cluster: Any, cluster_pb2: Any, cluster_pb2_grpc: Any, timeout: float = 60.0) -> str:
    """Every server answers Status, all name the same leader, and the leader sees every member healthy.

    Returns the leader's client address.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    addresses = list(cluster.client_addresses)
    while time.monotonic() < deadline:
        resps = await status_all(
            addresses, cluster_pb2, cluster_pb2_grpc, channel_factory=client_channel_factory(cluster)
        )
        if all(r is not None for r in resps):
            leaders = {(r.leader_id, r.leader_address) for r in resps}
            if len(leaders) == 1:
                leader_id, leader_address = next(iter(leaders))
                lead = next((r for r in resps if r.node_id == leader_id), None)
                if (
                    leader_id
                    and lead is not None
                    and lead.role == cluster_pb2.ROLE_LEADER
                    and lead.has_quorum
                    and len(lead.members) == len(addresses)
                    and all(m.healthy for m in lead.members)
                ):
                    return leader_address
                last = f"leader {leader_id or '-'} not yet serving with every member healthy"
            else:
                last = f"servers disagree on the leader: {sorted(leaders)}"
        else:
            last = f"{sum(r is None for r in resps)} server(s) not answering Status"
        await asyncio.sleep(0.05)
    raise OursUnavailable(f"our cluster not healthy within {timeout}s ({last})")


# What each design choice buys (`--ablation`): the same cluster with one choice undone.
ABLATIONS: dict[str, dict[str, Any]] = {
    # Every command its own Raft log entry, no limit on entries in flight.
    "ours-no-group-commit": {"max_batch_commands": 1, "max_in_flight": 1_000_000},
    # pysyncobj's own append batching and its default 0.1 s period instead of sending at once.
    "ours-pysyncobj-default-periods": {"raft": {"pipeline_appends": False, "heartbeat_s": 0.1}},
}


def start_cluster(
    LocalCluster: Any, servers: int = 3, extra_config: dict[str, Any] | None = None, client_tls: bool = False
) -> Any:
    """Our cluster for the bench. Its client ports are plaintext unless ``client_tls``: etcd's are, and
    the comparison is like for like; ``ours-tls`` measures what TLS and authorization cost on top."""
    import shutil

    data = OURS_DATA / "cluster"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    cluster = LocalCluster(Path(data), servers=servers, extra_config=extra_config, client_tls=client_tls)
    return cluster


def ours_system(
    cluster: Any, leader: str, kv_pb2: Any, kv_pb2_grpc: Any, name: str = "ours", calls: str = "carried"
) -> System:
    put = {"Put": (kv_pb2.PutRequest, kv_pb2.PutResponse)}
    return System(
        name=name,
        endpoints=list(cluster.client_addresses),
        leader=leader,
        stub_factory=stub_factory_for(calls, "controlplane.v1.KV", put, kv_pb2_grpc.KVStub),
        put=ours_put_fn(kv_pb2),
        server_pids=[n.pid for n in cluster.nodes.values() if n.pid is not None],
        channel_factory=client_channel_factory(cluster),
        extra={"client_calls": calls},
    )


async def measure_failover(
    cluster: Any,
    cluster_pb2: Any,
    cluster_pb2_grpc: Any,
    kv_pb2: Any,
    kv_pb2_grpc: Any,
    *,
    op_timeout: float = 1.0,
    backoff: float = 0.015,
    settle_s: float = 1.0,
    give_up_s: float = 30.0,
) -> dict[str, Any]:
    """One repetition: a writer runs, the leader is kill -9'd, and we time the next acknowledged write.

    The writer sends sequential puts (unique request ids) to one endpoint and moves to the next one on
    any failure, after a short backoff. failover_s = ack time of the first write *sent* after the kill,
    minus the kill time. The killed node is restarted and the cluster waited healthy afterwards.
    """
    addresses = list(cluster.client_addresses)
    channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
    stubs = [kv_pb2_grpc.KVStub(ch) for ch in channels]
    value = b"f" * VALUE_SIZE
    run = uuid.uuid4().hex[:8]
    t_kill: float | None = None
    recovered = asyncio.get_running_loop().create_future()
    failures: dict[str, int] = {}
    stop = False

    async def writer() -> None:
        cur, n = 0, 0
        perf = time.perf_counter
        while not stop:
            key = f"bench/{run}/failover/{n}"
            n += 1
            t_send = perf()
            try:
                await stubs[cur].Put(
                    kv_pb2.PutRequest(key=key, value=value, request_id=f"{run}:{key}"), timeout=op_timeout
                )
            except grpc.aio.AioRpcError as e:
                if t_kill is not None:
                    failures[e.code().name] = failures.get(e.code().name, 0) + 1
                cur = (cur + 1) % len(stubs)
                await asyncio.sleep(backoff)
                continue
            t_ack = perf()
            if t_kill is not None and t_send > t_kill and not recovered.done():
                recovered.set_result((t_ack, addresses[cur]))

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(settle_s)  # the writer is in its steady state before the kill
        if task.done():
            task.result()
        resps = await status_all(
            addresses, cluster_pb2, cluster_pb2_grpc, channel_factory=client_channel_factory(cluster)
        )
        leader_addr = next((r.leader_address for r in resps if r is not None and r.leader_address), None)
        victim = next((nid for nid, node in cluster.nodes.items() if node.client_address == leader_addr), None)
        if victim is None:
            raise OursUnavailable(f"cannot map leader address {leader_addr!r} to a node")
        t_kill = time.perf_counter()
        cluster.kill(victim, sig=signal.SIGKILL)
        try:
            t_ack, via = await asyncio.wait_for(recovered, timeout=give_up_s)
            failover_s: float | None = t_ack - t_kill
        except TimeoutError:
            failover_s, via = None, None
    finally:
        stop = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for ch in channels:
            await ch.close()
    log(
        f"ours failover: killed leader {victim} ({leader_addr}); next ack after "
        f"{'timeout' if failover_s is None else f'{failover_s:.3f}s'} via {via}; failures {failures}"
    )
    cluster.restart(victim)
    await wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
    return {"victim": victim, "failover_s": failover_s, "failures": failures}


def summarize_failover(samples: list[dict[str, Any]], op_timeout: float) -> dict[str, Any]:
    values = [s["failover_s"] for s in samples if s["failover_s"] is not None]
    return {
        "scenario": "leader_failover",
        "system": "ours",
        "clients": 1,
        "repetitions": len(samples),
        "failover_s": round(statistics.median(values), 3) if values else None,  # the median
        "failover_s_median": round(statistics.median(values), 3) if values else None,
        "failover_s_max": round(max(values), 3) if values else None,
        "failover_s_samples": [None if v is None else round(v, 3) for v in (s["failover_s"] for s in samples)],
        "timeouts": sum(s["failover_s"] is None for s in samples),
        "op_timeout_s": op_timeout,
    }
