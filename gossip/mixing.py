"""The averaging arithmetic of a gossip round, and the byte layout models travel in.

One round applies ``W = (I + P) / 2`` where ``P`` is the permutation of the round's matching: two
matched peers both replace their parameters with the average of the two, an idle peer keeps its
own. ``W`` is symmetric and doubly stochastic, so every round preserves the mean of every
coordinate across peers while pulling the peers together.

With sparsification only a shared random subset of coordinates is exchanged and averaged; the
others keep their local values. The subset is a pure function of (seed, round, tensor name, shape,
ratio), so both ends of a pair derive the same mask without sending it (GossipFL's shared seed).

Parameter sets are ``dict[str, numpy.ndarray]``; every function walks names in sorted order so the
result never depends on dict insertion order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gossip.matching import Matching, round_rng

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_CHUNK_SIZE",
    "Array",
    "PackSpec",
    "Params",
    "TensorSpec",
    "apply_matching",
    "apply_matching_compressed",
    "average",
    "canonical_compression",
    "compressed_pair",
    "consensus_distance",
    "decode_int8",
    "encode_int8",
    "int8_average",
    "int8_merge",
    "is_count",
    "layout",
    "masked_values",
    "merge_masked",
    "mixing_matrix",
    "pack",
    "pair_weights",
    "require_same_layout",
    "sparse_average",
    "sparse_mask",
    "topk_indices",
    "topk_union_pair",
    "unpack",
    "weighted_average",
]

Array = npt.NDArray[Any]
Params = Mapping[str, Array]

DEFAULT_CHUNK_SIZE = 1 << 20
"""1 MiB chunks: a corrupted or lost chunk costs a 1 MiB resend, not the whole model."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's place in a packed model: its name, numpy dtype string (with byte order, e.g.
    ``'<f4'``) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def layout(params: Params) -> tuple[TensorSpec, ...]:
    """The (sorted) names, dtypes and shapes of a parameter set."""
    return tuple(TensorSpec(name, params[name].dtype.str, tuple(params[name].shape)) for name in sorted(params))


def require_same_layout(local: Sequence[TensorSpec], remote: Sequence[TensorSpec]) -> None:
    """Raise ValueError naming every difference between two layouts.

    Averaging a model with a different architecture (or dtype) would silently broadcast or upcast;
    it must fail loudly, saying what differs, before any arithmetic.
    """
    mine = {t.name: t for t in local}
    theirs = {t.name: t for t in remote}
    problems: list[str] = []
    missing = sorted(mine.keys() - theirs.keys())
    extra = sorted(theirs.keys() - mine.keys())
    if missing:
        problems.append(f"missing from remote: {missing}")
    if extra:
        problems.append(f"not in local: {extra}")
    for name in sorted(mine.keys() & theirs.keys()):
        a, b = mine[name], theirs[name]
        if a.dtype != b.dtype:
            problems.append(f"{name}: dtype {a.dtype} locally, {b.dtype} remotely")
        if a.shape != b.shape:
            problems.append(f"{name}: shape {a.shape} locally, {b.shape} remotely")
    if problems:
        raise ValueError("parameter layouts differ: " + "; ".join(problems))


def _require_float(params: Params) -> None:
    for name in sorted(params):
        if not np.issubdtype(params[name].dtype, np.floating):
            raise ValueError(f"{name}: can only average floating-point tensors, got dtype {params[name].dtype}")


def _mean2(a: Array, b: Array) -> Array:
    # a*0.5 + b*0.5 rather than (a+b)/2: no overflow near the dtype's maximum, and IEEE addition is
    # commutative, so both ends of a pair compute bit-identical results whichever is "local".
    half = a.dtype.type(0.5)
    return a * half + b * half


def average(local: Params, remote: Params) -> dict[str, Array]:
    """What a matched peer keeps: the coordinate-wise mean of the two parameter sets.

    ``average(x, y)`` and ``average(y, x)`` are bit-identical, so after a round the two peers hold
    exactly the same parameters.
    """
    require_same_layout(layout(local), layout(remote))
    _require_float(local)
    return {name: _mean2(np.asarray(local[name]), np.asarray(remote[name])) for name in sorted(local)}


