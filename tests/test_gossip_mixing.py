"""Averaging arithmetic, shared sparsification masks, consensus distance, pack/unpack."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossip.matching import Matching, default_peer_ids, random_matching
from gossip.mixing import (
    Array,
    PackSpec,
    apply_matching,
    average,
    consensus_distance,
    layout,
    masked_values,
    merge_masked,
    mixing_matrix,
    pack,
    sparse_average,
    sparse_mask,
    unpack,
)

SHAPES = {"layer1.weight": (4, 3), "layer1.bias": (4,), "head": (2, 2, 2)}


def model(rng: np.random.Generator, integer_valued: bool = False) -> dict[str, Array]:
    """A small parameter set; integer-valued floats make every average exact (dyadic rationals)."""
    if integer_valued:
        return {k: rng.integers(-1000, 1000, size=s).astype(np.float64) for k, s in SHAPES.items()}
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def peers_models(n: int, seed: int, integer_valued: bool = False) -> dict[str, dict[str, Array]]:
    rng = np.random.default_rng(seed)
    return {p: model(rng, integer_valued) for p in default_peer_ids(n)}


def flat(params: dict[str, Array]) -> Array:
    return np.concatenate([params[k].ravel() for k in sorted(params)])


# --- averaging -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 7, 16])
def test_a_round_makes_pairs_equal_and_keeps_every_coordinate_mean(n: int) -> None:
    before = peers_models(n, seed=n, integer_valued=True)
    m = random_matching(n, seed=1, round=0)
    after = apply_matching(before, m)
    for a, b in m.pairs:
        for name in SHAPES:
            assert np.array_equal(after[a][name], after[b][name])  # bit-identical
            assert np.array_equal(after[a][name], (before[a][name] + before[b][name]) / 2)
    for p in m.idle:
        assert all(np.array_equal(after[p][k], before[p][k]) for k in SHAPES)
    for name in SHAPES:
        # Exact here (integer-valued inputs): W is doubly stochastic, the sum over peers is unchanged.
        assert np.array_equal(sum(after[p][name] for p in after), sum(before[p][name] for p in before))


def test_mixing_matrix_is_symmetric_doubly_stochastic_and_is_what_apply_matching_does() -> None:
    peers = default_peer_ids(9)
    models = peers_models(9, seed=4)
    m = random_matching(peers, seed=2, round=3)
    w = mixing_matrix(m, peers)
    assert np.array_equal(w, w.T)
    assert np.array_equal(w.sum(axis=0), np.ones(9)) and np.array_equal(w.sum(axis=1), np.ones(9))
    assert set(np.unique(w)) <= {0.0, 0.5, 1.0}
    x = np.stack([flat(models[p]) for p in peers])
    after = apply_matching(models, m)
    np.testing.assert_allclose(w @ x, np.stack([flat(after[p]) for p in peers]), rtol=0, atol=1e-15)


def test_average_is_symmetric_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    x, y = model(rng), model(rng)
    for k in SHAPES:
        assert np.array_equal(average(x, y)[k], average(y, x)[k])
    x32 = {k: v.astype(np.float32) for k, v in x.items()}
    assert all(v.dtype == np.float32 for v in average(x32, x32).values())


def test_mismatched_layouts_are_rejected_with_what_differs() -> None:
    rng = np.random.default_rng(0)
    x = model(rng)
    y = dict(model(rng))
    y["head"] = np.zeros((2, 2))
    del y["layer1.bias"]
    y["extra"] = np.zeros(1)
    with pytest.raises(ValueError) as info:
        average(x, y)
    msg = str(info.value)
    assert "layer1.bias" in msg and "extra" in msg and "head: shape (2, 2, 2) locally, (2, 2) remotely" in msg
    with pytest.raises(ValueError, match="head: dtype <f8 locally, <f4 remotely"):
        average(x, {k: v.astype(np.float32) for k, v in x.items()})
    with pytest.raises(ValueError, match="floating-point"):
        average({"a": np.arange(3)}, {"a": np.arange(3)})


# --- sparsification ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    round=st.integers(0, 10**6),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    ratio=st.floats(0.01, 1.0),
)
def test_every_peer_derives_the_same_mask(seed: int, round: int, shape: tuple[int, ...], ratio: float) -> None:
    mask = sparse_mask(seed, round, "w", shape, ratio)
    assert mask.shape == shape and mask.dtype == np.bool_
    assert np.array_equal(mask, sparse_mask(seed, round, "w", list(shape), ratio))  # another peer's call
    size = math.prod(shape)
    assert int(mask.sum()) == min(size, math.ceil(ratio * size))


def test_masks_differ_across_rounds_and_tensors() -> None:
    a = sparse_mask(1, 5, "w", (1000,), 0.1)
    assert not np.array_equal(a, sparse_mask(1, 6, "w", (1000,), 0.1))
    assert not np.array_equal(a, sparse_mask(1, 5, "v", (1000,), 0.1))
    assert not np.array_equal(a, sparse_mask(2, 5, "w", (1000,), 0.1))
    assert sparse_mask(1, 5, "w", (10,), 1.0).all()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sparse_mask(1, 5, "w", (10,), 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), round=st.integers(0, 1000), ratio=st.floats(0.05, 1.0))
def test_sparse_average_changes_only_masked_coordinates(seed: int, round: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    x, y = model(rng), model(rng)
    x_after = sparse_average(x, y, seed, round, ratio)
    y_after = sparse_average(y, x, seed, round, ratio)
    # The wire path (send the masked values, merge them) is the same computation.
    wire = merge_masked(x, masked_values(y, seed, round, ratio), seed, round, ratio)
    for name, shape in SHAPES.items():
        mask = sparse_mask(seed, round, name, shape, ratio)
        assert np.array_equal(x_after[name][~mask], x[name][~mask])
        assert np.array_equal(y_after[name][~mask], y[name][~mask])
        assert np.array_equal(x_after[name][mask], y_after[name][mask])
        np.testing.assert_allclose(x_after[name][mask], (x[name][mask] + y[name][mask]) / 2, rtol=1e-15)
        assert np.array_equal(wire[name], x_after[name])
        np.testing.assert_allclose(x_after[name] + y_after[name], x[name] + y[name], rtol=1e-14)


def test_sparsified_round_for_all_peers() -> None:
    models = peers_models(6, seed=3)
    m = random_matching(6, seed=0, round=2)
    full = apply_matching(models, m, seed=9, ratio=1.0)
    assert all(np.array_equal(full[p][k], apply_matching(models, m)[p][k]) for p in models for k in SHAPES)
    sparse = apply_matching(models, m, seed=9, ratio=0.25)
    a, b = m.pairs[0]
    for k, shape in SHAPES.items():
        mask = sparse_mask(9, 2, k, shape, 0.25)
        assert np.array_equal(sparse[a][k][mask], sparse[b][k][mask])
        assert np.array_equal(sparse[a][k][~mask], models[a][k][~mask])
    with pytest.raises(ValueError, match="shared seed"):
        apply_matching(models, m, ratio=0.5)
    with pytest.raises(ValueError, match="expected"):
        merge_masked(models[a], {k: np.zeros(1) for k in SHAPES}, 9, 2, 0.25)


# --- consensus distance --------------------------------------------------------------------------


def test_consensus_distance_definition() -> None:
    # Mean is (1, 1); squared distances 2, 2, 0, 0 -> mean 1.
    assert consensus_distance([np.array([0.0, 0.0]), np.array([2.0, 2.0]), [1.0, 1.0], [1.0, 1.0]]) == 1.0
    assert consensus_distance([np.ones((3, 3))] * 4) == 0.0
    assert consensus_distance([np.array([5.0])]) == 0.0
    with pytest.raises(ValueError):
        consensus_distance([])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 2**32), round=st.integers(0, 100))
def test_a_round_never_increases_consensus_distance(n: int, seed: int, round: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, 5))
    m = random_matching(n, seed, round)
    after = mixing_matrix(m, default_peer_ids(n)) @ x
    assert consensus_distance(list(after)) <= consensus_distance(list(x)) + 1e-12
    np.testing.assert_allclose(after.mean(axis=0), x.mean(axis=0), atol=1e-12)


def test_matching_with_unknown_peer_is_an_error() -> None:
    m = Matching(0, (("a", "z"),), (), 1.0)
    with pytest.raises(ValueError, match="no parameters"):
        apply_matching({"a": {"w": np.zeros(1)}}, m)


# --- pack / unpack -------------------------------------------------------------------------------

DTYPES = st.sampled_from(["<f4", "<f8", ">f8", "<f2", "<i8", "<u1", "<c16", "|b1"])


@st.composite
def param_sets(draw: st.DrawFn) -> dict[str, Array]:
    names = draw(st.lists(st.text("abcxyz._", min_size=1, max_size=6), unique=True, max_size=5))
    return {
        name: draw(hnp.arrays(np.dtype(draw(DTYPES)), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
        for name in names
    }


@settings(max_examples=60, deadline=None)
@given(params=param_sets(), chunk_size=st.integers(1, 64))
def test_pack_unpack_round_trip(params: dict[str, Array], chunk_size: int) -> None:
    spec, data = pack(params, chunk_size=chunk_size)
    assert len(data) == spec.total_bytes
    assert len(spec.checksums) == -(-len(data) // chunk_size)
    out = unpack(spec, data, expected=layout(params))
    assert sorted(out) == sorted(params)
    for name, value in params.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape
        assert out[name].tobytes() == value.tobytes()  # bit-exact, nan payloads included
        assert out[name].flags.writeable


def test_corrupted_chunk_is_named() -> None:
    params: dict[str, Array] = {"a": np.arange(100, dtype=np.float64), "b": np.ones((3, 3), dtype=np.float32)}
    spec, data = pack(params, chunk_size=256)
    corrupt = bytearray(data)
    corrupt[300] ^= 0x01  # chunk 1 covers bytes 256..512
    with pytest.raises(ValueError, match=r"checksum mismatch in chunk 1 \(bytes 256\.\.512\)"):
        unpack(spec, bytes(corrupt))
    with pytest.raises(ValueError, match="bytes, spec describes"):
        unpack(spec, data[:-1])


def test_unpack_rejects_a_mismatched_or_malformed_spec() -> None:
    params = {"a": np.arange(10, dtype=np.float64)}
    spec, data = pack(params, chunk_size=16)
    with pytest.raises(ValueError, match="a: shape"):
        unpack(spec, data, expected=layout({"a": np.zeros(11)}))
    with pytest.raises(ValueError, match="checksums for"):
        unpack(PackSpec(spec.tensors, spec.chunk_size, spec.checksums[:-1]), data)
    with pytest.raises(ValueError, match="unknown dtype"):
        unpack(PackSpec((spec.tensors[0].__class__("a", "nonsense", (10,)),), 16, spec.checksums), data)
    with pytest.raises(ValueError, match="numeric"):
        pack({"o": np.array([object()], dtype=object)})
