"""Run one server process: Raft node, gRPC API (with health and reflection) and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from controlplane.grpc_options import SERVER_OPTIONS
from controlplane.server import logs, metrics
from controlplane.server.audit import AuditLog
from controlplane.server.authz import Authorizer, RateLimiter
from controlplane.server.calls import CallsService
from controlplane.server.client_listener import add_client_port
from controlplane.server.config import ConfigError, ServerConfig
from controlplane.server.consensus import RaftStatus
from controlplane.server.interceptor import ErrorsAndMetrics, StreamLimiter
from controlplane.server.node import Node
from controlplane.server.probes import Readiness, serve_metrics_and_probes
from controlplane.server.services import Serving, add_services
from controlplane.v1 import calls_pb2, calls_pb2_grpc

log = structlog.get_logger("controlplane.server")

HEALTH_REFRESH_S = 0.25
SHUTDOWN_GRACE_S = 2.0


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_bindable(address: str, what: str) -> None:
    """Fail fast with a clear message instead of pysyncobj retrying a taken port forever."""
    host, port = _split(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{what} {address} cannot be bound: {exc.strerror}") from None


def run_on_loop(config: ServerConfig, main: Coroutine[Any, Any, None]) -> None:
    """Run the server's ``main`` to completion on the event loop ``config.event_loop`` names."""
    if config.event_loop == "asyncio":
        asyncio.run(main)
        return
    try:
        import uvloop
    except ImportError:
        main.close()
        raise ConfigError(
            'event_loop = "uvloop" but uvloop is not installed on this platform: install it, or set '
            'event_loop = "asyncio" (CP_EVENT_LOOP=asyncio)'
        ) from None
    uvloop.run(main)


def add_client_api(api: ErrorsAndMetrics, serving: Serving, health_servicer: health.aio.HealthServicer) -> None:
    """Register every method the client port serves with ``api``, the one handler that checks,
    measures and audits each call (ours, and grpcio's health and reflection services); the gRPC
    server is given ``api`` alone (interceptor.py says why). ``Calls.Carry`` carries the unary ones
    as messages of one stream, each resolved through ``api`` (calls.py)."""
    served = add_services(api, serving)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, api)
    calls_pb2_grpc.add_CallsServicer_to_server(CallsService(api, serving.node), api)
    names = (
        *served,
        calls_pb2.DESCRIPTOR.services_by_name["Calls"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), api)


