"""Compression of gossip exchanges (issue 19, item 6): 8-bit quantisation with the residual kept in
the model. The pure arithmetic (``gossip.mixing``) with Hypothesis, then the exchange on loopback
matching it bit for bit at a quarter (float32) or an eighth (float64) of the bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossip.exchange import ExchangeServer, SpecMismatch, exchange, exchange_or_keep
from gossip.matching import random_matching
from gossip.mixing import (
    INT8_LEVELS,
    Array,
    apply_matching,
    apply_matching_compressed,
    average,
    canonical_compression,
    compressed_pair,
    decode_int8,
    encode_int8,
    int8_average,
    sparse_mask,
    topk_indices,
    topk_union_pair,
)

pytestmark = pytest.mark.timeout(60)

GROUP = "net-1"
SEED = 42
DEADLINE_S = 10.0

finite_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6),
    elements={"min_value": -1e6, "max_value": 1e6, "allow_nan": False, "allow_infinity": False},
)


def step_of(x: Array) -> float:
    return float(np.max(x)) / INT8_LEVELS - float(np.min(x)) / INT8_LEVELS


@given(finite_arrays)
@example(np.array([0.0, 300 * 5e-324]))  # a range of subnormals: its step is a badly rounded 5e-324
@example(np.array([2.2250738585072014e-308, 0.0]))  # the smallest normal: hi/255 is subnormal
@example(np.array([5e-324, 0.0]))  # the step underflows to 0
def test_dequantised_values_are_within_half_a_step(x: Array) -> None:
    encoded = encode_int8({"t": x})
    assert encoded["t"].dtype == np.uint8 and encoded["t"].shape == x.shape
    back = decode_int8(encoded, {"t": x})["t"]
    assert back.dtype == x.dtype and back.shape == x.shape
    step = step_of(x)
    # Half a step, plus the rounding of the arithmetic: the step's (hi/255 and lo/255 are each off
    # by half an ulp, at least half the smallest subnormal), times up to 255 levels, and the dtype
    # the values come back in.
    subnormal = float(np.finfo(np.float64).smallest_subnormal)
    tolerance = step / 2 + 255 * subnormal + 4 * np.finfo(x.dtype).eps * float(np.max(np.abs(x)))
    assert np.all(np.abs(back.astype(np.float64) - x.astype(np.float64)) <= tolerance)


def test_a_range_whose_step_underflows_decodes_to_its_minimum() -> None:
    """Found by hypothesis: [5e-324, 0] has a step of 0 in float64, so it decodes as a constant."""
    x = np.array([5e-324, 0.0])
    back = decode_int8(encode_int8({"t": x}), {"t": x})["t"]
    assert list(back) == [0.0, 0.0]


@given(st.data(), finite_arrays)
@settings(max_examples=200)
def test_an_int8_pair_keeps_its_sum_and_ends_within_a_step_of_the_average(data: st.DataObject, xa: Array) -> None:
    xb = data.draw(hnp.arrays(xa.dtype, xa.shape, elements={"min_value": -1e6, "max_value": 1e6, "allow_nan": False}))
    a, b = {"t": xa}, {"t": xb}
    ya, yb = int8_average(a, b)["t"], int8_average(b, a)["t"]
    # The two moves are exactly opposite: the pair's sum (the group's mean) changes only by the
    # rounding of one addition per end.
    move_a, move_b = ya.astype(np.float64) - xa, yb.astype(np.float64) - xb
    scale = max(float(np.max(np.abs(xa))), float(np.max(np.abs(xb))), 1.0)
    eps = float(np.finfo(xa.dtype).eps)
    assert np.all(np.abs(move_a + move_b) <= 4 * eps * scale)
    # Each end lands within one quantisation step of the exact average (its own residual kept).
    exact = (xa.astype(np.float64) + xb.astype(np.float64)) / 2
    step = max(step_of(xa), step_of(xb))
    for y in (ya, yb):
        assert np.all(np.abs(y - exact) <= step + 8 * eps * scale)
    # Bit-identity is what compression gives up: the ends differ by their own quantisation errors.
    assert np.all(np.abs(ya.astype(np.float64) - yb) <= 2 * step + 8 * eps * scale)


def test_the_group_mean_is_kept_over_many_compressed_rounds() -> None:
    rng = np.random.default_rng(3)
    peers = [f"p{i}" for i in range(8)]
    params = {p: {"w": rng.standard_normal((20, 5)), "b": rng.standard_normal(5)} for p in peers}
    mean0 = {k: np.mean([params[p][k] for p in peers], axis=0) for k in ("w", "b")}
    for r in range(1, 31):
        params = apply_matching_compressed(params, random_matching(peers, seed=5, round=r), "int8")
    for k in ("w", "b"):
        mean = np.mean([params[p][k] for p in peers], axis=0)
        np.testing.assert_allclose(mean, mean0[k], rtol=0, atol=1e-12)
        spread = max(float(np.max(np.abs(params[p][k] - mean))) for p in peers)
        assert spread < 0.05  # consensus, to within the quantisation of ever smaller differences


def test_constant_tensors_are_exact_and_names_are_checked() -> None:
    x = {"c": np.full((3, 2), 1.25, dtype=np.float32), "z": np.zeros(0, dtype=np.float64)}
    back = decode_int8(encode_int8(x), x)
    assert np.array_equal(back["c"], x["c"]) and back["z"].shape == (0,)
    assert canonical_compression("none") == canonical_compression("") == ""
    assert canonical_compression("int8") == "int8"
    with pytest.raises(ValueError, match="one of none, int8"):
        canonical_compression("topk")
    with pytest.raises(ValueError, match="floating-point"):
        encode_int8({"i": np.arange(3)})


def test_none_is_the_plain_average_and_the_matching_oracle() -> None:
    rng = np.random.default_rng(0)
    a, b = {"w": rng.standard_normal(7)}, {"w": rng.standard_normal(7)}
    ya, yb = compressed_pair(a, b, "none")
    assert np.array_equal(ya["w"], average(a, b)["w"]) and np.array_equal(yb["w"], ya["w"])
    matching = random_matching(["a", "b"], seed=1, round=1)
    plain = apply_matching({"a": a, "b": b}, matching)
    assert np.array_equal(apply_matching_compressed({"a": a, "b": b}, matching, "")["a"]["w"], plain["a"]["w"])


@given(st.data(), st.integers(1, 40), st.floats(0.01, 1.0))
def test_topk_union_mixes_the_union_exactly_and_keeps_the_rest(data: st.DataObject, size: int, ratio: float) -> None:
    ints = hnp.arrays(np.float64, (size,), elements=st.integers(-1000, 1000).map(float))
    a, b, ref_a, ref_b = ({"t": data.draw(ints)} for _ in range(4))
    ya, yb, new_ref_a, new_ref_b, union = topk_union_pair(a, b, ref_a, ref_b, ratio)
    picks_a = topk_indices({"t": a["t"] - ref_a["t"]}, ratio)["t"]
    picks_b = topk_indices({"t": b["t"] - ref_b["t"]}, ratio)["t"]
    chosen = np.zeros(size, dtype=bool)
    chosen[np.union1d(picks_a, picks_b)] = True
    assert union == int(chosen.sum()) and len(picks_a) == len(picks_b) == min(size, int(np.ceil(ratio * size)))
    # The union: W = (I + P) / 2 exactly (integer inputs: exact halves), bit-identical, sum kept.
    assert ya["t"][chosen].tobytes() == yb["t"][chosen].tobytes()
    assert np.array_equal(ya["t"] + yb["t"], a["t"] + b["t"])
    assert np.array_equal(ya["t"][chosen], (a["t"][chosen] + b["t"][chosen]) / 2)
    # The rest: untouched; the references take the mixed values where mixed.
    assert np.array_equal(ya["t"][~chosen], a["t"][~chosen]) and np.array_equal(yb["t"][~chosen], b["t"][~chosen])
    assert np.array_equal(new_ref_a["t"][chosen], ya["t"][chosen])
    assert np.array_equal(new_ref_a["t"][~chosen], ref_a["t"][~chosen])
    assert np.array_equal(new_ref_b["t"][~chosen], ref_b["t"][~chosen])


def test_topk_picks_the_largest_changes_and_breaks_ties_by_index() -> None:
    score = {"m": np.array([[0.0, -5.0, 1.0], [5.0, 2.0, -2.0]])}
    assert topk_indices(score, 0.5)["m"].tolist() == [1, 3, 4]  # |-5|, |5|, then the first |2|
    with pytest.raises(ValueError, match="top-k ratio"):
        topk_indices(score, 0.0)


# --- the exchange ---------------------------------------------------------------------------------


def model(seed: int) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((16, 8, 5, 5)).astype(np.float32),
        "fc.bias": rng.standard_normal(19),
        "fc.weight": rng.standard_normal((37, 19)).astype(np.float32),
        "scale": np.float64(rng.standard_normal()) * np.ones(()),
    }


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ExchangeServer, ExchangeServer]]:
    async with ExchangeServer("a") as a, ExchangeServer("b", offer_wait_s=DEADLINE_S) as b:
        yield a, b


async def both(a: ExchangeServer, b: ExchangeServer, xa: Any, xb: Any, **kw: Any) -> tuple[Any, Any]:
    return await asyncio.gather(
        exchange(a, "b", b.address, GROUP, 3, xa, seed=SEED, deadline_s=DEADLINE_S, chunk_bytes=1000, **kw),
        exchange(b, "a", a.address, GROUP, 3, xb, seed=SEED, deadline_s=DEADLINE_S, chunk_bytes=1000, **kw),
    )


async def test_an_int8_exchange_is_the_oracle_bit_for_bit_at_a_quarter_of_the_bytes(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(1), model(2)
    ra, rb = await both(a, b, xa, xb, compression="int8")
    oracle_a, oracle_b = compressed_pair(xa, xb, "int8")
    for name in xa:
        assert ra.params[name].dtype == xa[name].dtype and ra.params[name].shape == xa[name].shape
        assert ra.params[name].tobytes() == oracle_a[name].tobytes()
        assert rb.params[name].tobytes() == oracle_b[name].tobytes()
    values = sum(x.size for x in xa.values())
    full = sum(x.nbytes for x in xa.values())
    assert ra.bytes_sent == rb.bytes_received == values + 16 * len(xa)  # one byte a value, a range a tensor
    assert ra.bytes_sent < 0.26 * full


async def test_int8_composes_with_the_shared_sparsification_mask(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(3), model(4)
    ra, rb = await both(a, b, xa, xb, compression="int8", sparsity_ratio=0.3)
    oracle_a, oracle_b = compressed_pair(xa, xb, "int8", seed=SEED, round=3, ratio=0.3)
    masked = 0
    for name in xa:
        mask = sparse_mask(SEED, 3, name, xa[name].shape, 0.3)
        masked += int(mask.sum())
        assert np.array_equal(ra.params[name][~mask], xa[name][~mask])
        assert ra.params[name].tobytes() == oracle_a[name].tobytes()
        assert rb.params[name].tobytes() == oracle_b[name].tobytes()
    assert ra.bytes_sent == masked + 16 * len(xa)


async def test_different_compressions_are_a_spec_mismatch_and_both_keep_theirs(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    a, b = servers
    xa, xb = model(1), model(2)
    ra, rb = await asyncio.gather(
        exchange_or_keep(a, "b", b.address, GROUP, 1, xa, seed=SEED, deadline_s=DEADLINE_S, compression="int8"),
        exchange_or_keep(b, "a", a.address, GROUP, 1, xb, seed=SEED, deadline_s=DEADLINE_S),
    )
    assert isinstance(ra.error, SpecMismatch) and isinstance(rb.error, SpecMismatch)
    assert "compression int8 locally, none at b" in str(ra.error)
    assert all(ra.params[name] is xa[name] for name in xa)
    with pytest.raises(ValueError, match="compression must be one of"):
        await exchange(a, "b", b.address, GROUP, 1, xa, seed=SEED, deadline_s=DEADLINE_S, compression="zip")


async def test_int8_with_example_counts_keeps_the_weighted_sum(
    servers: tuple[ExchangeServer, ExchangeServer],
) -> None:
    """Compression and example weighting together: each end moves its partner's weight of the gap
    between the dequantised models, so n_a * x_a + n_b * x_b is kept (to rounding)."""
    a, b = servers
    xa = {"w": np.random.default_rng(1).standard_normal(500)}
    xb = {"w": np.random.default_rng(2).standard_normal(500)}
    ra, rb = await asyncio.gather(
        exchange(a, "b", b.address, GROUP, 3, xa, seed=SEED, deadline_s=DEADLINE_S, compression="int8", examples=300),
        exchange(b, "a", a.address, GROUP, 3, xb, seed=SEED, deadline_s=DEADLINE_S, compression="int8", examples=100),
    )
    before = 300 * xa["w"] + 100 * xb["w"]
    after = 300 * ra.params["w"] + 100 * rb.params["w"]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-9)
    # The heavier end moves a quarter of the gap, the lighter three quarters: not the plain average.
    plain_a, _ = compressed_pair(xa, xb, "int8")
    assert not np.allclose(ra.params["w"], plain_a["w"])
    assert np.abs(ra.params["w"] - xa["w"]).mean() < np.abs(rb.params["w"] - xb["w"]).mean()