def is_count(n: object, minimum: int = 0) -> bool:
    """``n`` is an integer (numpy's included, never a bool) in [minimum, 2^64): what an example count
    must be to travel in ``ExchangeHeader.examples`` (uint64)."""
    return not isinstance(n, bool) and isinstance(n, int | np.integer) and bool(minimum <= n < 2**64)


def pair_weights(local_examples: int, remote_examples: int) -> tuple[float, float]:
    """The weights a matched pair averages with: ``n_local / (n_local + n_remote)`` and
    ``n_remote / (n_local + n_remote)``, so that ``n_a * x + n_b * x`` after the exchange equals
    ``n_a * x_a + n_b * x_b`` before it and the example-weighted mean over peers is preserved.

    0 on either side means "no count given": both ends then use ``(0.5, 0.5)``, the unweighted rule
    (which is also what a peer that predates example counts computes). Python's int division rounds
    correctly, so both ends get the same two floats.
    """
    for n in (local_examples, remote_examples):
        if not is_count(n):
            raise ValueError(f"example counts must be integers in [0, 2^64), got {n!r}")
    if local_examples == 0 or remote_examples == 0:
        return 0.5, 0.5
    total = int(local_examples) + int(remote_examples)
    return int(local_examples) / total, int(remote_examples) / total


def _weighted2(a: Array, wa: float, b: Array, wb: float) -> Array:
    # Each end computes x_own * w_own + x_other * w_other: the same two products in the other order,
    # and IEEE addition is commutative, so both ends are bit-identical. float16 is averaged in
    # float32 (its 11-bit significand would round the weights), then rounded back once.
    work = np.promote_types(a.dtype, np.float32)
    out = a.astype(work, copy=False) * work.type(wa) + b.astype(work, copy=False) * work.type(wb)
    return out.astype(a.dtype, copy=False)


def weighted_average(local: Params, remote: Params, local_examples: int, remote_examples: int) -> dict[str, Array]:
    """What a matched peer keeps when both sides count their examples: per coordinate
    ``x_local * w_local + x_remote * w_remote`` with :func:`pair_weights`.

    ``weighted_average(x, y, m, n)`` and ``weighted_average(y, x, n, m)`` are bit-identical; with a
    count of 0 on either side it is :func:`average` exactly.
    """
    w_local, w_remote = pair_weights(local_examples, remote_examples)
    if local_examples == 0 or remote_examples == 0:
        return average(local, remote)
    require_same_layout(layout(local), layout(remote))
    _require_float(local)
    return {
        name: _weighted2(np.asarray(local[name]), w_local, np.asarray(remote[name]), w_remote) for name in sorted(local)
    }


