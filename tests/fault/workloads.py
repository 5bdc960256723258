"""The clients: each one an ``AsyncClient`` over every endpoint, recording what it saw in a History.

* ``Registers``: a few keys, read (linearizable get) / write (put) / compare-and-swap, every value
  unique, so the checker can tell which write a read saw.
* ``SetAdds``: each client puts fresh keys under a prefix; the final listing must hold every
  acknowledged one and nothing never attempted.
* ``Ports``: ``ports.allocate`` then ``ports.release`` of a fresh service on one host, in a small
  range, so ports are handed out again and again; no port may be held by two services at once.
* ``Leases``: holders take turns on one port, each holding it under a lease of its own that it
  keeps alive, then revokes or abandons to expiry (the lock pattern of etcd's ``concurrency.Mutex``);
  no holder may be handed the port while another's lease is still alive.
* ``Watchers``: SDK watches on the run's prefix from its first revision; each must deliver every
  revision once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane import errors
from controlplane.client import AsyncClient, AsyncWatch, Credentials

from .history import FAIL, INFO, OK, History, Op, completion_type

T = TypeVar("T")

#: The SDK call deadline: long enough that a failover plus a hung attempt (3 s) fits in it.
CALL_TIMEOUT_S = 10.0


class Processes:
    """Process ids, shared by every workload of a run: a process that saw ``info`` is retired."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def new(self) -> int:
        return next(self._next)


@dataclass
class Context:
    history: History
    endpoints: list[str]
    prefix: str
    processes: Processes
    rng: random.Random
    stop: asyncio.Event
    #: Between two operations a client waits up to this long (the offered load, not a condition).
    think_s: float = 0.01
    #: Each call's SDK deadline; shorter than a fault, it turns operations into unknown outcomes.
    call_timeout: float = CALL_TIMEOUT_S
    #: What every client presents (the cluster's; none for a plaintext client port).
    credentials: Credentials = field(default_factory=Credentials)


async def record(
    ctx: Context,
    process: int,
    workload: str,
    f: str,
    key: str,
    value: Any,
    call: Awaitable[T],
    outcome: Callable[[T], tuple[Any, int, dict[str, Any]]],
) -> Op:
    """Await ``call`` as one operation; ``outcome`` turns its return into (result, revision, extra)."""
    op = ctx.history.invoke(process, workload, f, key, value)
    try:
        returned = await call
    except asyncio.CancelledError:
        ctx.history.complete(op, INFO, error="cancelled")
        raise
    except Exception as exc:  # the SDK's typed errors; anything else is an unknown outcome too
        ctx.history.complete(op, completion_type(exc), error=f"{type(exc).__name__}: {exc}")
        return op
    result, revision, extra = outcome(returned)
    ctx.history.complete(op, OK, result, revision=revision, **extra)
    return op


async def _think(ctx: Context, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, ctx.think_s))


#: One step of a client: (its SDK client, its rng, its process, the step's number) -> the process
#: to go on as (a new one after an ``info`` outcome).
Step = Callable[[AsyncClient, random.Random, int, int], Awaitable[int]]


async def _client_loop(ctx: Context, seed: int, step: Step) -> None:
    """One client: an ``AsyncClient`` over every endpoint, taking steps until the run stops."""
    rng = random.Random(seed)
    process = ctx.processes.new()
    async with AsyncClient(ctx.endpoints, timeout=ctx.call_timeout, credentials=ctx.credentials) as client:
        for n in itertools.count():
            if ctx.stop.is_set():
                return
            process = await step(client, rng, process, n)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


