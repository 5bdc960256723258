"""One Watch per gateway, fanned out to every open console as server-sent events.

A browser never causes a call to the cluster by being open: the hub holds **one** ``Watch`` on the
domains the console shows and **one** status check every half second (a fresh one, which it keeps
in the gateway's shared status cache for every reader), and only while at least one console is
connected. Each console's subscription is a set of
"this domain changed, up to revision R" marks, not a queue: a slow browser coalesces any number of
changes into one mark per domain, so memory per console is bounded and nothing is ever dropped that
matters (a mark means "the page is stale"; the page then fetches the current state once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from controlplane import errors
from controlplane.client import ClusterStatus, Event

log = structlog.get_logger("gateway.console")

#: What the console shows, and so what its watch asks for ("kv" is not shown).
WATCHED_DOMAINS = ("membership", "ports", "models", "gossip", "cluster")
#: The pseudo-domain for changes of the cluster's status (leader, roles, health), which no watch carries.
STATUS = "status"
#: How often the hub asks for the cluster's status while a console is open (bypassing the status
#: cache's one second, and refreshing it): a killed leader shows within an election, this and the
#: page's own refresh (at most one a second, console.js).
STATUS_INTERVAL_S = 0.5
#: Wait before re-opening a watch that failed for a reason other than a transient one.
WATCH_RETRY_S = 2.0


class EventStream(Protocol):
    """What the hub needs of a watch (``AsyncClient.watch`` returns one)."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class Subscriber:
    """One open console: the domains changed since it last looked, with the latest revision each."""

    def __init__(self) -> None:
        self._marks: dict[str, int] = {}
        self._wake = asyncio.Event()

    def mark(self, domain: str, revision: int) -> None:
        self._marks[domain] = max(revision, self._marks.get(domain, 0))
        self._wake.set()

    async def changes(self, timeout: float) -> dict[str, int]:
        """The marks since the last call (empty after ``timeout`` seconds without any)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()
        marks, self._marks = self._marks, {}
        return marks


def status_digest(status: ClusterStatus) -> tuple[object, ...]:
    """What makes the Cluster page different: not the indexes, which every write moves (those are
    refreshed with any other change)."""
    members = tuple(sorted((m.id, m.role.name, m.healthy, m.voter) for m in status.members))
    return (status.leader_id, status.term, status.has_quorum, status.membership_change, status.ready, members)


class LiveHub:
    """Starts its watch and status loop with the first subscriber, stops them with the last."""

    def __init__(
        self,
        open_watch: Callable[[], EventStream] | None,
        status: Callable[[], Awaitable[ClusterStatus]],
        *,
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self._open_watch = open_watch
        self._status = status
        self._interval = status_interval_s
        self._subscribers: set[Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []
        #: Watches opened, for tests and the design's claim of one per gateway.
        self.watches_opened = 0
        #: The latest revision seen per domain while running (what SharedReads compares with).
        self.latest: dict[str, int] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._status_loop())]
            if self._open_watch is not None:
                self._tasks.append(asyncio.ensure_future(self._watch_loop(self._open_watch)))
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Synchronous, so that it can run in the ``finally`` of a stream being torn down; the
        loops' own ``finally`` close the watch once their cancellation is delivered."""
        self._subscribers.discard(subscriber)
        if not self._subscribers:
            for task in self._tasks:
                task.cancel()
            self._tasks = []

    async def close(self) -> None:
        """Stop the loops now and wait for them (tests; the app relies on unsubscribe)."""
        tasks, self._tasks = self._tasks, []
        self._subscribers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def publish(self, domain: str, revision: int) -> None:
        self.latest[domain] = max(revision, self.latest.get(domain, 0))
        for subscriber in self._subscribers:
            subscriber.mark(domain, revision)

    async def _watch_loop(self, open_watch: Callable[[], EventStream]) -> None:
        while True:
            try:
                stream = open_watch()
            except Exception as exc:  # no cluster yet (bootstrap), the backend's client closed
                log.info("console_watch_unavailable", error=str(exc))
                await asyncio.sleep(WATCH_RETRY_S)
                continue
            self.watches_opened += 1
            try:
                # The SDK's watch reconnects by itself through failovers, without losing or
                # repeating an event; it only ends when its client closes or on a lasting error.
                async for event in stream:
                    self.publish(event.domain, event.revision)
            except Exception as exc:  # the hub must outlive any one failure of its watch
                log.warning("console_watch_failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                await stream.aclose()
            await asyncio.sleep(WATCH_RETRY_S)

    async def _status_loop(self) -> None:
        last: tuple[object, ...] | None = None
        while True:
            try:
                status = await self._status()
                digest: tuple[object, ...] = status_digest(status)
                revision = status.applied_revision
            except errors.ControlPlaneError as exc:
                digest, revision = ("unavailable", type(exc).__name__), 0
            except Exception as exc:  # the hub must outlive any one failure of its status check
                log.warning("console_status_failed", error=f"{type(exc).__name__}: {exc}")
                digest, revision = ("unavailable", type(exc).__name__), 0
            if digest != last:
                if last is not None:
                    self.publish(STATUS, revision)
                last = digest
            await asyncio.sleep(self._interval)


T = TypeVar("T")


@dataclass
class _Read(Generic[T]):
    revision: int
    at: float
    result: asyncio.Future[T]


class SharedReads:
    """One cluster read per change, shared by every open console, instead of one per console.

    When the cluster changes, every open console showing that domain fetches its page again within
    the same second; for a 1,000-node Fleet each read costs the cluster ~0.3 s and the gateway the
    decoding. A read is shared by requests with the same key while (a) the hub is running, so its
    watch sees every change, (b) no change of the domain newer than the read's start has been seen,
    and (c) it is under ``ttl_s`` old. The read is linearizable and starts after the hub saw the
    revision it is stamped with, so a console told "changed at R" always gets a read that reflects
    R. Failures are not kept. Without open consoles every request reads for itself.
    """

    def __init__(self, hub: LiveHub, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._hub = hub
        self._ttl = ttl_s
        self._clock = clock
        self._reads: dict[Hashable, _Read[Any]] = {}
        #: Reads that went to the cluster (tests).
        self.fetches = 0

    async def get(self, domain: str, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        if not self._hub.subscribers:
            self._reads.clear()
            return await fetch()
        now = self._clock()
        seen = self._hub.latest.get(domain, 0)
        read = self._reads.get(key)
        if read is None or read.revision < seen or now - read.at >= self._ttl:
            self.fetches += 1
            read = _Read(seen, now, asyncio.ensure_future(fetch()))
            self._reads[key] = read
        try:
            # Shielded: one console going away must not cancel the read the others wait for.
            result: T = await asyncio.shield(read.result)
        except Exception:
            if self._reads.get(key) is read:
                del self._reads[key]
            raise
        return result
