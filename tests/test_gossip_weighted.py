"""Averaging weighted by example counts (issue 19): the pair's weights n_a / (n_a + n_b) and
n_b / (n_a + n_b), computed bit-identically at both ends, so the example-weighted mean over peers is
preserved; and the counts travelling in the exchange's header between two real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from gossip.exchange import ExchangeServer, exchange
from gossip.matching import random_matching
from gossip.mixing import Array, average, pair_weights, weighted_average

pytestmark = pytest.mark.timeout(60)

SHAPES: dict[str, tuple[tuple[int, ...], Any]] = {
    "conv.weight": ((4, 3, 3, 3), np.float32),
    "fc.bias": ((7,), np.float64),
    "half": ((5, 6), np.float16),
}


def model(seed: int, *, multiple_of: int | None = None) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for name, (shape, dtype) in SHAPES.items():
        # Small integers (multiple_of): every product and sum below is exact in every dtype, float16 too.
        values = rng.standard_normal(shape) if multiple_of is None else rng.integers(-64, 64, size=shape) * multiple_of
        out[name] = np.asarray(values, dtype=dtype)
    return out


def bits(params: dict[str, Array]) -> dict[str, bytes]:
    return {name: value.tobytes() for name, value in params.items()}


def test_pair_weights_are_the_example_shares_and_the_same_at_both_ends() -> None:
    assert pair_weights(1, 3) == (0.25, 0.75)
    assert pair_weights(3, 1) == (0.75, 0.25)
    for a, b in [(37, 101), (1, 2**40), (60_000, 59_999), (7, 7)]:
        wa, wb = pair_weights(a, b)
        assert pair_weights(b, a) == (wb, wa)
        assert wa == a / (a + b) and wb == b / (a + b)
    # 0 on either side: no count given, the plain average (what a peer without counts computes).
    assert pair_weights(0, 5) == pair_weights(5, 0) == pair_weights(0, 0) == (0.5, 0.5)
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match="example counts"):
            pair_weights(bad, 1)  # type: ignore[arg-type]


def test_weighted_average_preserves_the_example_weighted_sum_exactly() -> None:
    xa, xb = model(1, multiple_of=4), model(2, multiple_of=4)
    na, nb = 1, 3
    mine = weighted_average(xa, xb, na, nb)
    theirs = weighted_average(xb, xa, nb, na)
    assert bits(mine) == bits(theirs)
    for name, (shape, dtype) in SHAPES.items():
        assert mine[name].dtype == dtype and mine[name].shape == shape
        expected = (xa[name].astype(np.float64) * na + xb[name].astype(np.float64) * nb) / (na + nb)
        assert np.array_equal(mine[name], expected)
        # n_a * x + n_b * x after == n_a * x_a + n_b * x_b before: the weighted mean over peers holds.
        assert np.array_equal(mine[name] * na + theirs[name] * nb, xa[name] * na + xb[name] * nb)


@pytest.mark.parametrize(("na", "nb"), [(37, 101), (1, 999), (500, 499)])
def test_arbitrary_floats_and_counts_end_bit_identical_at_both_ends(na: int, nb: int) -> None:
    xa, xb = model(3), model(4)
    mine = weighted_average(xa, xb, na, nb)
    theirs = weighted_average(xb, xa, nb, na)
    assert bits(mine) == bits(theirs)
    for name in SHAPES:
        expected = (xa[name].astype(np.float64) * na + xb[name].astype(np.float64) * nb) / (na + nb)
        tolerance = 2e-3 if xa[name].dtype == np.float16 else 1e-6
        np.testing.assert_allclose(mine[name], expected, rtol=tolerance, atol=tolerance)


def test_without_counts_it_is_the_plain_average_to_the_bit() -> None:
    xa, xb = model(5), model(6)
    for na, nb in [(0, 0), (0, 7), (7, 0)]:
        assert bits(weighted_average(xa, xb, na, nb)) == bits(average(xa, xb))


def test_layouts_that_differ_are_refused() -> None:
    xa = model(1)
    xb = dict(model(2))
    xb["fc.bias"] = xb["fc.bias"].astype(np.float32)
    with pytest.raises(ValueError, match="dtype"):
        weighted_average(xa, xb, 1, 2)


def test_rounds_of_weighted_gossip_keep_the_group_weighted_mean() -> None:
    """Eight peers with unequal shards, 30 rounds of random matchings: every pair averages with its
    counts' weights; the example-weighted mean over the group stays where it started (float64: up to
    rounding), while the plain mean drifts, and the peers converge to the weighted mean."""
    peers = [f"p{k}" for k in range(8)]
    counts = dict(zip(peers, [46, 286, 120, 75, 201, 30, 160, 99], strict=True))
    rng = np.random.default_rng(0)
    params = {p: {"w": rng.standard_normal(50)} for p in peers}
    total = sum(counts.values())

    def weighted_mean() -> Array:
        return sum(params[p]["w"] * counts[p] for p in peers) / total

    def plain_mean() -> Array:
        return sum(params[p]["w"] for p in peers) / len(peers)

    start, start_plain = weighted_mean(), plain_mean()
    for r in range(30):
        for a, b in random_matching(peers, seed=7, round=r).pairs:
            mixed_a = weighted_average(params[a], params[b], counts[a], counts[b])
            mixed_b = weighted_average(params[b], params[a], counts[b], counts[a])
            assert bits(mixed_a) == bits(mixed_b)
            params[a], params[b] = mixed_a, mixed_b
    np.testing.assert_allclose(weighted_mean(), start, rtol=0, atol=1e-12)
    assert not np.allclose(plain_mean(), start_plain, atol=1e-3)  # the unweighted mean is not what is kept
    for p in peers:
        np.testing.assert_allclose(params[p]["w"], start, atol=0.05)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ExchangeServer, ExchangeServer]]:
    async with ExchangeServer("a") as a, ExchangeServer("b") as b:
        yield a, b


async def test_counts_travel_in_the_exchange_and_both_ends_keep_the_weighted_average(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(7), model(8)
    ra, rb = await asyncio.gather(
        exchange(a, "b", b.address, "g", 1, xa, seed=3, deadline_s=10, examples=np.int64(37), chunk_bytes=256),
        exchange(b, "a", a.address, "g", 1, xb, seed=3, deadline_s=10, examples=101, chunk_bytes=256),
    )
    assert ra.peer_examples == 101 and rb.peer_examples == 37
    oracle = weighted_average(xa, xb, 37, 101)
    assert bits(ra.params) == bits(rb.params) == bits(oracle)
    assert bits(oracle) != bits(average(xa, xb))

    # Sparsified: the weights apply to the exchanged coordinates, the rest stay local.
    ra, rb = await asyncio.gather(
        exchange(a, "b", b.address, "g", 2, xa, seed=3, deadline_s=10, examples=5, sparsity_ratio=0.5),
        exchange(b, "a", a.address, "g", 2, xb, seed=3, deadline_s=10, examples=15, sparsity_ratio=0.5),
    )
    for name in SHAPES:
        moved = ra.params[name] != xa[name]
        assert moved.any() and (~moved).any()
        assert np.array_equal(ra.params[name][moved], rb.params[name][moved])
        expected = weighted_average({"x": xa[name][moved]}, {"x": xb[name][moved]}, 5, 15)["x"]
        assert np.array_equal(ra.params[name][moved], expected)


async def test_a_side_without_a_count_makes_both_take_the_plain_average(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(9), model(10)
    ra, rb = await asyncio.gather(
        exchange(a, "b", b.address, "g", 1, xa, seed=3, deadline_s=10, examples=50),
        exchange(b, "a", a.address, "g", 1, xb, seed=3, deadline_s=10),
    )
    assert ra.peer_examples == 0 and rb.peer_examples == 50
    assert bits(ra.params) == bits(rb.params) == bits(average(xa, xb))


async def test_a_bad_count_fails_before_any_io(servers: tuple[ExchangeServer, ExchangeServer]) -> None:
    a, b = servers
    for bad in (-1, 2**64, 2.5):
        with pytest.raises(ValueError, match="examples"):
            await exchange(a, "b", b.address, "g", 1, model(1), seed=3, deadline_s=10, examples=bad)  # type: ignore[arg-type]
    assert a.offers == () and b.offers == ()