def sparse_mask(seed: int, round: int, name: str, shape: Sequence[int], ratio: float) -> npt.NDArray[np.bool_]:
    """The coordinates of tensor ``name`` exchanged in ``round``: exactly ``ceil(ratio * size)`` of them.

    A pure function of its arguments (SHA-256-seeded generator, see ``round_rng``), so every peer
    computes the same mask and only the selected values need to travel. An exact count, rather than
    an independent coin per coordinate, makes the payload size known in advance.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sparsification ratio must be in (0, 1], got {ratio}")
    dims = tuple(int(d) for d in shape)
    size = math.prod(dims)
    mask = np.zeros(size, dtype=np.bool_)
    k = min(size, math.ceil(ratio * size))
    if k == size:
        mask[:] = True
    elif k > 0:
        rng = round_rng(seed, round, f"sparse-mask\x00{name}\x00{dims}")
        mask[rng.choice(size, size=k, replace=False)] = True
    return mask.reshape(dims)


def masked_values(params: Params, seed: int, round: int, ratio: float) -> dict[str, Array]:
    """What a peer sends under sparsification: per tensor, the masked values as a 1-D array (in
    C order of the mask)."""
    return {
        name: np.asarray(params[name])[sparse_mask(seed, round, name, params[name].shape, ratio)]
        for name in sorted(params)
    }


def merge_masked(local: Params, remote_values: Params, seed: int, round: int, ratio: float) -> dict[str, Array]:
    """What a peer keeps after a sparsified exchange: masked coordinates averaged with the remote
    values, all others untouched."""
    _require_float(local)
    if sorted(local) != sorted(remote_values):
        raise ValueError(f"tensor names differ: local {sorted(local)}, remote {sorted(remote_values)}")
    out: dict[str, Array] = {}
    for name in sorted(local):
        mine = np.asarray(local[name])
        mask = sparse_mask(seed, round, name, mine.shape, ratio)
        theirs = np.asarray(remote_values[name])
        if theirs.dtype != mine.dtype:
            raise ValueError(f"{name}: dtype {mine.dtype} locally, {theirs.dtype} remotely")
        if theirs.shape != (int(mask.sum()),):
            raise ValueError(f"{name}: expected {int(mask.sum())} masked values, got an array of shape {theirs.shape}")
        merged = mine.copy()
        merged[mask] = _mean2(mine[mask], theirs)
        out[name] = merged
    return out


def sparse_average(local: Params, remote: Params, seed: int, round: int, ratio: float) -> dict[str, Array]:
    """``average`` restricted to the round's shared mask (both peers' view in one call)."""
    require_same_layout(layout(local), layout(remote))
    return merge_masked(local, masked_values(remote, seed, round, ratio), seed, round, ratio)


def apply_matching(
    params_by_peer: Mapping[str, Params], matching: Matching, *, seed: int | None = None, ratio: float = 1.0
) -> dict[str, dict[str, Array]]:
    """One whole round for every peer at once (``W @ X``), as a simulation or a test oracle.

    Matched peers average (under the shared mask when ``ratio < 1``, which then needs ``seed``);
    idle peers and peers absent from the matching keep their parameters.
    """
    if ratio < 1.0 and seed is None:
        raise ValueError("a sparsified round needs the shared seed")
    out = {peer: dict(params) for peer, params in params_by_peer.items()}
    for a, b in matching.pairs:
        if a not in params_by_peer or b not in params_by_peer:
            raise ValueError(f"pair ({a}, {b}) of round {matching.round} names a peer with no parameters")
        if ratio >= 1.0:
            mixed = average(params_by_peer[a], params_by_peer[b])
        else:
            assert seed is not None
            mixed = sparse_average(params_by_peer[a], params_by_peer[b], seed, matching.round, ratio)
        out[a] = mixed
        out[b] = dict(mixed)
    return out


def mixing_matrix(matching: Matching, peers: Sequence[str]) -> npt.NDArray[np.float64]:
    """``W = (I + P) / 2`` over ``peers`` (rows in the given order): 1/2 on the diagonal and between
    partners, 1 on the diagonal of idle peers. Symmetric and doubly stochastic."""
    index = {p: k for k, p in enumerate(peers)}
    if len(index) != len(peers):
        raise ValueError("peer ids must be unique")
    w = np.eye(len(peers))
    for a, b in matching.pairs:
        i, j = index[a], index[b]
        w[i, i] = w[j, j] = w[i, j] = w[j, i] = 0.5
    return w


def consensus_distance(vectors: Sequence[npt.ArrayLike]) -> float:
    """Mean over peers of the squared L2 distance to the peers' average.

    ``(1/N) * sum_i ||x_i - x_bar||^2`` with ``x_bar = (1/N) * sum_i x_i``, each ``x_i`` flattened
    (a whole model as one vector), computed in float64. 0.0 means every peer holds the same model;
    a gossip round with a doubly stochastic W never increases it.
    """
    if len(vectors) == 0:
        raise ValueError("consensus distance of no peers")
    x = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    centred = x - x.mean(axis=0)
    return float(np.einsum("ij,ij->", centred, centred) / x.shape[0])


@dataclass(frozen=True)
class PackSpec:
    """How to read a packed model: the tensor layout, the chunking and one SHA-256 per chunk.

    The byte stream is each tensor's bytes in C order, tensors in name order, concatenated; chunk
    ``k`` covers bytes ``[k * chunk_size, (k + 1) * chunk_size)``.
    """

    tensors: tuple[TensorSpec, ...]
    chunk_size: int
    checksums: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def pack(params: Params, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[PackSpec, bytes]:
    """Flatten a parameter set into one byte string, with a spec to read it back and verify it."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    for name in sorted(params):
        if params[name].dtype.kind not in "biufc":
            raise ValueError(f"{name}: cannot pack dtype {params[name].dtype} (numeric dtypes only)")
    data = b"".join(np.ascontiguousarray(params[name]).tobytes() for name in sorted(params))
    checksums = tuple(
        hashlib.sha256(data[start : start + chunk_size]).hexdigest() for start in range(0, len(data), chunk_size)
    )
    return PackSpec(layout(params), chunk_size, checksums), data


