"""What a domain table needs from the state machine it lives in."""

from __future__ import annotations

from typing import Protocol

from controlplane.v1 import gossip_pb2, kv_pb2, membership_pb2, models_pb2, ports_pb2, watch_pb2

#: The typed change a domain records (``Event.detail`` in watch.proto); None for a domain without one.
Detail = ports_pb2.PortEvent | models_pb2.ModelEvent | membership_pb2.MembershipEvent | gossip_pb2.GossipEvent | None


class Journal(Protocol):
    """The clock, the revision and the event log: every change bumps the revision by one event."""

    revision: int
    time_unix_ms: int
    #: What commands apply as (levels.py): below a feature's level, a table applies as before it.
    cluster_level: int

    def record_detail(self, domain: str, key: str, event_type: watch_pb2.EventType, detail: Detail) -> int: ...

    def record_change(
        self,
        domain: str,
        key: str,
        event_type: watch_pb2.EventType,
        kv: kv_pb2.KeyValue | None,
        prev_kv: kv_pb2.KeyValue | None,
        detail: Detail = None,
    ) -> int: ...
