"""Prometheus metrics of one server, served on its metrics address at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RAFT_TERM = Gauge("controlplane_raft_term", "Current Raft term")
RAFT_ROLE = Gauge("controlplane_raft_role", "1 for the role this server holds now", ["role"])
RAFT_COMMIT_INDEX = Gauge("controlplane_raft_commit_index", "Raft commit index")
RAFT_APPLIED_INDEX = Gauge("controlplane_raft_applied_index", "Raft last applied index")
APPLIED_REVISION = Gauge("controlplane_applied_revision", "Revision of the locally applied state")
HAS_LEADER = Gauge("controlplane_has_leader", "1 when this server knows a leader")

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


AUDIT_WRITE_FAILURES = Counter(
    "controlplane_audit_write_failures_total",
    "Audit log lines that could not be written (full or failing disk); the calls themselves stood",
)