class Registers:
    name = "register"

    def __init__(self, ctx: Context, keys: int = 3, clients: int = 4) -> None:
        self.ctx = ctx
        self.keys = [f"{ctx.prefix}reg/{i}" for i in range(keys)]
        self.clients = clients

    async def client(self, seed: int) -> None:
        # key -> (mod_revision, value) last seen by this client: what a swap compares against.
        known: dict[str, tuple[int, str | None]] = {}

        async def step(client: AsyncClient, rng: random.Random, process: int, n: int) -> int:
            key = rng.choice(self.keys)
            kind = rng.choices(["read", "write", "cas"], [4, 3, 3])[0]
            if kind == "read":
                op = await self._read(client, process, key, known)
            elif kind == "write":
                op = await self._write(client, process, key, f"{process}:{n}", known)
            else:
                op = await self._cas(client, process, key, f"{process}:{n}", known)
            if op.type == INFO:
                process = self.ctx.processes.new()
            await _think(self.ctx, rng)
            return process

        await _client_loop(self.ctx, seed, step)

    async def _read(self, client: AsyncClient, process: int, key: str, known: dict[str, Any]) -> Op:
        def outcome(kv: Any) -> tuple[Any, int, dict[str, Any]]:
            if kv is None:
                known[key] = (0, None)
                return None, 0, {}
            known[key] = (kv.mod_revision, _text(kv.value))
            return _text(kv.value), kv.mod_revision, {}

        return await record(self.ctx, process, self.name, "read", key, None, client.get(key), outcome)

    async def _write(self, client: AsyncClient, process: int, key: str, value: str, known: dict[str, Any]) -> Op:
        def outcome(result: Any) -> tuple[Any, int, dict[str, Any]]:
            known[key] = (result.kv.mod_revision, value)
            return None, result.kv.mod_revision, {}

        return await record(self.ctx, process, self.name, "write", key, value, client.put(key, value), outcome)

    async def _cas(self, client: AsyncClient, process: int, key: str, value: str, known: dict[str, Any]) -> Op:
        mod_revision, expected = known.get(key, (0, None))

        def outcome(result: Any) -> tuple[Any, int, dict[str, Any]]:
            # The revision is the one this swap wrote; 0 for a lost race (it wrote nothing).
            if result.succeeded:
                known[key] = (result.kv.mod_revision, value)
                return [True, None], result.kv.mod_revision, {}
            if result.kv is None:
                known[key] = (0, None)
                return [False, None], 0, {}
            known[key] = (result.kv.mod_revision, _text(result.kv.value))
            return [False, _text(result.kv.value)], 0, {}

        call = client.compare_and_swap(key, value, mod_revision)
        op = await record(self.ctx, process, self.name, "cas", key, [expected, value], call, outcome)
        op.extra["expected_mod_revision"] = mod_revision
        return op

    def tasks(self) -> list[Awaitable[None]]:
        return [self.client(self.ctx.rng.randrange(1 << 30)) for _ in range(self.clients)]


class SetAdds:
    """Adds of fresh keys. ``fresh_clients`` of the clients open a new ``AsyncClient`` for every add,
    with the endpoints in a random order, like a CLI call or a restarted agent: such a client knows
    no leader yet, so its first attempt goes to whichever server it lists first."""

    name = "set"

    def __init__(self, ctx: Context, clients: int = 2, fresh_clients: int = 1) -> None:
        self.ctx = ctx
        self.clients = clients
        self.fresh_clients = fresh_clients
        self.key_prefix = f"{ctx.prefix}set/"

    async def client(self, seed: int, fresh: bool) -> None:
        ctx, rng = self.ctx, random.Random(seed)
        process = ctx.processes.new()
        async with contextlib.AsyncExitStack() as stack:
            shared = None
            if not fresh:
                shared = await stack.enter_async_context(
                    AsyncClient(ctx.endpoints, timeout=ctx.call_timeout, credentials=ctx.credentials)
                )
            for n in itertools.count():
                if ctx.stop.is_set():
                    return
                key = f"{self.key_prefix}{process}-{n}"
                endpoints = rng.sample(ctx.endpoints, len(ctx.endpoints))
                async with contextlib.AsyncExitStack() as per_op:
                    client = shared
                    if client is None:
                        client = await per_op.enter_async_context(
                            AsyncClient(endpoints, timeout=ctx.call_timeout, credentials=ctx.credentials)
                        )
                    op = await record(
                        ctx,
                        process,
                        self.name,
                        "add",
                        key,
                        key,
                        client.put(key, b"1"),
                        lambda result: (None, result.kv.mod_revision, {}),
                    )
                if shared is None:
                    op.extra["fresh_client"] = endpoints[0]
                if op.type == INFO:
                    process = ctx.processes.new()
                await _think(ctx, rng)

    def tasks(self) -> list[Awaitable[None]]:
        return [self.client(self.ctx.rng.randrange(1 << 30), fresh=i < self.fresh_clients) for i in range(self.clients)]


