"""The Watch service: one stream of events per call, from a revision, across every domain."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from controlplane.errors import DeadlineExceeded
from controlplane.server import metrics
from controlplane.server.node import Node
from controlplane.server.services._shared import (
    WATCH_PROGRESS_EVERY_S,
)
from controlplane.state.machine import DOMAIN_KV
from controlplane.v1 import (
    watch_pb2,
    watch_pb2_grpc,
)


class WatchService(watch_pb2_grpc.WatchServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Watch(
        self, request: watch_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[watch_pb2.WatchResponse]:
        domains = set(request.filter.domains) or {DOMAIN_KV}
        types = set(request.filter.types)
        prefix = request.filter.key_prefix
        next_revision = self._node.watch_start(request.from_revision)
        metrics.WATCH_STREAMS.inc()
        try:
            # First message: where the stream starts, so a client can resume even before any event.
            yield watch_pb2.WatchResponse(revision=next_revision - 1)
            last_sent = time.monotonic()
            while True:
                # Nothing new within the progress interval is fine: a progress notice goes out below.
                with contextlib.suppress(DeadlineExceeded):
                    await self._node.wait_for_revision(next_revision, WATCH_PROGRESS_EVERY_S, ends_on_stop=True)
                events, _applied = self._node.watch_read(next_revision)
                if events:
                    # Every revision has exactly one event, so this covers every revision up to here.
                    next_revision = events[-1].revision + 1
                matched = [
                    event
                    for event in events
                    if event.domain in domains and event.key.startswith(prefix) and (not types or event.type in types)
                ]
                if matched or time.monotonic() - last_sent >= WATCH_PROGRESS_EVERY_S:
                    yield watch_pb2.WatchResponse(events=matched, revision=next_revision - 1)
                    last_sent = time.monotonic()
        finally:  # the client went away, cancelled, or the server is stopping
            metrics.WATCH_STREAMS.dec()