async def serve(config: ServerConfig) -> None:
    # Raft ticks on the loop, but gRPC's own threads still take the GIL; with the default 5 ms
    # switch interval one of them can hold the loop up for milliseconds.
    sys.setswitchinterval(config.gil_switch_interval_s)
    # Every request allocates many short-lived objects; at the default threshold (700) generation-0
    # collections run thousands of times a second and their pauses show in the tail latency
    # (64-client p99 ~100 ms instead of ~190 ms, measured with bench; docs/operations.md).
    gc.set_threshold(config.gc_gen0_threshold, 20, 50)
    node = Node(config)
    logs.configure(config.node_id, config.log_level, lambda: _log_context(node))
    check_bindable(config.raft_address, "raft_address")
    check_bindable(config.client_address, "client_address")
    if config.metrics_address:
        check_bindable(config.metrics_address, "metrics_address")

    await node.start()
    # Read on every call: the machine is replaced when a snapshot is installed.
    plaintext = config.insecure_dev or config.insecure_client_port
    limiter = None
    if config.rate_limit_per_identity > 0:
        burst = config.rate_limit_burst or 2 * config.rate_limit_per_identity
        limiter = RateLimiter(config.rate_limit_per_identity, burst)
    authorizer = Authorizer(
        lambda: node.machine.auth,
        insecure_dev=plaintext,
        limiter=limiter,
        removed_servers=lambda: node.machine.directory.removed_members,
    )
    audit = AuditLog(config.audit_file, config.node_id)
    streams = StreamLimiter(config.max_streams_per_identity) if config.max_streams_per_identity else None
    per_connection = config.max_streams_per_connection
    connection_streams = StreamLimiter(per_connection, per="connection") if per_connection else None
    health_servicer = health.aio.HealthServicer()
    readiness = Readiness()  # /readyz on the metrics port: the health service's answer, in plain HTTP
    per_carrier = config.max_carry_streams_per_identity
    carriers = StreamLimiter(per_carrier, per="carrier") if per_carrier else None
    api = ErrorsAndMetrics(authorizer, audit, streams, connection_streams, carriers)
    add_client_api(api, Serving(node, authorizer, audit), health_servicer)
    server = grpc.aio.server(handlers=(api,), options=SERVER_OPTIONS)
    try:
        # check_bindable ran earlier, but another process can take a port in between.
        if config.insecure_client_port and not config.insecure_dev:
            log.warning(
                "client_port_insecure",
                client_address=config.client_address,
                detail="INSECURE: insecure_client_port serves the client port in plaintext; anyone who can "
                "reach it is treated as admin. For local tests only.",
            )
            server.add_insecure_port(config.client_address)
        else:
            add_client_port(server, config)
        await server.start()
        if config.metrics_address:
            host, port = _split(config.metrics_address)
            serve_metrics_and_probes(host, port, readiness)
    except (OSError, RuntimeError) as exc:
        audit.close()
        await node.stop()
        raise ConfigError(f"cannot listen on the client or metrics address: {exc}") from None
    log.info(
        "server_started",
        client_address=config.client_address,
        raft_address=config.raft_address,
        metrics_address=config.metrics_address,
        peers=[peer.spec() for peer in config.peers],
        data_dir=str(config.data_dir),
        insecure_dev=config.insecure_dev,
        durability=config.durability,
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    if config.durability != "fsync":
        log.warning(
            "durability_off",
            detail='durability = "none": the Raft journal is never fsynced; acknowledged writes survive kill -9 '
            "but not a power cut, and a server can forget its vote. Throwaway clusters only.",
        )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    refresher = asyncio.create_task(_refresh_health(node, health_servicer, readiness))
    # What exists now lives as long as the process: keep it out of every future collection.
    gc.freeze()
    await stopping.wait()

    log.info("server_stopping")
    readiness.set(False, "shutting down")
    refresher.cancel()
    await health_servicer.enter_graceful_shutdown()
    node.begin_stop()  # ends the watch streams now; every other call in flight has the grace to finish
    await server.stop(SHUTDOWN_GRACE_S)
    audit.close()
    await node.stop()
    log.info("server_stopped")


def _log_context(node: Node) -> dict[str, object]:
    try:
        return {"role": node.role(), "term": node.raft.term()}
    except AttributeError:  # before Raft has started
        return {}


async def _refresh_health(node: Node, health_servicer: health.aio.HealthServicer, readiness: Readiness) -> None:
    """SERVING (and /readyz 200) while this server knows a leader, reaches a majority and has caught
    up once; metrics on the same beat."""
    last = None
    sampler = _Sampler(node)
    while True:
        try:
            status = node.raft.status()
        except Exception:  # a status read must never kill the loop; not knowing is not ready
            readiness.set(False, "its Raft status cannot be read")
        else:
            try:
                caught_up = node.raft.is_ready()
            except Exception:  # as the status read
                caught_up = False
            # A server cut off from the majority (or removed from the cluster) still names its last
            # leader; it must not look healthy to a load balancer.
            serving = bool(status.leader_address) and status.has_quorum and caught_up
            # Set on every beat: its time is also what /livez reads.
            readiness.set(serving, "" if serving else _not_ready_reason(status))
            with contextlib.suppress(Exception):  # nor a metric or the health service
                metrics.RAFT_TERM.set(status.term)
                metrics.RAFT_COMMIT_INDEX.set(status.commit_index)
                metrics.RAFT_APPLIED_INDEX.set(status.applied_index)
                metrics.APPLIED_REVISION.set(node.machine.revision)
                metrics.HAS_LEADER.set(1 if status.leader_address else 0)
                metrics.set_role(status.role)
                if serving != last:
                    answers = health_pb2.HealthCheckResponse
                    state = answers.SERVING if serving else answers.NOT_SERVING
                    await health_servicer.set("", state)
                    await health_servicer.set("controlplane.v1.KV", state)
                    last = serving
                sampler.sample(status)
        await asyncio.sleep(HEALTH_REFRESH_S)


def _not_ready_reason(status: RaftStatus) -> str:
    """Why a server that is not serving is not: its leader, its quorum, or else its log."""
    if not status.leader_address:
        return "no leader known (an election, or no quorum)"
    if not status.has_quorum:
        return "cannot reach a majority of the voters"
    return "catching up with the leader's log"


class _Sampler:
    """The gauges read from the Raft status and the disk on the health beat (cheaper than keeping
    them current on the Raft path), and the leader changes seen."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._data_dir = str(node.config.data_dir)
        self._self = node.config.raft_address
        self._leader = ("", 0)  # (leader address, term) last counted
        self._peers: set[str] = set()

    def sample(self, status: RaftStatus) -> None:
        metrics.RAFT_LOG_INDEX.set(status.log_index)
        metrics.PROPOSALS_QUEUED.set(self._node.proposer.queued)
        # Sampled every HEALTH_REFRESH_S: two leaders within one period count once (not seen in
        # practice: an election takes longer than that).
        if status.leader_address and (status.leader_address, status.term) != self._leader:
            self._leader = (status.leader_address, status.term)
            metrics.LEADER_CHANGES.inc()
        peers = {peer: connected for peer, connected in status.connected.items() if peer != self._self}
        for peer, connected in peers.items():
            metrics.PEER_CONNECTED.labels(peer=peer).set(1 if connected else 0)
        for gone in self._peers - peers.keys():  # a removed member is not a member down
            metrics.PEER_CONNECTED.remove(gone)
        self._peers = set(peers)
        disk = os.statvfs(self._data_dir)
        metrics.DATA_DIR_AVAILABLE.set(disk.f_bavail * disk.f_frsize)
        metrics.DATA_DIR_CAPACITY.set(disk.f_blocks * disk.f_frsize)
