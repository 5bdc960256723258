"""One identity cannot hold more than ``max_streams_per_identity`` watches on a server: the next one
gets RESOURCE_EXHAUSTED with a message saying what to do, and a closed watch frees its place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from controlplane.dev import LocalCluster
from controlplane.v1 import watch_pb2, watch_pb2_grpc

from .conftest import channel, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

LIMIT = 3


def _open_watch(stub: watch_pb2_grpc.WatchStub) -> Any:
    """A watch stream, open once its first message (where it starts) has arrived."""
    call = stub.Watch(watch_pb2.WatchRequest(), timeout=120)
    next(call)
    return call


def test_watches_beyond_the_per_identity_limit_are_refused(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(servers=1, extra_config={"max_streams_per_identity": LIMIT})
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    with channel(address) as ch:
        stub = watch_pb2_grpc.WatchStub(ch)
        held = [_open_watch(stub) for _ in range(LIMIT)]
        with pytest.raises(grpc.RpcError) as refused:
            _open_watch(stub)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "admin" in refused.value.details() and "max_streams_per_identity" in refused.value.details()

        # Closing one gives its place back (the server notices the cancellation asynchronously).
        held.pop().cancel()

        def reopened() -> Any:
            try:
                return _open_watch(stub)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return None

        held.append(wait_until(reopened, 30, "a watch to open again once one was closed"))
        for call in held:
            call.cancel()


def test_watches_beyond_the_per_connection_limit_are_refused(make_cluster: Callable[..., LocalCluster]) -> None:
    """One connection carries at most ``max_streams_per_connection`` watches even when its identity may
    hold more: the next one on it is refused, the same identity opens it on another connection."""
    cluster = make_cluster(
        servers=1, extra_config={"max_streams_per_connection": LIMIT, "max_streams_per_identity": 4 * LIMIT}
    )
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    tls = cluster.credentials.channel_credentials()
    # A local subchannel pool: each channel its own TCP connection (gRPC shares them between equal channels).
    options = [("grpc.use_local_subchannel_pool", 1)]
    with (
        grpc.secure_channel(address, tls, options=options) as first,
        grpc.secure_channel(address, tls, options=options) as second,
    ):
        stub = watch_pb2_grpc.WatchStub(first)
        held = [_open_watch(stub) for _ in range(LIMIT)]
        with pytest.raises(grpc.RpcError) as refused:
            _open_watch(stub)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "connection" in refused.value.details() and "max_streams_per_connection" in refused.value.details()

        held += [_open_watch(watch_pb2_grpc.WatchStub(second)) for _ in range(LIMIT)]  # same identity, new connection
        for call in held:
            call.cancel()
