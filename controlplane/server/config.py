"""Server configuration: a TOML file, overridden by ``CP_*`` environment variables, overridden by flags.

Every field of ``ServerConfig`` is a setting (``controlplane/settings.py``, the model the gateway and
the agent share): ``name = value`` in the file, ``CP_<NAME>`` in the environment (``[raft]``'s
fields: ``CP_RAFT_<NAME>``; ``insecure_dev`` has none), checked against its type wherever it comes
from.

Example (see deploy/server.example.toml)::

    node_id = "n1"
    client_address = "0.0.0.0:7101"     # gRPC API
    raft_address = "10.0.0.1:7201"      # Raft peer port (mutual TLS): bound exactly, dialed by the other servers
    metrics_address = "0.0.0.0:7301"    # Prometheus /metrics
    data_dir = "/var/lib/controlplane"
    tls_ca = "/etc/controlplane/ca.pem"                  # the cluster CA (a bundle of old + new while rotating)
    tls_cert = "/etc/controlplane/server-n1.pem"         # cpctl certs issue n1 --role server
    tls_key = "/etc/controlplane/server-n1-key.pem"      # mode 0600, or the server refuses it
    durability = "fsync"                                 # "none" only for throwaway clusters
    peers = ["n2=10.0.0.2:7202,10.0.0.2:7102", "n3=10.0.0.3:7203,10.0.0.3:7103"]

Servers authenticate each other with certificates from the cluster CA (``cpctl certs``): each
certificate names its server's id, and a peer connection whose certificate does not name a
current member is closed. Without TLS files the server refuses to start unless ``insecure_dev``
is set, and then says so loudly. Key files come from config or ``CP_TLS_*`` variables, never
from the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import settings
from controlplane.state import levels, limits


class ConfigError(settings.SettingsError):
    """The configuration cannot work; the message says which setting and why."""


@dataclass(frozen=True)
class Peer:
    id: str
    raft_address: str
    client_address: str

    @classmethod
    def parse(cls, spec: str) -> Peer:
        """``ID=RAFT_ADDRESS,CLIENT_ADDRESS``, e.g. ``n2=127.0.0.1:7202,127.0.0.1:7102``."""
        peer_id, sep, addresses = spec.strip().partition("=")
        raft_address, comma, client_address = addresses.partition(",")
        if not sep or not comma:
            raise ConfigError(f"peer {spec!r} must look like ID=RAFT_HOST:PORT,CLIENT_HOST:PORT")
        peer = cls(peer_id.strip(), raft_address.strip(), client_address.strip())
        problem = (
            limits.check_member_id(peer.id)
            or limits.check_address(peer.raft_address, "peer raft address")
            or limits.check_address(peer.client_address, "peer client address")
        )
        if problem:
            raise ConfigError(f"peer {spec!r}: {problem}")
        return peer

    def spec(self) -> str:
        return f"{self.id}={self.raft_address},{self.client_address}"


@dataclass(frozen=True)
class RaftTuning:
    """pysyncobj timing. The defaults are tuned for loopback and LAN clusters (docs/operations.md).

    Group commit (our batching) replaces pysyncobj's append batching, so each batch is sent as
    soon as it is formed; ``heartbeat_s`` only paces idle heartbeats.
    """

    heartbeat_s: float = 0.05
    election_min_s: float = 0.4
    election_max_s: float = 0.8
    # How long a leader that hears from no majority keeps believing it leads (pysyncobj's
    # default is 30 s; a partitioned leader would answer stale reads for that long).
    leader_fallback_s: float = 1.6
    tick_s: float = 0.01
    # Send each append at once (our group commit already batches). False restores pysyncobj's
    # own batching: appends wait for the next heartbeat_s tick (measured in bench --ablation).
    pipeline_appends: bool = True
    connection_retry_s: float = 0.5
    # Ask before campaigning (controlplane/server/prevote.py): a server that only lost touch with a
    # healthy leader does not depose it. False restores pysyncobj's plain elections.
    pre_vote: bool = True
    compaction_min_entries: int = 20_000
    compaction_min_s: float = 300.0


@dataclass(frozen=True)
class ServerConfig:
    node_id: str
    client_address: str
    raft_address: str
    metrics_address: str
    data_dir: Path
    # What the other servers and clients dial to reach client_address; required when
    # client_address binds a wildcard (0.0.0.0 or [::]). Defaults to client_address.
    advertise_client_address: str = ""
    # The peer plane's mutual TLS: the cluster CA, this server's certificate and its key.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # No TLS on the peer plane (identities taken on a peer's word). Local experiments only.
    insecure_dev: bool = False
    # "fsync": the journal is fdatasync'ed before anything is acknowledged, voted or counted
    # towards a commit (the default). "none": never synced (survives kill -9, not a power cut).
    durability: str = "fsync"
    peers: tuple[Peer, ...] = ()
    # Joining an existing cluster: start with the current members as peers. The server runs as a
    # learner (a pysyncobj read-only node: it receives the log, never votes) until the leader,
    # after Cluster.AddMember, promotes it; from then on it starts as a voter (data_dir/raft.voter).
    join: bool = False
    log_level: str = "info"
    # Group commit: most commands and bytes in one log entry.
    max_batch_commands: int = 2048
    max_batch_bytes: int = 4 * 1024 * 1024
    # Batches outstanding at once; new commands wait and leave together as the next batch.
    max_in_flight: int = 2
    # How long a write may wait for its commit before the answer is "unknown outcome".
    commit_timeout_s: float = 10.0
    history_limit: int = 10_000
    # sys.setswitchinterval for the server process (docs/operations.md, "Tuning").
    gil_switch_interval_s: float = 0.001
    # Python's generation-0 collection threshold for the server process (docs/operations.md, "Tuning").
    gc_gen0_threshold: int = 50_000
    # The leader's leak-repair pass over port assignments (0: only on request, `cpctl ports repair`),
    # and how many passes in a row must see a leak before it is freed.
    ports_repair_interval_s: float = 60.0
    ports_repair_passes: int = 3
    # How often the leader looks for expired leases.
    lease_check_interval_s: float = 0.25
    # How often the leader writes the renewals it answered from memory into the log (followers' view
    # of liveness lags by at most this; 0 turns the in-memory renewals off: every keepalive is a write).
    lease_checkpoint_interval_s: float = 2.0
    # Membership autopilot (the leader's, after Consul's). A learner is promoted to voter once it
    # has been continuously healthy this long (Consul's ServerStabilizationTime, 10 s): long
    # enough that a server flapping on start or still replaying a snapshot never gets a vote.
    server_stabilization_s: float = 10.0
    # "Caught up" for a learner: at most this many log entries behind the leader's commit index
    # (Consul's MaxTrailingLogs, 250).
    max_trailing_logs: int = 250
    # Remove a voter the leader has not reached (Raft link down and Cluster.Status failing) for
    # this long; drop a learner unreachable this long. 0 = off, the default: a removal is
    # permanent (the id may never rejoin, the data must be wiped), and from the leader's seat a
    # dead machine, a partition and a long maintenance reboot look the same. Opt in with a value
    # longer than your longest planned outage.
    dead_server_cleanup_s: float = 0.0
    # Dead-server cleanup never leaves fewer voters than this (Consul's MinQuorum). 3: the
    # smallest cluster that still survives a failure is never shrunk by automation.
    min_quorum: int = 3
    raft: RaftTuning = field(default_factory=RaftTuning)
    # Where every changing call is written as one JSON line (who, method, resource, result code,
    # time). Default: data_dir/audit.log, created 0600.
    audit_log: Path | None = None
    # Serve the client port in plaintext although the peer plane has TLS files (callers without
    # credentials are then the admin, as with insecure_dev). Local tests only; loudly logged.
    insecure_client_port: bool = False
    # Requests per second per identity (user, agent) on this server, with bursts of
    # rate_limit_burst; over it a call gets RESOURCE_EXHAUSTED and cp-retry-after-ms. 0: off.
    rate_limit_per_identity: float = 0.0
    rate_limit_burst: float = 0.0
    # Server streams (Watch) one identity may hold open on this server at once; one more gets
    # RESOURCE_EXHAUSTED. Without it one client holding thousands of watches slows every caller. 0: off.
    max_streams_per_identity: int = 256
    # Server streams (Watch) one client connection may carry at once, whoever the caller; one more
    # gets RESOURCE_EXHAUSTED. Bounds a connection even for an identity allowed many streams. 0: off.
    max_streams_per_connection: int = 256
    # Calls.Carry streams (the asyncio SDK's one per server) one identity may hold on this server:
    # as many processes sharing an identity. Past it, such a client's calls go alone, each a gRPC
    # call of its own (about three times the server's CPU per call). 0: no limit.
    max_carry_streams_per_identity: int = 64
    # The event loop the server runs on: "uvloop" (libuv's) or "asyncio" (the standard library's).
    # uvloop: 22% more 64-client writes for 15% less server CPU per write (median of four
    # alternated runs, bench/README.md, round 5); "asyncio" is there for a platform without uvloop
    # (Windows) or to rule the loop out while chasing a problem.
    event_loop: str = "uvloop"
    # The highest cluster level this server reports (controlplane/state/levels.py); 0: all its
    # release applies. A lower number holds the whole cluster below the later levels' features,
    # as an older release would: rehearse a rolling upgrade, or keep a feature off until you choose.
    apply_level: int = 0

    def validate(self) -> None:
        problems = [
            limits.check_member_id(self.node_id),
            limits.check_address(self.client_address, "client_address"),
            limits.check_address(self.raft_address, "raft_address"),
            limits.check_address(self.metrics_address, "metrics_address") if self.metrics_address else None,
        ]
        for problem in problems:
            if problem:
                raise ConfigError(problem)
        if _is_wildcard(self.advertise_address):
            raise ConfigError(
                f"client_address {self.client_address} binds every interface, so the other servers cannot "
                "dial it: set advertise_client_address to this server's reachable HOST:PORT"
            )
        if self.advertise_client_address:
            problem = limits.check_address(self.advertise_client_address, "advertise_client_address")
            if problem:
                raise ConfigError(problem)
        if _is_wildcard(self.raft_address):
            raise ConfigError(
                f"raft_address {self.raft_address} must be this server's reachable address, not a wildcard: "
                "the other servers dial it"
            )
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            raise ConfigError("set all of tls_ca, tls_cert and tls_key (CP_TLS_CA, CP_TLS_CERT, CP_TLS_KEY), or none")
        if not all(tls) and not self.insecure_dev:
            raise ConfigError(
                "no TLS for the Raft peer plane: set tls_ca, tls_cert and tls_key (make them with "
                "`cpctl certs init` and `cpctl certs issue ID --role server`). Without them any host that "
                "reaches the peer port could join the cluster's Raft. "
                "For a throwaway local cluster pass --insecure-dev."
            )
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"event_loop must be 'uvloop' or 'asyncio', not {self.event_loop!r}")
        if not 0 <= self.apply_level <= levels.APPLY_LEVEL:
            raise ConfigError(
                f"apply_level {self.apply_level} is not one this release knows: 0 (all of it) or "
                f"{levels.BASE_LEVEL}-{levels.APPLY_LEVEL}"
            )
        if self.durability not in ("fsync", "none"):
            raise ConfigError(f"durability must be 'fsync' or 'none', not {self.durability!r}")
        if self.max_batch_bytes + 2 * limits.MAX_VALUE_BYTES > limits.RAFT_MAX_ENTRY_BYTES:
            raise ConfigError(
                f"max_batch_bytes must stay below {limits.RAFT_MAX_ENTRY_BYTES - 2 * limits.MAX_VALUE_BYTES} "
                "(a larger Raft entry hits a pysyncobj framing bug; see controlplane/state/limits.py)"
            )
        if self.ports_repair_interval_s < 0 or not 1 <= self.ports_repair_passes <= 100:
            raise ConfigError("ports_repair_interval_s must be >= 0 and ports_repair_passes within 1-100")
        if not 0.01 <= self.lease_check_interval_s <= 10:
            raise ConfigError("lease_check_interval_s must be within 0.01-10 seconds")
        if not (self.lease_checkpoint_interval_s == 0 or 0.1 <= self.lease_checkpoint_interval_s <= 60):
            raise ConfigError("lease_checkpoint_interval_s must be 0 (off) or within 0.1-60 seconds")
        if not 0 <= self.server_stabilization_s <= 3600:
            raise ConfigError("server_stabilization_s must be within 0-3600 seconds")
        if self.max_trailing_logs < 1:
            raise ConfigError("max_trailing_logs must be at least 1")
        if self.dead_server_cleanup_s != 0 and not 1 <= self.dead_server_cleanup_s <= 30 * 24 * 3600:
            raise ConfigError(
                "dead_server_cleanup_s must be 0 (off) or 1 s to 30 days: shorter than an election would remove "
                "servers that are merely slow"
            )
        if self.rate_limit_per_identity < 0 or self.rate_limit_burst < 0:
            raise ConfigError("rate_limit_per_identity and rate_limit_burst must be >= 0")
        if self.max_streams_per_identity < 0:
            raise ConfigError("max_streams_per_identity must be >= 0 (0: no limit)")
        if self.max_streams_per_connection < 0:
            raise ConfigError("max_streams_per_connection must be >= 0 (0: no limit)")
        if self.max_carry_streams_per_identity < 0:
            raise ConfigError("max_carry_streams_per_identity must be >= 0 (0: no limit)")
        if self.min_quorum < 1:
            raise ConfigError("min_quorum must be at least 1")
        ids = [peer.id for peer in self.peers]
        if self.node_id in ids:
            raise ConfigError(f"peers must not include this server ({self.node_id}) itself")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"peer ids must be unique: {ids}")
        addresses = [self.raft_address, *(peer.raft_address for peer in self.peers)]
        if len(set(addresses)) != len(addresses):
            raise ConfigError(f"raft addresses must be unique: {addresses}")

    @property
    def advertise_address(self) -> str:
        """The client address other servers and clients dial."""
        return self.advertise_client_address or self.client_address

    @property
    def audit_file(self) -> Path:
        return self.audit_log or self.data_dir / "audit.log"

    @property
    def journal_file(self) -> Path:
        return self.data_dir / "raft.wal"

    @property
    def legacy_journal_file(self) -> Path:
        """pysyncobj's own journal, as servers before the durable journal wrote it (migrated on start)."""
        return self.data_dir / "raft.journal"

    @property
    def dump_file(self) -> Path:
        return self.data_dir / "raft.dump"

    @property
    def voter_marker_file(self) -> Path:
        """Present once this server has been promoted: from then on it starts as a voter, even with ``join``."""
        return self.data_dir / "raft.voter"


