"""gRPC channel and server options (one place, one policy): the control plane's, shared by the SDK and
the servers, and the gossip port's, shared by the model exchange and artifact replication."""

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


# The gossip port (gossip.exchange, gossip.artifacts): room for a 4 MiB artifact chunk or a model
# exchange chunk plus a header listing every tensor (~100 bytes each), or a 65,536-chunk manifest.
GOSSIP_MESSAGE_LIMIT_BYTES = 16 * 1024 * 1024

# Keepalive still finds a peer that hangs without closing its connection (SIGSTOP, frozen VM,
# partition) well before a round's deadline, but leniently: a ping's ack can queue behind megabytes
# of model data on a slow link, and a false positive would abort a healthy transfer.
GOSSIP_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", GOSSIP_MESSAGE_LIMIT_BYTES),
    ("grpc.max_receive_message_length", GOSSIP_MESSAGE_LIMIT_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)

# Accept those pings; refuse to share the port (gRPC sets SO_REUSEPORT by default).
GOSSIP_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", GOSSIP_MESSAGE_LIMIT_BYTES),
    ("grpc.max_receive_message_length", GOSSIP_MESSAGE_LIMIT_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
)
