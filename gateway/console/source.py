"""What the console reads from the cluster: a narrow interface, and its implementation over the SDK.

The gateway's own :class:`gateway.models.Backend` serves the JSON API and has no gossip, port
statistics or model detail reads; rather than widen it for one consumer, the console names what it
needs here (interfaces belong to their consumer) and reads it through the same ``AsyncClient`` the gateway already
holds. Every read is linearizable: a page fetched after a live event reflects at least that event.
"""

from __future__ import annotations

from typing import Any, Protocol

from controlplane import errors
from controlplane.client import (
    AsyncClient,
    BandwidthMatrix,
    Conflict,
    GroupConfig,
    ModelDetail,
    ModelList,
    Network,
    NetworkDetail,
    NodeView,
    PortHistory,
    PortList,
    PortStats,
    ResolveResult,
    Round,
    SearchResult,
    UnplacedClient,
)
from gateway.console.hub import WATCHED_DOMAINS, EventStream

#: Training rounds drawn at most (the latest ones).
MAX_ROUNDS = 200


class ConsoleSource(Protocol):
    async def nodes(self, role: str | None, state: str | None, include_gone: bool) -> tuple[NodeView, ...]: ...

    async def networks(self) -> tuple[Network, ...]: ...

    async def network(self, name: str) -> NetworkDetail: ...

    async def unplaced(self, network: str) -> tuple[UnplacedClient, ...]: ...

    async def port_stats(self, host: str) -> PortStats: ...

    async def ports(self, host: str, service: str) -> PortList: ...

    async def conflicts(self, host: str) -> tuple[Conflict, ...]: ...

    async def port_history(self, service: str) -> PortHistory: ...

    async def resolution_plan(self, host: str) -> ResolveResult: ...

    async def search_models(self, query: str, limit: int) -> SearchResult: ...

    async def models(self, start_after: str, limit: int) -> ModelList: ...

    async def model(self, name: str) -> ModelDetail: ...

    async def groups(self) -> tuple[GroupConfig, ...]: ...

    async def latest_rounds(self, group: str) -> tuple[Round, ...]: ...

    async def bandwidth(self) -> BandwidthMatrix: ...

    def watch(self) -> EventStream: ...


class SdkSource:
    """:class:`ConsoleSource` over an ``AsyncClient`` (the gateway's, shared by every request)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def nodes(self, role: str | None, state: str | None, include_gone: bool) -> tuple[NodeView, ...]:
        kwargs: dict[str, Any] = {"include_gone": include_gone}
        if role:
            kwargs["role"] = role
        if state:
            kwargs["state"] = state
        return await self.client.membership.nodes(**kwargs)

    async def networks(self) -> tuple[Network, ...]:
        return await self.client.membership.networks()

    async def network(self, name: str) -> NetworkDetail:
        return await self.client.membership.get_network(name)

    async def unplaced(self, network: str) -> tuple[UnplacedClient, ...]:
        return await self.client.membership.unplaced(network=network)

    async def port_stats(self, host: str) -> PortStats:
        return await self.client.ports.stats(host=host)

    async def ports(self, host: str, service: str) -> PortList:
        return await self.client.ports.list(host=host, service=service)

    async def conflicts(self, host: str) -> tuple[Conflict, ...]:
        return await self.client.ports.conflicts(host=host)

    async def port_history(self, service: str) -> PortHistory:
        return await self.client.ports.history(service)

    async def resolution_plan(self, host: str) -> ResolveResult:
        # A dry run: it needs ports:read only, changes nothing and is not audited.
        return await self.client.ports.resolve_conflicts(host=host, dry_run=True)

    async def search_models(self, query: str, limit: int) -> SearchResult:
        return await self.client.models.search(query, limit=limit)

    async def models(self, start_after: str, limit: int) -> ModelList:
        return await self.client.models.list(start_after=start_after, limit=limit)

    async def model(self, name: str) -> ModelDetail:
        return await self.client.models.get(name)

    async def groups(self) -> tuple[GroupConfig, ...]:
        return await self.client.gossip.groups()

    async def latest_rounds(self, group: str) -> tuple[Round, ...]:
        try:
            latest = await self.client.gossip.round(group, 0)
        except errors.NotFound:
            return ()
        return await self.client.gossip.rounds(group, after=max(0, latest.number - MAX_ROUNDS), limit=MAX_ROUNDS)

    async def bandwidth(self) -> BandwidthMatrix:
        return await self.client.gossip.bandwidth()

    def watch(self) -> EventStream:
        return self.client.watch(domains=WATCHED_DOMAINS)
