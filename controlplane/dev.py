"""Local clusters of real server processes on loopback: `cpctl dev`, the tests and the benchmarks.

Each server is a separate ``python -m controlplane serve`` process with its own data
directory and log file, so a test can kill -9 one and restart it exactly as an operator would.
A dev CA and a certificate per server are made once per data directory and kept in it
(``pki/``, keys mode 0600): a dev cluster's peer plane runs mutual TLS like a production one, and
restarting it keeps its state. ``insecure=True`` (``cpctl dev --insecure-dev``) runs without it.

The client port serves TLS too (``client_tls=True``, the default; controlplane/server/client_listener.py):
every client the cluster makes uses :attr:`LocalCluster.credentials`, the dev PKI's ``client:admin``
certificate (the bootstrap admin), and ``cpctl dev`` writes a client context for it (``client.toml``).
``client_tls=False`` runs the servers with ``insecure_client_port`` (TLS on the peer plane, plaintext
on the client port; each server logs it loudly), for the benchmarks' plaintext comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from controlplane.client._credentials import Credentials
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc

PKI_DIR = "pki"
MANIFEST_FILE = "cluster.json"
CLIENT_CONFIG_FILE = "client.toml"
ADMIN = "admin"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(taken: set[int] | None = None) -> int:
    """A bindable loopback port *below* the kernel's ephemeral range.

    bind(0) would hand out an ephemeral port, which the kernel also gives to the local end of
    outgoing connections: while a killed server is down, any client connection could take its
    port and the restart would fail with EADDRINUSE.
    """
    low = min(_ephemeral_range()[0], 32768)
    taken = taken if taken is not None else set()
    for _ in range(1000):
        port = secrets.randbelow(low - 10_000) + 10_000
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port found between 10000 and {low}")


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for ``preexec_fn`` that asks Linux to SIGKILL the child when its parent dies
    (prctl PR_SET_PDEATHSIG), or None where there is no prctl. Resolved here, in the parent: the
    child runs it between fork and exec, where importing or loading anything could deadlock on a
    lock another thread held at the fork."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_it() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return set_it


def dev_admin_credentials(data_dir: Path) -> Credentials:
    """The dev admin's client credentials for the cluster whose data dir is ``data_dir`` (its dev CA
    and ``client:admin`` certificate, issued when missing): usable before the cluster starts, for a
    gateway that must reach servers not yet running."""
    from controlplane import tls

    pki_dir = Path(data_dir) / PKI_DIR
    tls.ensure_dev_pki(pki_dir, [], [ADMIN])
    files = tls.TlsFiles.from_directory(pki_dir, tls.Identity("client", ADMIN))
    return Credentials(ca=files.ca, cert=files.cert, key=files.key)


@dataclass
class NodeProcess:
    id: str
    client_address: str
    raft_address: str
    metrics_address: str
    data_dir: Path
    log_path: Path
    peers: list[str] = field(default_factory=list)
    # Started with --join: a learner until the leader promotes it (after Cluster.AddMember).
    join: bool = False
    # Started with --gateway (instead of --peer): forms the cluster with --bootstrap-expect, or joins it.
    gateways: list[str] = field(default_factory=list)
    bootstrap_expect: int | None = None
    # More `cpctl serve` flags, appended as given (e.g. --force-new-cluster --yes).
    extra_args: list[str] = field(default_factory=list)
    # Prepended to the server's command line (e.g. `ip netns exec NS`); it must exec, not fork,
    # so that the process's pid is the server's (signals, kill -9).
    exec_prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    # What a client presents to this server's client port (no TLS: Credentials()).
    credentials: Credentials = field(default_factory=lambda: Credentials())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def channel(self) -> grpc.Channel:
        """A blocking channel to this server's client port, with the cluster's client credentials."""
        return self.credentials.sync_channel_factory()(self.client_address)

    def status(self, timeout: float = 1.0) -> cluster_pb2.StatusResponse:
        with self.channel() as channel:
            response: cluster_pb2.StatusResponse = cluster_pb2_grpc.ClusterStub(channel).Status(
                cluster_pb2.StatusRequest(), timeout=timeout
            )
            return response


def _toml(settings: dict[str, Any]) -> str:
    """Flat settings plus one level of tables ([raft]); JSON scalars are valid TOML scalars."""
    flat = [f"{key} = {json.dumps(value)}\n" for key, value in settings.items() if not isinstance(value, dict)]
    tables = [
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
        for name, table in settings.items()
        if isinstance(table, dict)
    ]
    return "".join(flat) + "".join(tables)


# Where server i (1..N) runs: the host it listens on, and the argv prefix that starts it there.
Placement = Callable[[int], tuple[str, list[str]]]


class LocalCluster:
    """N servers on 127.0.0.1. Ports are free ones unless ``base_port`` is given (then
    client = base+i, raft = base+100+i, metrics = base+200+i for server i = 1..N).

    ``placement`` puts servers elsewhere, e.g. each in a network namespace of its own (the fault
    suite's partitions): server i listens on its host and is started through its prefix; its dev
    certificate names that host.
    """

    def __init__(
        self,
        data_dir: Path,
        servers: int = 3,
        base_port: int | None = None,
        log_level: str = "info",
        extra_env: dict[str, str] | None = None,
        extra_config: dict[str, Any] | None = None,
        insecure: bool = False,
        client_tls: bool = True,
        die_with_parent: bool = False,
        placement: Placement | None = None,
    ) -> None:
        if servers < 1:
            raise ValueError("a cluster needs at least one server")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.insecure = insecure
        # `cpctl dev`: the servers get SIGKILL when the process that spawned them dies, even by
        # kill -9 (Linux PR_SET_PDEATHSIG). Only for spawns from a thread that lives as long as the
        # process: the signal fires when the spawning *thread* exits.
        self._preexec = _parent_death_signal() if die_with_parent else None
        self.client_tls = client_tls and not insecure
        self.log_level = log_level
        self.extra_env = extra_env or {}
        # Server settings without a flag (history_limit, max_batch_commands, ...): written to a
        # TOML file per server and passed with --config.
        self.extra_config = extra_config or {}
        self.nodes: dict[str, NodeProcess] = {}
        #: Servers taken out by :meth:`replace_server` (their logs are still worth reading).
        self.retired: list[NodeProcess] = []
        self._ports: set[int] = set()
        self._placement = placement
        for index in range(1, servers + 1):
            self.nodes[f"n{index}"] = self._new_node(f"n{index}", index, base_port)
        for node in self.nodes.values():
            node.peers = [self._peer_spec(other) for other in self.nodes.values() if other is not node]

    # ------------------------------------------------------------------ setup

    @property
    def pki_dir(self) -> Path:
        """The dev CA and the servers' and the admin client's certificates (``cpctl certs`` layout)."""
        return self.data_dir / PKI_DIR

    @property
    def credentials(self) -> Credentials:
        """What every client of this cluster presents: the dev admin certificate (``client:admin``) with
        the dev CA when the client port serves TLS, else nothing."""
        if not self.client_tls:
            return Credentials()
        return dev_admin_credentials(self.data_dir)

    def client(self, timeout: float = 10.0, **options: Any) -> Any:
        """A blocking SDK client for the running servers, with :attr:`credentials`."""
        from controlplane.client import Client

        return Client(self.client_addresses, timeout=timeout, credentials=self.credentials, **options)

    def async_client(self, timeout: float = 10.0, **options: Any) -> Any:
        """An asyncio SDK client for the running servers, with :attr:`credentials`."""
        from controlplane.client import AsyncClient

        return AsyncClient(self.client_addresses, timeout=timeout, credentials=self.credentials, **options)

    def write_client_config(self, context: str = "dev") -> Path:
        """A client config file (``DATA_DIR/client.toml``, mode 0600) whose context ``context`` reaches
        this cluster as the dev admin: ``CP_CONFIG=<it> cpctl ...``."""
        from controlplane.cli.contexts import ClientConfig, Context

        creds = self.credentials
        path = (self.data_dir / CLIENT_CONFIG_FILE).absolute()
        ctx = Context(
            context,
            tuple(self.client_addresses),
            creds.ca.absolute() if creds.ca else None,
            creds.cert.absolute() if creds.cert else None,
            creds.key.absolute() if creds.key else None,
        )
        ClientConfig(path, context, {context: ctx}).save()
        return path

    def _tls_env(self, node_id: str) -> dict[str, str]:
        """CP_TLS_* for one server, its certificate issued from the dev CA first if it has none."""
        if self.insecure:
            return {}
        from controlplane import tls

        host = self.nodes[node_id].client_address.rsplit(":", 1)[0]
        tls.ensure_dev_pki(self.pki_dir, [node_id], sans=sorted({"127.0.0.1", "localhost", host}))
        files = tls.TlsFiles.from_directory(self.pki_dir, tls.Identity("server", node_id))
        env = {"CP_TLS_CA": str(files.ca), "CP_TLS_CERT": str(files.cert), "CP_TLS_KEY": str(files.key)}
        if not self.client_tls:
            # The peer plane keeps its mutual TLS; only the client port is plaintext (the server logs it loudly).
            env["CP_INSECURE_CLIENT_PORT"] = "1"
        return env

    def _new_node(self, node_id: str, index: int, base_port: int | None) -> NodeProcess:
        if base_port is None:
            client, raft, metrics = free_port(self._ports), free_port(self._ports), free_port(self._ports)
        else:
            client, raft, metrics = base_port + index, base_port + 100 + index, base_port + 200 + index
        host, exec_prefix = self._placement(index) if self._placement else ("127.0.0.1", [])
        return self._node_at(node_id, f"{host}:{client}", f"{host}:{raft}", f"{host}:{metrics}", exec_prefix)

    def _node_at(
        self, node_id: str, client_address: str, raft_address: str, metrics_address: str, exec_prefix: list[str]
    ) -> NodeProcess:
        return NodeProcess(
            credentials=self.credentials,
            id=node_id,
            client_address=client_address,
            raft_address=raft_address,
            metrics_address=metrics_address,
            data_dir=self.data_dir / node_id,
            log_path=self.data_dir / f"{node_id}.log",
            exec_prefix=list(exec_prefix),
        )

    @staticmethod
    def _peer_spec(node: NodeProcess) -> str:
        return f"{node.id}={node.raft_address},{node.client_address}"

    @property
    def client_addresses(self) -> list[str]:
        return [node.client_address for node in self.nodes.values()]

    @property
    def endpoints(self) -> str:
        return ",".join(node.client_address for node in self.nodes.values() if node.running)

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        for node in self.nodes.values():
            if not node.running:
                self._spawn(node)
        self.write_manifest()

    def _spawn(self, node: NodeProcess) -> None:
        command = [
            *node.exec_prefix,
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            "--node-id",
            node.id,
            "--client-address",
            node.client_address,
            "--raft-address",
            node.raft_address,
            "--metrics-address",
            node.metrics_address,
            "--data-dir",
            str(node.data_dir),
            "--log-level",
            self.log_level,
        ]
        if node.gateways:
            command += ["--gateway", ",".join(node.gateways)]
            if node.bootstrap_expect is not None:
                command += ["--bootstrap-expect", str(node.bootstrap_expect)]
        else:
            for spec in node.peers:
                command += ["--peer", spec]
        if node.join:
            command.append("--join")
        if self.extra_config:
            config_file = self.data_dir / f"{node.id}.toml"
            config_file.write_text(_toml(self.extra_config))
            command += ["--config", str(config_file)]
        if self.insecure:
            command.append("--insecure-dev")
        command += node.extra_args
        env = {**os.environ, **self.extra_env, **self._tls_env(node.id)}
        with open(node.log_path, "ab") as log_file:
            node.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=self._preexec,
            )

    def kill(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        node = self.nodes[node_id]
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(sig)
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            self.kill(node_id, signal.SIGTERM)
        self._spawn(node)
        self.write_manifest()

    def _next_index(self) -> int:
        """The number of the next server's id: never one that a current or retired server had."""
        return max(int(node.id[1:]) for node in [*self.nodes.values(), *self.retired]) + 1

    def add_server(self) -> NodeProcess:
        """Start one more server in join mode, knowing the current members.

        It runs as a learner: admit it with Cluster.AddMember, and the leader promotes it to voter
        once it has caught up and stayed so for ``server_stabilization_s``. Servers that stopped
        (killed, or removed and exited) are not peers: a joining server only needs live members.
        """
        index = self._next_index()
        node = self._new_node(f"n{index}", index, None)
        node.peers = [self._peer_spec(other) for other in self.nodes.values() if other.running]
        node.join = True
        self.nodes[node.id] = node
        self._spawn(node)
        self.write_manifest()
        return node

    def replace_server(self, old_id: str) -> NodeProcess:
        """Start a server in join mode on the machine of ``old_id``, which was removed and stopped:
        the same addresses (and namespace, when placed), a new id and an empty data directory.

        A removed id may never rejoin, so the replacement takes the next free one (``n<max+1>``).
        The old server moves to :attr:`retired` (its log stays where it was); admit the new one
        with Cluster.AddMember as for :meth:`add_server`.
        """
        old = self.nodes[old_id]
        if old.running:
            raise RuntimeError(f"{old_id} is still running; remove and stop it before it is replaced")
        node = self._node_at(
            f"n{self._next_index()}", old.client_address, old.raft_address, old.metrics_address, old.exec_prefix
        )
        node.join = True
        node.peers = [self._peer_spec(other) for other in self.nodes.values() if other.running]
        del self.nodes[old_id]
        self.retired.append(old)
        self.nodes[node.id] = node
        self._spawn(node)
        self.write_manifest()
        return node

    def stop(self, timeout: float = 10.0) -> None:
        running = [node for node in self.nodes.values() if node.running]
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    # ------------------------------------------------------------------ observation

    def wait_for_leader(self, timeout: float = 30.0, among: list[str] | None = None) -> str:
        """Wait until every running server (or those in ``among``) names the same leader."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            ids = among or [node.id for node in self.nodes.values() if node.running]
            leaders = set()
            for node_id in ids:
                node = self.nodes[node_id]
                if not node.running:
                    raise RuntimeError(
                        f"{node_id} exited (code {node.process and node.process.returncode}); see {node.log_path}"
                    )
                try:
                    leaders.add(node.status(timeout=0.5).leader_id)
                except grpc.RpcError as exc:
                    last_error = f"{node_id}: {exc.code().name}"  # type: ignore[attr-defined]
                    leaders.add("")
            # Survivors keep naming a killed leader until their election timeout: not agreement.
            if len(leaders) == 1 and (leader := next(iter(leaders))) in ids:
                return leader
            last_error = f"leaders seen: {sorted(leaders)}" if leaders else last_error
            time.sleep(0.05)  # polling: servers offer no leader-change push to a process outside
        raise TimeoutError(f"no agreed leader within {timeout} s ({last_error})")

    def leader(self, timeout: float = 30.0) -> NodeProcess:
        return self.nodes[self.wait_for_leader(timeout)]

    def manifest(self) -> dict[str, object]:
        return {
            "endpoints": ",".join(self.client_addresses),
            "data_dir": str(self.data_dir),
            "pki": None if self.insecure else str(self.pki_dir),
            "credentials": {
                name: str(getattr(self.credentials, name).absolute())
                for name in ("ca", "cert", "key")
                if getattr(self.credentials, name) is not None
            },
            "servers": [
                {
                    "id": node.id,
                    "client_address": node.client_address,
                    "raft_address": node.raft_address,
                    "metrics_address": node.metrics_address,
                    "data_dir": str(node.data_dir),
                    "log": str(node.log_path),
                    "pid": node.pid,
                    "join": node.join,
                }
                for node in self.nodes.values()
            ],
        }

    def write_manifest(self) -> Path:
        path = self.data_dir / MANIFEST_FILE
        path.write_text(json.dumps(self.manifest(), indent=2) + "\n")
        return path

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