class Ports:
    """Allocate, then release, a fresh service's port on one host in a range of ``size`` ports.

    A release whose outcome is unknown is retried until one is answered (releasing twice is
    harmless), so the range does not fill with leaks."""

    name = "ports"

    def __init__(self, ctx: Context, clients: int = 2, first_port: int = 40100, size: int = 5) -> None:
        self.ctx = ctx
        self.clients = clients
        self.host = f"{ctx.prefix.strip('/').replace('/', '-')}-host"
        self.range = f"{ctx.prefix.strip('/').replace('/', '-')}-range"
        self.first_port, self.size = first_port, size
        self.services: list[str] = []

    async def setup(self, client: AsyncClient) -> None:
        await client.ports.set_range(self.range, self.first_port, self.first_port + self.size - 1)

    async def client(self, seed: int) -> None:
        await _client_loop(self.ctx, seed, self._allocate_then_release)

    async def _allocate_then_release(self, client: AsyncClient, rng: random.Random, process: int, n: int) -> int:
        ctx = self.ctx
        service = f"svc-{process}-{n}"
        self.services.append(service)

        def allocated(result: Any) -> tuple[Any, int, dict[str, Any]]:
            a = result.assignment
            return a.port, result.revision, {"create_revision": a.create_revision, "existing": result.existing}

        op = await record(
            ctx,
            process,
            self.name,
            "allocate",
            service,
            self.host,
            client.ports.allocate(self.host, service, "main", range=self.range),
            allocated,
        )
        if op.type == INFO:
            process = ctx.processes.new()
        await _think(ctx, rng)
        if op.type == FAIL:  # certainly not allocated (e.g. ResourceExhausted): nothing to release
            return process
        return await self._release(client, process, service)

    async def _release(self, client: AsyncClient, process: int, service: str) -> int:
        def released(result: Any) -> tuple[Any, int, dict[str, Any]]:
            a = result.assignment
            extra = {"port": a.port, "create_revision": a.create_revision} if a is not None else {}
            return result.released, result.revision, extra

        for _attempt in range(30):
            op = await record(
                self.ctx,
                process,
                self.name,
                "release",
                service,
                self.host,
                client.ports.release(self.host, service, "main"),
                released,
            )
            if op.type == INFO:
                process = self.ctx.processes.new()
            if op.type == OK:
                return process
        return process

    def tasks(self) -> list[Awaitable[None]]:
        return [self.client(self.ctx.rng.randrange(1 << 30)) for _ in range(self.clients)]


#: The lock holders' lease TTL: shorter than the longer faults, so leases expire under them too.
LEASE_TTL_S = 2.0
#: A holder renews this often: four times a TTL, as etcd's clients do three.
LEASE_RENEW_S = LEASE_TTL_S / 4
#: The share of holders that stop renewing instead of revoking, so the port is handed on by expiry.
LEASE_ABANDON = 0.25