def unpack(spec: PackSpec, data: bytes, expected: Sequence[TensorSpec] | None = None) -> dict[str, Array]:
    """Read back what ``pack`` wrote, verifying every chunk; ``expected`` (usually the local
    ``layout``) additionally rejects a model of another shape before anything is decoded.

    Raises ValueError saying which chunk (and byte range) is corrupt, or how the spec is malformed.
    The arrays returned are fresh, writable copies.
    """
    if expected is not None:
        require_same_layout(expected, spec.tensors)
    names = [t.name for t in spec.tensors]
    if names != sorted(set(names)):
        raise ValueError(f"spec tensors must have unique names in sorted order, got {names}")
    if spec.chunk_size <= 0:
        raise ValueError(f"spec chunk_size must be > 0, got {spec.chunk_size}")
    for t in spec.tensors:
        if any(d < 0 for d in t.shape):
            raise ValueError(f"{t.name}: negative dimension in shape {t.shape}")
        try:
            np.dtype(t.dtype)
        except TypeError as exc:
            raise ValueError(f"{t.name}: unknown dtype {t.dtype!r}") from exc
        if np.dtype(t.dtype).kind not in "biufc":
            raise ValueError(f"{t.name}: cannot unpack dtype {t.dtype} (numeric dtypes only)")
    total = spec.total_bytes
    if len(data) != total:
        raise ValueError(f"packed model is {len(data)} bytes, spec describes {total}")
    n_chunks = -(-total // spec.chunk_size)
    if len(spec.checksums) != n_chunks:
        raise ValueError(f"spec has {len(spec.checksums)} checksums for {n_chunks} chunks of {spec.chunk_size} bytes")
    for k, want in enumerate(spec.checksums):
        start = k * spec.chunk_size
        got = hashlib.sha256(data[start : start + spec.chunk_size]).hexdigest()
        if got != want:
            end = min(start + spec.chunk_size, total)
            raise ValueError(f"checksum mismatch in chunk {k} (bytes {start}..{end}): expected {want}, got {got}")
    out: dict[str, Array] = {}
    offset = 0
    for t in spec.tensors:
        out[t.name] = (
            np.frombuffer(data, dtype=np.dtype(t.dtype), count=math.prod(t.shape), offset=offset)
            .reshape(t.shape)
            .copy()
        )
        offset += t.nbytes
    return out


# --- compression (issue 19, item 6) ---------------------------------------------------------------
#
# 8-bit quantisation with the residual kept in the model: each end sends its values quantised, both
# ends dequantise both messages the same way, and each moves by half the difference of the two
# dequantised models. The moves are exactly opposite (IEEE subtraction is antisymmetric), so the
# pair's sum, and the group's mean, are preserved up to the rounding of one addition per end, as
# in the uncompressed average; what is given up is bit-identity: the two ends stay apart by the
# difference of their own quantisation errors (at most one step). See DESIGN.md, "Compression".

COMPRESSIONS = ("none", "int8")
"""What a group may choose: values as they are, or 8-bit affine quantisation per tensor."""

INT8_LEVELS = 255
"""Steps between a tensor's minimum and maximum: 256 levels, one uint8 each."""

_RANGE_SUFFIX = "\x00int8-range"


def canonical_compression(name: str) -> str:
    """``""`` for no compression (``""`` or ``"none"``), else the name itself; ValueError naming the
    choices for anything else. The empty form is what specs and headers carry (old groups have it)."""
    if name in ("", "none"):
        return ""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")
    return name


def encode_int8(values: Params) -> dict[str, Array]:
    """What travels under ``int8``: per tensor ``NAME`` its values as uint8 levels (same shape) and
    ``NAME + '\\x00int8-range'``, a float64 pair ``(minimum, step)``; ``decode_int8`` reads it back.

    Level ``q`` stands for ``minimum + q * step`` with ``step = (maximum - minimum) / 255``, each
    value rounded to the nearest level, so the error is at most ``step / 2`` plus the rounding of
    the arithmetic: a few ulps of the largest value, and at most 255 of the smallest subnormals
    (~1e-321), which only a range of subnormals notices (one of a few of them has step 0 and decodes
    to its minimum). A constant tensor has step 0 and is exact. A tensor holding NaN or infinity
    gets a non-finite range, which the receiver refuses like any non-finite parameters.
    """
    _require_float(values)
    out: dict[str, Array] = {}
    for name in sorted(values):
        x = np.asarray(values[name])
        levels = np.zeros(x.shape, dtype=np.uint8)
        lo = hi = 0.0
        if x.size:
            with np.errstate(invalid="ignore", over="ignore"):
                lo, hi = float(np.min(x)), float(np.max(x))
        step = hi / INT8_LEVELS - lo / INT8_LEVELS  # (hi - lo) / 255 without overflow near the maximum
        if x.size and math.isfinite(step) and step > 0.0:
            scaled = (x.astype(np.float64) - lo) / step
            levels = np.clip(np.rint(scaled), 0, INT8_LEVELS).astype(np.uint8)
        out[name] = levels
        out[name + _RANGE_SUFFIX] = np.array([lo, step], dtype=np.float64)
    return out


def decode_int8(encoded: Params, like: Params) -> dict[str, Array]:
    """The values ``encode_int8`` stands for, in ``like``'s dtypes and shapes. A pure function of the
    encoded arrays: the sender and the receiver of one message compute bit-identical results."""
    out: dict[str, Array] = {}
    for name in sorted(like):
        ref = np.asarray(like[name])
        levels = np.asarray(encoded[name])
        if levels.dtype != np.uint8 or levels.shape != ref.shape:
            raise ValueError(f"{name}: expected uint8 levels of shape {ref.shape}, got {levels.dtype} {levels.shape}")
        lo, step = (float(v) for v in np.asarray(encoded[name + _RANGE_SUFFIX], dtype=np.float64))
        with np.errstate(invalid="ignore", over="ignore"):
            out[name] = (lo + levels.astype(np.float64) * step).astype(ref.dtype)
    return out


def int8_merge(
    local: Params, local_decoded: Params, remote_decoded: Params, remote_weight: float = 0.5
) -> dict[str, Array]:
    """What an end keeps after an ``int8`` exchange: ``x + (remote - own) / 2`` over the dequantised
    models. The other end adds exactly the negated move, so the pair's sum is kept (to rounding),
    and each end keeps its own quantisation error ``x - own`` (error feedback without state).

    ``remote_weight``: the partner's weight from :func:`pair_weights` when both ends counted their
    examples: each end moves ``w_partner * (partner - own)``, so ``n_a * x_a + n_b * x_b`` is kept."""
    _require_float(local)
    out: dict[str, Array] = {}
    for name in sorted(local):
        x = np.asarray(local[name])
        weight = x.dtype.type(remote_weight)
        out[name] = x + (np.asarray(remote_decoded[name]) * weight - np.asarray(local_decoded[name]) * weight)
    return out


def int8_average(local: Params, remote: Params) -> dict[str, Array]:
    """Both ends' view of an ``int8`` exchange in one call (for ``local``); an oracle for tests and
    the simulation. ``int8_average(y, x)`` is what the other end keeps."""
    require_same_layout(layout(local), layout(remote))
    mine, theirs = encode_int8(local), encode_int8(remote)
    return int8_merge(local, decode_int8(mine, local), decode_int8(theirs, remote))


def compressed_pair(
    a: Params, b: Params, compression: str, *, seed: int | None = None, round: int = 0, ratio: float = 1.0
) -> tuple[dict[str, Array], dict[str, Array]]:
    """What the two ends of a pair keep under ``compression`` (and the shared mask when ``ratio < 1``):
    the oracle the exchange matches and the digits example simulates with."""
    if canonical_compression(compression) == "":
        if ratio >= 1.0:
            mixed = average(a, b)
        else:
            assert seed is not None, "a sparsified round needs the shared seed"
            mixed = sparse_average(a, b, seed, round, ratio)
        return mixed, dict(mixed)
    require_same_layout(layout(a), layout(b))
    if ratio >= 1.0:
        return int8_average(a, b), int8_average(b, a)
    assert seed is not None, "a sparsified round needs the shared seed"
    sa, sb = masked_values(a, seed, round, ratio), masked_values(b, seed, round, ratio)
    ma, mb = int8_average(sa, sb), int8_average(sb, sa)
    out_a: dict[str, Array] = {}
    out_b: dict[str, Array] = {}
    for name in sorted(a):
        mask = sparse_mask(seed, round, name, np.asarray(a[name]).shape, ratio)
        out_a[name] = np.array(a[name], copy=True)
        out_a[name][mask] = ma[name]
        out_b[name] = np.array(b[name], copy=True)
        out_b[name][mask] = mb[name]
    return out_a, out_b


def apply_matching_compressed(
    params_by_peer: Mapping[str, Params],
    matching: Matching,
    compression: str,
    *,
    seed: int | None = None,
    ratio: float = 1.0,
) -> dict[str, dict[str, Array]]:
    """``apply_matching`` with each pair exchanging under ``compression`` (``compressed_pair``)."""
    out = {peer: dict(params) for peer, params in params_by_peer.items()}
    for a, b in matching.pairs:
        if a not in params_by_peer or b not in params_by_peer:
            raise ValueError(f"pair ({a}, {b}) of round {matching.round} names a peer with no parameters")
        out[a], out[b] = compressed_pair(
            params_by_peer[a], params_by_peer[b], compression, seed=seed, round=matching.round, ratio=ratio
        )
    return out


# --- top-k (not on the wire yet: see DESIGN.md, "Compression") ----------------------------------


def topk_indices(score: Params, ratio: float) -> dict[str, npt.NDArray[np.int64]]:
    """Per tensor, the flat (C order) indices of the ``ceil(ratio * size)`` largest ``|score|``,
    sorted; ties go to the smaller index, so the choice is a pure function of the values."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"top-k ratio must be in (0, 1], got {ratio}")
    out: dict[str, npt.NDArray[np.int64]] = {}
    for name in sorted(score):
        flat = np.abs(np.asarray(score[name], dtype=np.float64)).ravel()
        k = min(flat.size, math.ceil(ratio * flat.size))
        order = np.argsort(-flat, kind="stable")[:k]
        out[name] = np.sort(order).astype(np.int64)
    return out


def topk_union_pair(
    a: Params, b: Params, ref_a: Params, ref_b: Params, ratio: float
) -> tuple[dict[str, Array], dict[str, Array], dict[str, Array], dict[str, Array], int]:
    """Two-message top-k with error feedback, both ends at once: each end picks the coordinates
    where its model moved most since they were last mixed (``|x - ref|``, the residual of what it
    has not shared), the ends exchange those indices, then their values on the union, and both
    average the union exactly (``_mean2``: bit-identical, the pair's sum kept) and keep the rest.
    ``ref`` (the Worker's state) takes the mixed values on the union. Returns both ends' new
    parameters and references, and the union's size (values each end sends in the second message).
    """
    require_same_layout(layout(a), layout(b))
    _require_float(a)
    picks_a = topk_indices({n: np.asarray(a[n]) - np.asarray(ref_a[n]) for n in a}, ratio)
    picks_b = topk_indices({n: np.asarray(b[n]) - np.asarray(ref_b[n]) for n in b}, ratio)
    out_a: dict[str, Array] = {}
    out_b: dict[str, Array] = {}
    new_ref_a: dict[str, Array] = {}
    new_ref_b: dict[str, Array] = {}
    union_size = 0
    for name in sorted(a):
        union = np.union1d(picks_a[name], picks_b[name])
        union_size += union.size
        xa, xb = np.array(a[name], copy=True), np.array(b[name], copy=True)
        mixed = _mean2(xa.ravel()[union], xb.ravel()[union])
        xa.ravel()[union] = mixed
        xb.ravel()[union] = mixed
        ra, rb = np.array(ref_a[name], copy=True), np.array(ref_b[name], copy=True)
        ra.ravel()[union] = mixed
        rb.ravel()[union] = mixed
        out_a[name], out_b[name], new_ref_a[name], new_ref_b[name] = xa, xb, ra, rb
    return out_a, out_b, new_ref_a, new_ref_b, union_size