def _is_wildcard(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("0.0.0.0", "::", "")


def load_config(
    config_file: Path | None, overrides: dict[str, Any], environ: dict[str, str] | None = None
) -> ServerConfig:
    """Merge defaults < file < environment < flags (``overrides``: only the flags actually given;
    None counts as not given). Every field of ``ServerConfig`` is a setting, ``CP_<NAME>`` in the
    environment and ``CP_RAFT_<NAME>`` for the ``[raft]`` table (``controlplane/settings.py``)."""
    environ = dict(os.environ) if environ is None else environ
    try:
        file_values = settings.read_file(config_file) if config_file is not None else {}
    except settings.SettingsError as exc:
        raise ConfigError(exc.message) from None
    retired = sorted({"raft_password", "raft_password_file"} & set(file_values))
    retired += sorted(name for name in ("CP_RAFT_PASSWORD", "CP_RAFT_PASSWORD_FILE") if environ.get(name))
    if retired:
        raise ConfigError(
            f"{', '.join(retired)} is no longer used: servers authenticate each other with certificates. "
            "Remove it and set tls_ca, tls_cert and tls_key (see `cpctl certs --help` and docs/operations.md)"
        )
    try:
        merged = settings.load(
            ServerConfig,
            prefix=ENV_PREFIX,
            file_values=file_values,
            file_name=str(config_file),
            environ=environ,
            flags={key: value for key, value in overrides.items() if value is not None},
            parsers={"peers": _peers},
            no_env=NO_ENV,
        )
    except settings.SettingsError as exc:
        raise ConfigError(exc.message) from None
    missing = [name for name in ("node_id", "client_address", "raft_address", "data_dir") if not merged.get(name)]
    if missing:
        raise ConfigError(f"missing setting(s): {', '.join(missing)} (flags, CP_* variables or the config file)")
    merged.setdefault("metrics_address", "")
    # One peer list for every server (a StatefulSet's shared config, a compose file): the entry
    # naming this server is its own, and is dropped once it agrees with this server's addresses.
    peers = list(merged.pop("peers", ()))
    for own in [peer for peer in peers if peer.id == merged["node_id"]]:
        if own.raft_address != merged["raft_address"]:
            raise ConfigError(
                f"peers list this server ({own.id}) at Raft address {own.raft_address}, but its raft_address is "
                f"{merged['raft_address']}: make them agree, or leave this server out of peers"
            )
        peers.remove(own)
    config = ServerConfig(**merged, peers=tuple(peers))
    config.validate()
    return config


#: ``CP_`` + a setting's name in capitals: ``CP_NODE_ID``, ``CP_RAFT_TICK_S``.
ENV_PREFIX = "CP_"
#: The one setting no variable sets: a variable inherited by accident must not turn the peer
#: plane's TLS off (the flag or the file only, each said loudly at start).
NO_ENV = frozenset({"insecure_dev"})


def _peers(value: Any, where: str, text: bool) -> tuple[Peer, ...]:
    """Peers as ``ID=RAFT_HOST:PORT,CLIENT_HOST:PORT`` strings (whitespace between them in the
    environment), or in the file also as tables with ``id``, ``raft_address`` and ``client_address``."""
    items = value.split() if isinstance(value, str) else value  # one string: whitespace between peers
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of ID=RAFT_HOST:PORT,CLIENT_HOST:PORT, got {value!r}")
    peers = []
    for item in items:
        if isinstance(item, dict) and set(item) == {"id", "raft_address", "client_address"}:
            item = f"{item['id']}={item['raft_address']},{item['client_address']}"
        if not isinstance(item, str):
            raise ConfigError(
                f"{where}: a peer is ID=RAFT_HOST:PORT,CLIENT_HOST:PORT or a table with id, raft_address and "
                f"client_address, not {item!r}"
            )
        try:
            peers.append(Peer.parse(item))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return tuple(peers)
