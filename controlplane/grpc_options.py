"""gRPC channel and server options shared by the SDK and the servers (one place, one policy)."""

from __future__ import annotations

# Backups and forwarded batches can be large; a restore is bounded separately (state/limits.py).
MESSAGE_LIMIT_BYTES = 64 * 1024 * 1024

# Keepalive pings find a peer that hangs without closing its connections (SIGSTOP, a frozen VM, a
# partition) in about two seconds; without them a call to it waits out its whole deadline and a
# client never moves on to the new leader.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# The server side accepts those pings (by default gRPC answers frequent pings with GOAWAY), and
# refuses to share its port (gRPC sets SO_REUSEPORT by default: two servers could bind one port).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
)
