"""Prometheus metrics of one server, served on its metrics address at /metrics.

Names follow Prometheus conventions: a ``_total`` counter, a base unit in the name (``_seconds``,
``_bytes``). The list with what each one means for an operator is docs/observability.md; the alert
rules and the dashboard in deploy/observability/ use only these names (a test checks it).

The Raft path is hot: what it records is one histogram observe or counter increment per batch
(one log entry) or per fdatasync, never per command, and never a label lookup per call (the
labelled children used there are looked up once, below).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from controlplane.errors import NoLeader, Shutdown, UnknownOutcome

RAFT_TERM = Gauge("controlplane_raft_term", "Current Raft term")
RAFT_ROLE = Gauge("controlplane_raft_role", "1 for the role this server holds now", ["role"])
RAFT_COMMIT_INDEX = Gauge("controlplane_raft_commit_index", "Raft commit index")
RAFT_APPLIED_INDEX = Gauge("controlplane_raft_applied_index", "Raft last applied index")
RAFT_LOG_INDEX = Gauge("controlplane_raft_log_index", "Index of the last entry in this server's Raft log")
APPLIED_REVISION = Gauge("controlplane_applied_revision", "Revision of the locally applied state")
HAS_LEADER = Gauge("controlplane_has_leader", "1 when this server knows a leader")
IS_LEADER = Gauge("controlplane_is_leader", "1 while this server is the Raft leader")
LEADER_CLOCK_OFFSET = Gauge(
    "controlplane_leader_clock_offset_seconds",
    "On the leader: how far the time it stamps and decides deadlines by is ahead of its wall clock "
    "(negative: behind); away from 0 after a step of the wall clock, which it does not follow",
)
LEADER_CHANGES = Counter(
    "controlplane_leader_changes_seen_total",
    "Leaders this server has seen take office (a new term with a known leader, the first one included)",
)
PRE_VOTES = Counter(
    "controlplane_raft_pre_votes_total",
    "Pre-vote rounds this server started (result=started) and won, so that it campaigned (result=won)",
    ["result"],
)
LOOP_STALLS = Counter(
    "controlplane_raft_loop_stalls_total",
    "Gaps between two Raft ticks longer than the shortest election timeout, once the journal was replayed "
    "(a stopped process, a paused VM, an overloaded machine, a long step on the loop): a leader's followers "
    "may have campaigned meanwhile",
)
PEER_CONNECTED = Gauge(
    "controlplane_raft_peer_connected",
    "1 while this server holds a Raft connection to the peer at that Raft address",
    ["peer"],
)

# Latency buckets from 0.1 ms (a lone write on a fast disk) to 10 s (the commit timeout's order).
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

COMMIT_LATENCY = Histogram(
    "controlplane_raft_commit_latency_seconds",
    "Leader: from a batch handed to Raft to its entry being committed (a majority holds it durably)",
    buckets=_LATENCY_BUCKETS,
)
APPLY_LATENCY = Histogram(
    "controlplane_raft_apply_latency_seconds",
    "From the commit index covering an entry to the entry applied to the state machine",
    buckets=_LATENCY_BUCKETS,
)
FSYNC_DURATION = Histogram(
    "controlplane_journal_fsync_duration_seconds",
    "Duration of one fdatasync of the Raft journal (raft.wal)",
    buckets=_LATENCY_BUCKETS,
)

RENEWALS_VIA_LOG = Counter(
    "controlplane_lease_renewals_via_log_total",
    "Lease renewals (keepalives, node heartbeats, TTL passes) this server could not answer from memory "
    "and sent through the log, by why: not_leader, stalled (a leader frozen or stalled lately, or without "
    "a recent majority), not_ready, expiring (an expiry naming the lease is in flight), unknown (the log "
    "answers NOT_FOUND); none counted while in-memory renewals are off",
    ["reason"],
)
PROPOSAL_FAILURES = Counter(
    "controlplane_proposal_failures_total",
    "Commands whose proposal failed, by reason: no_leader and unavailable (not applied), "
    "unknown_outcome (may have been applied; the client retries with the same request id), shutdown",
    ["reason"],
)
# Children looked up once: the failure paths label nothing per call.
PROPOSAL_FAILED_NO_LEADER = PROPOSAL_FAILURES.labels(reason="no_leader")
PROPOSAL_FAILED_UNAVAILABLE = PROPOSAL_FAILURES.labels(reason="unavailable")
PROPOSAL_FAILED_UNKNOWN_OUTCOME = PROPOSAL_FAILURES.labels(reason="unknown_outcome")
PROPOSAL_FAILED_SHUTDOWN = PROPOSAL_FAILURES.labels(reason="shutdown")
PROPOSALS_QUEUED = Gauge(
    "controlplane_proposals_queued", "Commands waiting in this server's group-commit queue for a batch slot"
)

WATCH_STREAMS = Gauge("controlplane_watch_streams", "Watch streams open on this server")
LEASES_EXPIRED = Counter(
    "controlplane_leases_expired_total", "Leases this server expired while it was the leader (lease_expire commands)"
)
DATA_DIR_AVAILABLE = Gauge(
    "controlplane_data_dir_available_bytes", "Bytes available to this server on the file system of its data dir"
)
DATA_DIR_CAPACITY = Gauge("controlplane_data_dir_capacity_bytes", "Size of the file system holding the data dir")

BATCH_COMMANDS = Histogram(
    "controlplane_batch_commands",
    "Commands per group-commit batch (one Raft log entry, or one forward to the leader)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
REQUESTS = Counter("controlplane_grpc_requests_total", "gRPC requests handled", ["method", "code"])
LATENCY = Histogram(
    "controlplane_grpc_request_seconds",
    "gRPC request latency",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def set_role(role: str) -> None:
    for name in ("follower", "candidate", "leader", "learner"):
        RAFT_ROLE.labels(role=name).set(1 if name == role else 0)
    IS_LEADER.set(1 if role == "leader" else 0)


def count_failure(error: BaseException, commands: int) -> None:
    """Count ``commands`` proposals that failed with ``error`` (by its class)."""
    if isinstance(error, Shutdown):
        PROPOSAL_FAILED_SHUTDOWN.inc(commands)
    elif isinstance(error, NoLeader):
        PROPOSAL_FAILED_NO_LEADER.inc(commands)
    elif isinstance(error, UnknownOutcome):
        PROPOSAL_FAILED_UNKNOWN_OUTCOME.inc(commands)
    else:
        PROPOSAL_FAILED_UNAVAILABLE.inc(commands)


AUDIT_WRITE_FAILURES = Counter(
    "controlplane_audit_write_failures_total",
    "Audit log lines that could not be written (full or failing disk); the calls themselves stood",
)
AUDIT_WATCHERS = Gauge("controlplane_audit_watchers", "Auth.WatchAudit streams open on this server")
AUDIT_WATCH_SKIPPED = Counter(
    "controlplane_audit_watch_skipped_total",
    "Audit records a WatchAudit stream skipped because its reader fell behind (the file has them)",
)
