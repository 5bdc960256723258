"""The peer-to-peer exchange on real grpc.aio servers on loopback: exact averages at both ends,
sparsified exchanges, corruption, dead and hung peers, mismatched specs and rounds, long runs.

Faults are injected by a man in the middle (``Proxy``): a GossipPeer servicer that forwards every
message between the dialer and the real serving side and can corrupt, withhold or cut them, or stop
a server at a precise point of the stream. No sleeps: every wait is on an event or a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from controlplane.v1 import gossip_peer_pb2 as pb
from controlplane.v1 import gossip_peer_pb2_grpc as pb_grpc
from gossip.bandwidth import BandwidthTable
from gossip.exchange import (
    REFUSED_NOT_FINITE,
    CorruptChunk,
    ExchangeResult,
    ExchangeServer,
    NotFinite,
    PeerLost,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    RoundMismatch,
    SpecMismatch,
    TruncatedStream,
    exchange,
    exchange_or_keep,
    spec_digest,
)
from gossip.mixing import Array, average, layout, sparse_average, sparse_mask

pytestmark = pytest.mark.timeout(60)

GROUP = "net-1"
SEED = 42
DEADLINE_S = 10.0
SHORT_DEADLINE_S = 1.0
# How late a deadline may fire on a busy 2-core machine (scheduling, thread hand-offs).
SLACK_S = 0.75

SHAPES: dict[str, tuple[tuple[int, ...], type[np.floating[Any]]]] = {
    "conv.weight": ((16, 8, 5, 5), np.float32),
    "fc.bias": ((19,), np.float64),
    "fc.weight": ((37, 19), np.float32),
    "scale": ((), np.float64),
}


def model(seed: int, integer_valued: bool = True) -> dict[str, Array]:
    """Several tensors of two dtypes. Integer values make the pairwise mean exact, so equality with
    (x_a + x_b) / 2 can be checked bit for bit."""
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for name, (shape, dtype) in SHAPES.items():
        values = rng.integers(-1000, 1000, size=shape) if integer_valued else rng.standard_normal(shape)
        out[name] = np.asarray(values, dtype=dtype)
    return out


def nbytes(params: dict[str, Array]) -> int:
    return sum(v.nbytes for v in params.values())


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ExchangeServer, ExchangeServer]]:
    async with ExchangeServer("a") as a, ExchangeServer("b", offer_wait_s=DEADLINE_S) as b:
        yield a, b


async def both(
    a: ExchangeServer,
    b: ExchangeServer,
    round: int,
    xa: dict[str, Array],
    xb: dict[str, Array],
    *,
    a_dials: str | None = None,
    keep: bool = False,
    deadline_s: float = DEADLINE_S,
    **kw: Any,
) -> tuple[ExchangeResult, ExchangeResult]:
    """Both ends of one round at once, as two nodes would run it ("a" < "b": a dials)."""
    run = exchange_or_keep if keep else exchange
    return await asyncio.gather(
        run(a, "b", a_dials or b.address, GROUP, round, xa, seed=SEED, deadline_s=deadline_s, **kw),
        run(b, "a", a.address, GROUP, round, xb, seed=SEED, deadline_s=deadline_s, **kw),
    )


Tamper = Callable[[str, pb.ExchangeChunk], Awaitable[pb.ExchangeChunk | None]]


class Proxy(pb_grpc.GossipPeerServicer):
    """A man in the middle: forwards the dialer's messages ("up") to the real server and the
    server's ("down") back, each through ``tamper``, which may change a message, withhold it (by
    not returning), or end the stream here (by returning None)."""

    def __init__(self, target: str, tamper: Tamper) -> None:
        self.target = target
        self.tamper = tamper

    async def Exchange(self, request_iterator: Any, context: Any) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            call = pb_grpc.GossipPeerStub(channel).Exchange()

            async def up() -> None:
                while (message := await context.read()) is not grpc.aio.EOF:
                    forwarded = await self.tamper("up", message)
                    if forwarded is None:
                        return
                    await call.write(forwarded)
                await call.done_writing()

            upstream = asyncio.create_task(up())
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    forwarded = await self.tamper("down", message)
                    if forwarded is None:
                        return  # the dialer sees the stream end cleanly, mid-payload
                    await context.write(forwarded)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details())  # pass the server's status through
            finally:
                upstream.cancel()
                await asyncio.gather(upstream, return_exceptions=True)


async def start_proxy(target: str, tamper: Tamper) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_GossipPeerServicer_to_server(Proxy(target, tamper), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def on_chunk(
    direction: str, index: int, action: Callable[[pb.ExchangeChunk], Awaitable[pb.ExchangeChunk | None]]
) -> Tamper:
    """Apply ``action`` to data chunk ``index`` travelling in ``direction``; forward the rest."""

    async def tamper(d: str, message: pb.ExchangeChunk) -> pb.ExchangeChunk | None:
        if d == direction and message.WhichOneof("body") == "data" and message.data.index == index:
            return await action(message)
        return message

    return tamper


async def flip_a_byte(message: pb.ExchangeChunk) -> pb.ExchangeChunk:
    data = bytearray(message.data.data)
    data[len(data) // 2] ^= 0x01
    corrupted = pb.ExchangeChunk()
    corrupted.CopyFrom(message)
    corrupted.data.data = bytes(data)  # the digest is left as the sender computed it
    return corrupted


def running_tasks() -> Counter[str]:
    return Counter(getattr(t.get_coro(), "__qualname__", repr(t)) for t in asyncio.all_tasks() if not t.done())


def assert_kept(result: ExchangeResult, original: dict[str, Array]) -> None:
    assert result.params.keys() == original.keys()
    for name in original:
        assert result.params[name] is original[name]  # not even a copy: nothing was mixed


# --- exchanges that succeed -----------------------------------------------------------------------


async def test_full_exchange_gives_both_peers_exactly_the_pairwise_mean(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(1), model(2)
    # 1000-byte chunks: many chunks, and tensors straddle chunk boundaries.
    ra, rb = await both(a, b, 1, xa, xb, chunk_bytes=1000)
    assert ra.ok and rb.ok and ra.dialed and not rb.dialed
    for name in SHAPES:
        expected = (xa[name] + xb[name]) / 2
        assert ra.params[name].dtype == xa[name].dtype and ra.params[name].shape == xa[name].shape
        assert np.array_equal(ra.params[name], expected)
        assert np.array_equal(rb.params[name], expected)
        # The mean over the two peers (W is doubly stochastic) is preserved exactly.
        assert np.array_equal(ra.params[name] + rb.params[name], xa[name] + xb[name])
    total = nbytes(xa)
    assert total > 10 * 1000
    assert (ra.bytes_sent, ra.bytes_received, rb.bytes_sent, rb.bytes_received) == (total,) * 4
    assert ra.peer == "b" and rb.peer == "a" and ra.round == rb.round == 1


async def test_arbitrary_floats_end_bit_identical_at_both_ends(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(3, integer_valued=False), model(4, integer_valued=False)
    ra, rb = await both(a, b, 1, xa, xb, chunk_bytes=4096)
    oracle = average(xa, xb)
    for name in SHAPES:
        assert ra.params[name].tobytes() == rb.params[name].tobytes() == oracle[name].tobytes()


async def test_sparsified_exchange_averages_only_the_shared_mask(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    ratio = 0.3
    xa, xb = model(5), model(6)
    ra, rb = await both(a, b, 7, xa, xb, sparsity_ratio=ratio, chunk_bytes=512)
    oracle_a = sparse_average(xa, xb, SEED, 7, ratio)
    oracle_b = sparse_average(xb, xa, SEED, 7, ratio)
    expected_bytes = 0
    for name in SHAPES:
        mask = sparse_mask(SEED, 7, name, xa[name].shape, ratio)
        expected_bytes += int(mask.sum()) * xa[name].itemsize
        mean = (xa[name] + xb[name]) / 2
        # Exchanged coordinates: the pairwise mean, equal at both ends.
        assert np.array_equal(ra.params[name][mask], mean[mask])
        assert np.array_equal(rb.params[name][mask], mean[mask])
        # The others: untouched.
        assert np.array_equal(ra.params[name][~mask], xa[name][~mask])
        assert np.array_equal(rb.params[name][~mask], xb[name][~mask])
        # Only masked coordinates may differ from the local values (where x_a == x_b nothing moves).
        assert not np.any((ra.params[name] != xa[name]) & ~mask)
        assert np.array_equal(ra.params[name], oracle_a[name])
        assert np.array_equal(rb.params[name], oracle_b[name])
    assert ra.bytes_sent == rb.bytes_sent == ra.bytes_received == expected_bytes
    # ceil(ratio * size) per tensor: about ratio x the full model.
    assert ratio <= ra.bytes_sent / nbytes(xa) <= ratio + 0.02


@pytest.mark.parametrize("slow", ["up", "down"])
async def test_a_side_that_receives_before_it_has_sent_everything_still_sends_it_all(
    servers: tuple[ExchangeServer, ExchangeServer], slow: str
) -> None:
    """One direction is held back until the other has delivered its whole payload: the fast side's
    verification then completes while its own payload is still going out, which must not cut it."""
    a, b = servers
    fast = "down" if slow == "up" else "up"
    fast_done = asyncio.Event()

    async def hold(direction: str, message: pb.ExchangeChunk) -> pb.ExchangeChunk | None:
        if direction == fast and message.WhichOneof("body") == "trailer":
            fast_done.set()
        if direction == slow and message.WhichOneof("body") == "data" and message.data.index == 1:
            await fast_done.wait()
        return message

    proxy, address = await start_proxy(b.address, hold)
    try:
        # 8 MB in 64 KiB chunks: more than the flow-control windows and socket buffers hold (4 MB did
        # not always), so the held-back side is still writing when its receive side finishes.
        n = 2_000_000
        rng = np.random.default_rng(9)
        xa = {"w": rng.integers(-100, 100, n).astype(np.float32)}
        xb = {"w": rng.integers(-100, 100, n).astype(np.float32)}
        ra, rb = await both(a, b, 1, xa, xb, a_dials=address, chunk_bytes=64 * 1024)
    finally:
        await proxy.stop(0)
    assert np.array_equal(ra.params["w"], (xa["w"] + xb["w"]) / 2)
    assert np.array_equal(rb.params["w"], ra.params["w"])
    assert ra.bytes_sent == rb.bytes_received == rb.bytes_sent == ra.bytes_received == 4 * n


async def test_results_feed_the_bandwidth_estimator(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    ra, _ = await both(a, b, 1, model(1), model(2))
    assert ra.samples == ((nbytes(model(1)), ra.receive_seconds),) and ra.receive_seconds > 0
    table = BandwidthTable("a")
    estimate = ra.observe(table, now=1.0)
    assert estimate is not None and estimate.bandwidth > 0 and estimate.samples == 1
    lost = ExchangeResult({}, "b", GROUP, 2, 0, 0, 1.0, 0.0, True, error=PeerTimeout("gone"))
    penalised = lost.observe(table, now=2.0)
    assert penalised is not None and penalised.failures == 1 and penalised.bandwidth == estimate.bandwidth / 2
    mismatch = ExchangeResult({}, "b", GROUP, 3, 0, 0, 1.0, 0.0, True, error=SpecMismatch("shapes"))
    assert mismatch.observe(table, now=3.0) is None and mismatch.samples == ()


async def test_many_rounds_on_the_same_servers_leave_nothing_behind(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(7, integer_valued=False), model(8, integer_valued=False)
    await both(a, b, 0, model(1), model(2))  # warm up: channels, executor threads, grpc internals
    before = running_tasks()
    for round in range(1, 31):
        ratio = 1.0 if round % 3 == 0 else 0.25
        ra, rb = await both(a, b, round, xa, xb, sparsity_ratio=ratio, chunk_bytes=2048)
        oracle = average(xa, xb) if ratio == 1.0 else sparse_average(xa, xb, SEED, round, ratio)
        for name in SHAPES:
            assert np.array_equal(ra.params[name], oracle[name])
        xa, xb = ra.params, rb.params
    # Rounds 3, 6, ... are full exchanges: the two models ended equal.
    for name in SHAPES:
        assert np.array_equal(xa[name], xb[name])
    assert a.offers == () and b.offers == ()
    # Same tasks as before, by kind (gRPC replaces its own "wait for the next call" task per call).
    assert running_tasks() == before


# --- integrity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_corrupt_chunk_fails_both_sides_and_both_keep_their_parameters(
    servers: tuple[ExchangeServer, ExchangeServer], direction: str
) -> None:
    a, b = servers
    proxy, address = await start_proxy(b.address, on_chunk(direction, 3, flip_a_byte))
    try:
        xa, xb = model(1), model(2)
        started = time.monotonic()
        ra, rb = await both(a, b, 1, xa, xb, a_dials=address, keep=True, chunk_bytes=1000)
        assert time.monotonic() - started < DEADLINE_S / 2  # refused at once, not at the deadline
    finally:
        await proxy.stop(0)
    assert isinstance(ra.error, CorruptChunk) and isinstance(rb.error, CorruptChunk)
    detector, told = (ra, rb) if direction == "down" else (rb, ra)
    assert detector.error is not None and not detector.error.from_peer and "chunk 3" in str(detector.error)
    assert told.error is not None and told.error.from_peer
    assert_kept(ra, xa)
    assert_kept(rb, xb)
    assert b.offers == ()


@pytest.mark.parametrize("poison", [np.nan, np.inf])
async def test_nan_or_infinite_parameters_are_refused_and_counted_and_both_keep_theirs(
    servers: tuple[ExchangeServer, ExchangeServer], poison: float
) -> None:
    """A stranger (or a diverged model) sends a chunk of NaN/Inf, with a valid digest: one such value
    would spread through every model averaged with it, so the receiver refuses and counts it (issue 15)."""

    async def poisoned(message: pb.ExchangeChunk) -> pb.ExchangeChunk:
        values = np.full(len(message.data.data) // 4, poison, dtype=np.float32).tobytes()
        changed = pb.ExchangeChunk()
        changed.CopyFrom(message)
        changed.data.data = values
        changed.data.sha256 = hashlib.sha256(values).digest()  # integrity holds: only the values are bad
        return changed

    a, b = servers
    refused_before = REFUSED_NOT_FINITE._value.get()
    # Chunk 0 from a to b: the float32 conv.weight comes first, so the chunk is whole float32 values.
    proxy, address = await start_proxy(b.address, on_chunk("up", 0, poisoned))
    try:
        xa, xb = model(1), model(2)
        ra, rb = await both(a, b, 1, xa, xb, a_dials=address, keep=True, chunk_bytes=1000)
    finally:
        await proxy.stop(0)
    assert isinstance(rb.error, NotFinite) and not rb.error.from_peer and "conv.weight" in str(rb.error)
    assert isinstance(ra.error, NotFinite) and ra.error.from_peer
    assert_kept(ra, xa)
    assert_kept(rb, xb)
    assert all(np.isfinite(value).all() for value in rb.params.values())
    assert REFUSED_NOT_FINITE._value.get() == refused_before + 1


async def test_a_stream_cut_mid_payload_is_truncated(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    dialer_done = asyncio.Event()

    async def cut(direction: str, message: pb.ExchangeChunk) -> pb.ExchangeChunk | None:
        if direction == "up" and message.WhichOneof("body") == "trailer":
            dialer_done.set()
        if direction == "down" and message.WhichOneof("body") == "data" and message.data.index == 2:
            # End b's stream after two chunks, once a has written its whole payload (a write racing
            # the end of the call would break the stream instead of ending it).
            await dialer_done.wait()
            return None
        return message

    proxy, address = await start_proxy(b.address, cut)
    try:
        xa, xb = model(1), model(2)
        ra, rb = await both(a, b, 1, xa, xb, a_dials=address, keep=True, chunk_bytes=1000)
    finally:
        await proxy.stop(0)
    assert isinstance(ra.error, TruncatedStream)
    assert isinstance(ra.error, ProtocolError)
    assert isinstance(rb.error, PeerUnavailable | ProtocolError)  # its dialer went away mid-exchange
    assert_kept(ra, xa)
    assert_kept(rb, xb)


# --- dead and hung peers --------------------------------------------------------------------------


async def test_a_peer_killed_mid_round_fails_fast_and_both_keep_their_parameters(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    stopping: list[asyncio.Task[None]] = []

    async def kill_b(message: pb.ExchangeChunk) -> pb.ExchangeChunk:
        # b has streamed chunks 0..4 by now: stop its gossip server under the running exchange.
        stopping.append(asyncio.create_task(b.stop(0)))
        return message

    proxy, address = await start_proxy(b.address, on_chunk("down", 4, kill_b))
    try:
        xa, xb = model(1), model(2)
        started = time.monotonic()
        ra, rb = await both(a, b, 1, xa, xb, a_dials=address, keep=True, chunk_bytes=1000)
        elapsed = time.monotonic() - started
        await asyncio.gather(*stopping)
    finally:
        await proxy.stop(0)
    assert isinstance(ra.error, PeerUnavailable) and isinstance(rb.error, PeerUnavailable)
    assert elapsed < DEADLINE_S  # a broken stream is noticed at once, well before the deadline
    assert_kept(ra, xa)
    assert_kept(rb, xb)


@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_peer_that_stops_answering_times_out_at_the_deadline(
    servers: tuple[ExchangeServer, ExchangeServer], direction: str
) -> None:
    """The side whose peer goes silent mid-payload ("down": b's chunks stop reaching a; "up": a's stop
    reaching b) gives up at its deadline with PeerTimeout. The other side, given a longer deadline,
    learns of it when the first side leaves (or at its own deadline), and keeps its model too."""
    a, b = servers
    never = asyncio.Event()

    async def hang(message: pb.ExchangeChunk) -> pb.ExchangeChunk:
        await never.wait()  # withheld until the proxy is stopped
        return message

    proxy, address = await start_proxy(b.address, on_chunk(direction, 2, hang))
    deadline_a, deadline_b = (
        (SHORT_DEADLINE_S, 2 * SHORT_DEADLINE_S) if direction == "down" else (2 * SHORT_DEADLINE_S, SHORT_DEADLINE_S)
    )

    async def timed(run: Awaitable[ExchangeResult]) -> tuple[ExchangeResult, float]:
        started = time.monotonic()
        result = await run
        return result, time.monotonic() - started

    try:
        xa, xb = model(1), model(2)
        (ra, elapsed_a), (rb, elapsed_b) = await asyncio.gather(
            timed(exchange_or_keep(a, "b", address, GROUP, 1, xa, seed=SEED, deadline_s=deadline_a, chunk_bytes=1000)),
            timed(
                exchange_or_keep(b, "a", a.address, GROUP, 1, xb, seed=SEED, deadline_s=deadline_b, chunk_bytes=1000)
            ),
        )
    finally:
        await proxy.stop(0)
    silent, other = (ra, rb) if direction == "down" else (rb, ra)
    elapsed_silent, elapsed_other = (elapsed_a, elapsed_b) if direction == "down" else (elapsed_b, elapsed_a)
    assert isinstance(silent.error, PeerTimeout)
    assert SHORT_DEADLINE_S * 0.9 <= elapsed_silent <= SHORT_DEADLINE_S + SLACK_S
    assert isinstance(other.error, PeerLost | ProtocolError)
    assert elapsed_other <= 2 * SHORT_DEADLINE_S + SLACK_S
    assert_kept(ra, xa)
    assert_kept(rb, xb)
    assert b.offers == ()


async def test_dialing_a_dead_address_times_out_at_the_deadline(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, _ = servers
    # A bound socket that never listens: connections are refused, and no one else can take the port.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{dead.getsockname()[1]}"
        xa = model(1)
        started = time.monotonic()
        with pytest.raises(PeerTimeout):
            await exchange(a, "b", address, GROUP, 1, xa, seed=SEED, deadline_s=SHORT_DEADLINE_S)
        assert time.monotonic() - started <= SHORT_DEADLINE_S + SLACK_S


async def test_a_partner_that_never_dials_times_the_offer_out(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    _, b = servers
    started = time.monotonic()
    rb = await exchange_or_keep(b, "a", "unused:1", GROUP, 1, model(2), seed=SEED, deadline_s=SHORT_DEADLINE_S)
    assert isinstance(rb.error, PeerTimeout)
    assert SHORT_DEADLINE_S * 0.9 <= time.monotonic() - started <= SHORT_DEADLINE_S + SLACK_S
    assert b.offers == ()


async def test_withdrawn_and_stopped_offers_resolve_at_once(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    _, b = servers
    first = await b.offer(GROUP, 1, model(2), seed=SEED, peer="a", deadline_s=DEADLINE_S)
    assert b.offers == ((GROUP, 1),)
    waiting = asyncio.create_task(first.result())
    await asyncio.wait((waiting,), timeout=0)  # let it start waiting
    waiting.cancel()  # cancelling the wait withdraws the offer
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert b.offers == ()
    offer = await b.offer(GROUP, 2, model(2), seed=SEED, peer="a", deadline_s=DEADLINE_S)
    await b.stop(0)
    with pytest.raises(PeerUnavailable, match="stopped"):
        await offer.result()
    assert b.offers == ()


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"fc.weight": np.zeros((19, 37), np.float32)}, "fc.weight: shape"),
        ({"fc.weight": np.zeros((37, 19), np.float64)}, "fc.weight: dtype"),
        ({"extra": np.zeros(3, np.float32)}, "extra"),
    ],
)
async def test_different_models_are_refused_by_both_sides(
    servers: tuple[ExchangeServer, ExchangeServer], change: dict[str, Array], needle: str
) -> None:
    a, b = servers
    xa, xb = model(1), {**model(2), **change}
    started = time.monotonic()
    ra, rb = await both(a, b, 1, xa, xb, keep=True)
    assert time.monotonic() - started < DEADLINE_S / 2
    assert isinstance(ra.error, SpecMismatch) and isinstance(rb.error, SpecMismatch)
    assert needle in str(ra.error)
    assert_kept(ra, xa)
    assert_kept(rb, xb)
    assert spec_digest(layout(xa)) != spec_digest(layout(xb))


async def test_different_sparsity_ratios_are_a_spec_mismatch(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    ra, rb = await asyncio.gather(
        exchange_or_keep(a, "b", b.address, GROUP, 1, model(1), seed=SEED, sparsity_ratio=0.3, deadline_s=DEADLINE_S),
        exchange_or_keep(b, "a", a.address, GROUP, 1, model(2), seed=SEED, sparsity_ratio=0.5, deadline_s=DEADLINE_S),
    )
    assert isinstance(ra.error, SpecMismatch) and isinstance(rb.error, SpecMismatch)
    assert "sparsity ratio" in str(ra.error)


async def test_different_seeds_are_a_round_mismatch(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    ra, rb = await asyncio.gather(
        exchange_or_keep(a, "b", b.address, GROUP, 1, model(1), seed=1, deadline_s=DEADLINE_S),
        exchange_or_keep(b, "a", a.address, GROUP, 1, model(2), seed=2, deadline_s=DEADLINE_S),
    )
    assert isinstance(ra.error, RoundMismatch) and isinstance(rb.error, RoundMismatch)


async def test_a_stray_dialer_is_refused_and_the_real_partner_still_exchanges(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    async with ExchangeServer("0-stray") as stray:
        xa, xb = model(1), model(2)
        offer = await b.offer(GROUP, 1, xb, seed=SEED, peer="a", deadline_s=DEADLINE_S)
        with pytest.raises(RoundMismatch, match="matched b with a, not with 0-stray"):
            # 8 MB: the stray is still writing when it is refused, and must still read why.
            big = {"w": np.zeros(2_000_000, np.float32)}
            await exchange(stray, "b", b.address, GROUP, 1, big, seed=SEED, deadline_s=DEADLINE_S)
        assert b.offers == ((GROUP, 1),)  # still open for a
        ra = await exchange(a, "b", b.address, GROUP, 1, xa, seed=SEED, deadline_s=DEADLINE_S)
        rb = await offer.result()
    for name in SHAPES:
        assert np.array_equal(ra.params[name], rb.params[name])


async def test_an_address_that_now_belongs_to_another_node_is_refused(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, _ = servers
    async with ExchangeServer("c") as c:
        await c.offer(GROUP, 1, model(2), seed=SEED, deadline_s=SHORT_DEADLINE_S)
        with pytest.raises(RoundMismatch, match="meant to reach node 'b'"):
            await exchange(a, "b", c.address, GROUP, 1, model(1), seed=SEED, deadline_s=DEADLINE_S)


async def test_bad_arguments_fail_before_any_io(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    ints = {"w": np.arange(4)}
    with pytest.raises(ValueError, match="floating-point"):
        await exchange(a, "b", b.address, GROUP, 1, ints, seed=SEED, deadline_s=DEADLINE_S)
    with pytest.raises(ValueError, match="sparsity_ratio"):
        await exchange(a, "b", b.address, GROUP, 1, model(1), seed=SEED, sparsity_ratio=0.0, deadline_s=DEADLINE_S)
    with pytest.raises(ValueError, match="another node"):
        await exchange(a, "a", a.address, GROUP, 1, model(1), seed=SEED, deadline_s=DEADLINE_S)
    with pytest.raises(ValueError, match="chunk_bytes"):
        await exchange(a, "b", b.address, GROUP, 1, model(1), seed=SEED, deadline_s=DEADLINE_S, chunk_bytes=0)
    assert not math.isnan(DEADLINE_S) and a.offers == () and b.offers == ()