class Leases:
    """Holders take turns on a one-port range, each attaching its allocation to a lease of its own.

    A cycle: grant a lease, allocate the port under it (refused while someone holds it), keep the
    lease alive for a while, then revoke it, or, a quarter of the time, stop renewing and let it
    expire. Every operation of a cycle carries the holder's name as its key; ``checks.check_leases``
    judges that no holder was handed the port while another's lease was alive."""

    name = "lease"

    def __init__(self, ctx: Context, clients: int = 2, port: int = 40200, ttl_s: float = LEASE_TTL_S) -> None:
        self.ctx = ctx
        self.clients = clients
        base = ctx.prefix.strip("/").replace("/", "-")
        self.host, self.range = f"{base}-lock-host", f"{base}-lock"
        self.port, self.ttl_s = port, ttl_s

    async def setup(self, client: AsyncClient) -> None:
        await client.ports.set_range(self.range, self.port, self.port)

    async def client(self, seed: int) -> None:
        async def step(client: AsyncClient, rng: random.Random, process: int, n: int) -> int:
            process = await self._cycle(client, rng, process, f"holder-{process}-{n}")
            await _think(self.ctx, rng)
            return process

        await _client_loop(self.ctx, seed, step)

    def _after(self, process: int, op: Op) -> int:
        return self.ctx.processes.new() if op.type == INFO else process

    async def _cycle(self, client: AsyncClient, rng: random.Random, process: int, holder: str) -> int:
        ctx = self.ctx
        op = await record(
            ctx, process, self.name, "grant", holder, self.ttl_s, client.leases.grant(self.ttl_s), _lease_id
        )
        process = self._after(process, op)
        if op.type != OK:
            return process  # a lease granted unknowingly holds nothing and expires on its own
        lease_id = op.result
        acquire = await record(
            ctx,
            process,
            self.name,
            "acquire",
            holder,
            lease_id,
            client.ports.allocate(self.host, holder, "lock", range=self.range, lease_id=lease_id),
            lambda result: (
                result.assignment.port,
                result.revision,
                {"lease_id": lease_id, "create_revision": result.assignment.create_revision},
            ),
        )
        process = self._after(process, acquire)
        if acquire.type == OK:
            process, held = await self._hold(client, rng, process, holder, lease_id)
            if held and rng.random() < LEASE_ABANDON:
                acquire.extra["abandoned"] = True  # the next holder gets the port only by expiry
                return process
        elif acquire.type == FAIL:
            await asyncio.sleep(rng.uniform(0.1, 0.4))  # someone holds it: back off (offered load)
        op = await record(
            ctx,
            process,
            self.name,
            "revoke",
            holder,
            lease_id,
            client.leases.revoke(lease_id),
            lambda released: (released, 0, {}),
        )
        return self._after(process, op)

    async def _hold(
        self, client: AsyncClient, rng: random.Random, process: int, holder: str, lease_id: int
    ) -> tuple[int, bool]:
        """Keep the lease alive for a random while; stop early once it is found expired. Returns the
        process and whether the lease was held to the end (not found gone)."""
        until = time.monotonic() + rng.uniform(0.5, 3.0)
        while time.monotonic() < until and not self.ctx.stop.is_set():
            await asyncio.sleep(LEASE_RENEW_S)  # the renewal cadence (offered load, not a condition)
            op = await record(
                self.ctx,
                process,
                self.name,
                "keepalive",
                holder,
                lease_id,
                client.leases.keep_alive(lease_id),
                _lease_id,
            )
            process = self._after(process, op)
            if op.type == FAIL and op.error.startswith("NotFound"):  # it expired, and the port with it
                return process, False
        return process, True

    def tasks(self) -> list[Awaitable[None]]:
        return [self.client(self.ctx.rng.randrange(1 << 30)) for _ in range(self.clients)]


def _lease_id(lease: Any) -> tuple[Any, int, dict[str, Any]]:
    return lease.id, 0, {}


@dataclass
class Delivery:
    """What one watcher received: (revision, key, type, run-relative seconds)."""

    watcher: int
    events: list[tuple[int, str, str, float]] = field(default_factory=list)
    error: str = ""
    watch: AsyncWatch | None = None


class Watchers:
    name = "watch"

    def __init__(self, ctx: Context, watchers: int = 2) -> None:
        self.ctx = ctx
        self.deliveries = [Delivery(i) for i in range(watchers)]
        self.from_revision = 0

    async def watcher(self, delivery: Delivery) -> None:
        async with AsyncClient(
            self.ctx.endpoints, timeout=self.ctx.call_timeout, credentials=self.ctx.credentials
        ) as client:
            delivery.watch = client.watch(self.ctx.prefix, from_revision=self.from_revision)
            try:
                async for event in delivery.watch:
                    delivery.events.append((event.revision, event.key, event.type.name, self.ctx.history.now()))
            except errors.ControlPlaneError as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"

    def tasks(self) -> list[Awaitable[None]]:
        return [self.watcher(d) for d in self.deliveries]

    async def caught_up(self, revision: int) -> bool:
        return all(d.error or (d.watch is not None and d.watch.revision >= revision) for d in self.deliveries)

    async def close(self) -> None:
        for delivery in self.deliveries:
            if delivery.watch is not None:
                await delivery.watch.aclose()
