"""One gossip round's model exchange between two matched peers, over gRPC on the gossip port.

The pure core (``gossip.mixing``) says what an exchange does to the parameters; this module moves
the bytes. It is the only module of the package that opens sockets and reads a clock. Each node runs
one :class:`ExchangeServer` on its *gossip port*, a grpc.aio server apart from the control plane's
client port: bulk model bytes never share a connection (or its flow-control window) with client
calls, and Raft keeps its own socket, so consensus traffic keeps priority over training traffic.

Per matched pair exactly one side dials: the one with the smaller node id (the replicated round
stores pairs as ``(a, b)`` with ``a < b``; ``a`` dials ``b``). The other side posts an *offer* on its
server and waits. Both then run the same protocol over one bidirectional stream (see
``proto/controlplane/v1/gossip_peer.proto``)::

    header, data x chunk_count, trailer, accept   (each direction, concurrently)

and both end with bit-identical averages on the exchanged coordinates, or both keep their own
parameters: a side mixes only after it verified everything it received AND the peer accepted what
it sent; the dialer additionally waits for the call to end cleanly, which happens only after the
serving side has received the dialer's accept. What remains is the two-generals window (the
serving side committed, the final status is lost): the dialer then keeps its own parameters and
reports the failure. See DESIGN.md, "The exchange".

Errors (all raised by :func:`exchange`; :func:`exchange_or_keep` returns them instead)::

    ExchangeError               the exchange did not complete; the caller keeps its own parameters
    ├── PeerLost                the peer went away
    │   ├── PeerTimeout         the deadline passed (dead, hung or slow peer, or it never showed up)
    │   └── PeerUnavailable     the stream broke (peer stopped or reset) or our server is stopping
    ├── CorruptChunk            a chunk's SHA-256 did not match its data (here, or at the peer)
    ├── SpecMismatch            tensor names, shapes, dtypes, the sparsity ratio or compression differ
    ├── RoundMismatch           another group, round or seed, or not the partner the round matched
    └── ProtocolError           malformed or out-of-order message, unsupported protocol version
        └── TruncatedStream     the peer's stream ended before its trailer or its accept

An error the peer detected arrives as an ``ExchangeRefusal`` and is raised here as the same class,
with ``from_peer=True``. Bad arguments (a ratio outside (0, 1], integer tensors, ...) are caller
bugs and raise ``ValueError`` before any I/O.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from controlplane.errors import ControlPlaneError
from controlplane.grpc_options import GOSSIP_CHANNEL_OPTIONS, GOSSIP_SERVER_OPTIONS
from controlplane.v1 import gossip_peer_pb2 as pb
from controlplane.v1 import gossip_peer_pb2_grpc as pb_grpc
from gossip.artifacts import tls_credentials  # one helper for both ports; artifacts stays numpy-free
from gossip.bandwidth import BandwidthTable, LinkEstimate
from gossip.mixing import (
    DEFAULT_CHUNK_SIZE,
    Array,
    PackSpec,
    Params,
    TensorSpec,
    canonical_compression,
    decode_int8,
    encode_int8,
    int8_merge,
    is_count,
    layout,
    pack,
    pair_weights,
    sparse_mask,
    weighted_average,
)
from gossip.mixing import require_same_layout as _require_same_layout

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_OFFER_WAIT_S",
    "MAX_CHUNK_BYTES",
    "PROTOCOL_VERSION",
    "CorruptChunk",
    "ExchangeError",
    "ExchangeResult",
    "ExchangeServer",
    "NotFinite",
    "Offer",
    "PeerLost",
    "PeerTimeout",
    "PeerUnavailable",
    "ProtocolError",
    "RoundMismatch",
    "SpecMismatch",
    "TruncatedStream",
    "exchange",
    "exchange_or_keep",
    "spec_digest",
    "tls_credentials",
]

PROTOCOL_VERSION = 1

# A partner's parameters refused for NaN or infinity (``_require_finite``); the refusal also
# reaches the partner as EXCHANGE_FAILURE_NOT_FINITE and its round report.
REFUSED_IDENTITY = Counter(
    "gossip_exchanges_refused_identity_total",
    "Dialers refused because their certificate does not name the node they claim (TLS gossip)",
)
REFUSED_NOT_FINITE = Counter(
    "gossip_parameters_refused_not_finite_total", "Partner parameters refused for NaN or infinite values"
)

DEFAULT_CHUNK_BYTES = DEFAULT_CHUNK_SIZE
"""1 MiB per message: a large model streams as many small messages, never as one huge one."""

MAX_CHUNK_BYTES = 4 * 1024 * 1024
"""Upper bound on a chunk a peer may announce (and on what a caller may choose)."""

DEFAULT_OFFER_WAIT_S = 10.0
"""How long the serving side holds an incoming exchange open while waiting for its own offer of that
round (the dialer may be a little ahead); also bounded by the dialer's own gRPC deadline."""

# After a local failure the sender gets this long to tell the peer why before it is cancelled: a
# refusal is best effort (the peer may be the one that broke), never a reason to wait out a deadline.
_REFUSAL_GRACE_S = 1.0

# Chunks received but not yet verified, at most (see _receive).
_HASHING_AHEAD = 8

# Offer.result's last resort in case the handler never resolves the offer: the deadline timer and the
# session's own timeout should always win by a wide margin.
_RESOLVE_SLACK_S = 2.0


BoolArray = npt.NDArray[np.bool_]


# --- errors ---------------------------------------------------------------------------------------


class ExchangeError(ControlPlaneError):
    """The exchange did not complete; whoever called it keeps its own parameters.

    ``from_peer`` is True when the peer detected the problem and said so (an ``ExchangeRefusal``).
    """

    def __init__(self, message: str, *, from_peer: bool = False) -> None:
        super().__init__(message)
        self.from_peer = from_peer


class PeerLost(ExchangeError):
    """The peer went away: it timed out or its stream broke. The link deserves a penalty."""


class PeerTimeout(PeerLost):
    """The deadline passed first: the peer is dead, hung, too slow, or never dialed / never posted its
    offer for the round. Raised no later than the deadline (plus scheduling slack)."""


class PeerUnavailable(PeerLost):
    """The stream broke before the exchange completed (peer stopped, connection reset), or the local
    server is stopping."""


class CorruptChunk(ExchangeError):
    """A chunk's SHA-256 did not match its data: bytes changed in transit (or in the peer's memory).
    Integrity against accidents, not against an attacker (who would rewrite the digest too: use TLS)."""


class SpecMismatch(ExchangeError):
    """The two peers' models differ in tensor names, shapes or dtypes, or they disagree on the
    sparsity ratio: averaging them would be meaningless, so nothing is averaged."""


class RoundMismatch(ExchangeError):
    """The peer is in another group, round or seed, or is not the partner the round matched (a stale
    address now used by another node). Averaging would break the round's mixing matrix."""


class NotFinite(ExchangeError):
    """Parameters holding NaN or infinity (a diverged model, or a hostile peer): one such value would
    spread through every model it is averaged into, so nothing is averaged and it is counted."""


class ProtocolError(ExchangeError):
    """A malformed, unexpected or out-of-order message, or an unsupported protocol version."""


class IdentityMismatch(ExchangeError):
    """With TLS gossip, the dialer's certificate does not name the node id its header claims (or it
    presented no controlplane identity at all): a stranger may not stand in for a matched partner."""


class TruncatedStream(ProtocolError):
    """The peer's stream ended before its trailer (or its accept): the payload is incomplete."""


# The refusal reason sent for each local error, and the error raised for each refusal received: the
# one place where errors meet the wire.
_REASON_OF: tuple[tuple[type[ExchangeError], pb.ExchangeFailure], ...] = (
    (SpecMismatch, pb.EXCHANGE_FAILURE_SPEC_MISMATCH),
    (RoundMismatch, pb.EXCHANGE_FAILURE_ROUND_MISMATCH),
    (CorruptChunk, pb.EXCHANGE_FAILURE_CORRUPT),
    (ProtocolError, pb.EXCHANGE_FAILURE_PROTOCOL),
    (PeerTimeout, pb.EXCHANGE_FAILURE_TIMEOUT),
    (NotFinite, pb.EXCHANGE_FAILURE_NOT_FINITE),
    (IdentityMismatch, pb.EXCHANGE_FAILURE_IDENTITY),
)


def _require_finite(params: Mapping[str, Array], whose: str) -> None:
    """Raise NotFinite naming the tensors with NaN or infinity (and count the refusal)."""
    bad = {name: int(value.size - np.count_nonzero(np.isfinite(value))) for name, value in params.items()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        REFUSED_NOT_FINITE.inc()
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(bad.items()))
        raise NotFinite(f"{whose} parameters hold NaN or infinite values in {listed}; nothing was averaged")


def _reason(error: ExchangeError) -> pb.ExchangeFailure:
    for cls, reason in _REASON_OF:
        if isinstance(error, cls):
            return reason
    return pb.EXCHANGE_FAILURE_UNSPECIFIED


def _from_refusal(refusal: pb.ExchangeRefusal, peer: str) -> ExchangeError:
    message = f"peer {peer} refused the exchange: {refusal.message}"
    for cls, reason in _REASON_OF:
        if refusal.reason == reason:
            return cls(message, from_peer=True)
    return ExchangeError(message, from_peer=True)


def _from_rpc_error(error: grpc.aio.AioRpcError, peer: str) -> ExchangeError:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerTimeout(f"exchange with {peer}: deadline exceeded")
    if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ProtocolError(f"exchange with {peer}: {code.name}: {details} (is that address a gossip port?)")
    return PeerUnavailable(f"exchange with {peer}: the stream broke ({code.name}: {details})")


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeResult:
    """What one side of a round's exchange ended with.

    ``params`` are the mixed parameters after a successful exchange, or the caller's own parameters
    (the very same arrays) when ``error`` is set (only :func:`exchange_or_keep` returns those).
    Byte counts are payload bytes (chunk data), not protobuf or HTTP/2 framing.
    """

    params: dict[str, Array]
    peer: str
    group: str
    round: int
    bytes_sent: int
    bytes_received: int
    seconds: float
    """Wall time of the whole exchange, preparation and waiting for the peer included (what the
    round report wants)."""
    receive_seconds: float
    """From the peer's header to its trailer: the time its payload took to arrive."""
    dialed: bool
    error: ExchangeError | None = None
    peer_examples: int = 0
    """The example count the peer's header carried (0: none given, or the exchange failed)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def samples(self) -> tuple[tuple[int, float], ...]:
        """Passive throughput samples ``(bytes, seconds)`` for ``gossip.bandwidth`` (the peer's
        payload and how long it took to arrive); empty when there is nothing to measure."""
        if self.ok and self.bytes_received > 0 and self.receive_seconds > 0.0:
            return ((self.bytes_received, self.receive_seconds),)
        return ()

    def observe(self, table: BandwidthTable, now: float) -> LinkEstimate | None:
        """Feed this exchange into the local bandwidth estimates: its samples when it went well, a
        penalty when the link failed it (peer lost, corrupt or truncated data). A spec or round
        mismatch says nothing about the link and leaves the estimate alone."""
        if self.error is None:
            estimate = None
            for nbytes, seconds in self.samples:
                estimate = table.observe(self.peer, nbytes, seconds, now)
            return estimate
        if isinstance(self.error, PeerLost | CorruptChunk | ProtocolError):
            return table.penalise(self.peer, now)
        return None


def spec_digest(tensors: tuple[TensorSpec, ...]) -> bytes:
    """SHA-256 of a layout's canonical form: ``[[name, dtype, [dims...]], ...]`` as compact JSON,
    tensors in name order. Equal digests mean equal names, dtypes (byte order included) and shapes."""
    canonical = [[t.name, t.dtype, list(t.shape)] for t in sorted(tensors, key=lambda t: t.name)]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).digest()


# --- the local side of an exchange, prepared once before any I/O ----------------------------------


@dataclass(frozen=True)
class _Prepared:
    node_id: str
    group: str
    round: int
    seed: int
    ratio: float
    params: dict[str, Array]
    layout: tuple[TensorSpec, ...]
    digest: bytes
    masks: dict[str, BoolArray] | None
    """Per tensor, the coordinates that travel; None for a full exchange (ratio 1)."""
    sent: dict[str, Array]
    """What travels: the tensors themselves, or their masked values as 1-D arrays."""
    payload: PackSpec
    data: bytes
    compression: str = ""
    """``""`` or ``"int8"``: then ``data`` is ``encode_int8(sent)`` and ``sent_decoded`` what it
    stands for (the peer decodes the same bytes to the same values)."""
    sent_decoded: dict[str, Array] | None = None
    examples: int = 0
    """This side's example count (0: none), sent in the header; the pair's weights derive from both."""

    @property
    def chunk_count(self) -> int:
        return len(self.payload.checksums)


def _check_args(
    node_id: str, peer: str | None, group: str, round: int, seed: int, ratio: float, deadline_s: float, chunk_bytes: int
) -> None:
    if not node_id:
        raise ValueError("the local node id must not be empty")
    if peer is not None and (not peer or peer == node_id):
        raise ValueError(f"the peer must be another node, got {peer!r} (local node {node_id!r})")
    if not group:
        raise ValueError("group must not be empty")
    if not 0 <= round < 2**64:
        raise ValueError(f"round must be a uint64, got {round}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a uint64, got {seed}")
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise ValueError(f"sparsity_ratio must be in (0, 1], got {ratio}")
    if not (math.isfinite(deadline_s) and deadline_s > 0.0):
        raise ValueError(f"deadline_s must be positive, got {deadline_s}")
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in (0, {MAX_CHUNK_BYTES}], got {chunk_bytes}")


def _check_examples(examples: int) -> int:
    if not is_count(examples):
        raise ValueError(f"examples must be an integer in [0, 2^64) (0: no count given), got {examples!r}")
    return int(examples)


def _prepare(
    node_id: str,
    group: str,
    round: int,
    params: Params,
    seed: int,
    ratio: float,
    chunk_bytes: int,
    compression: str = "",
    examples: int = 0,
) -> _Prepared:
    """Masks, payload bytes and per-chunk digests (CPU work: run in a worker thread, where numpy and
    hashlib release the GIL and the event loop keeps serving)."""
    local = {name: np.asarray(params[name]) for name in sorted(params)}
    if not local:
        raise ValueError("nothing to exchange: no tensors")
    for name, value in local.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{name}: can only average floating-point tensors, got dtype {value.dtype}")
    masks: dict[str, BoolArray] | None = None
    sent = local
    if ratio < 1.0:
        # Derived from (seed, round, name, shape, ratio) alone: the peer computes the same masks, so
        # only the selected values travel and no mask is ever sent.
        masks = {name: sparse_mask(seed, round, name, value.shape, ratio) for name, value in local.items()}
        sent = {name: value[masks[name]] for name, value in local.items()}
    tensors = layout(local)
    if compression:
        return _prepare_compressed(
            node_id, group, round, seed, ratio, local, tensors, masks, sent, chunk_bytes, compression, examples
        )
    spec, data = pack(sent, chunk_bytes)
    digest = spec_digest(tensors)
    return _Prepared(
        node_id, group, round, seed, ratio, local, tensors, digest, masks, sent, spec, data, examples=examples
    )


def _prepare_compressed(
    node_id: str,
    group: str,
    round: int,
    seed: int,
    ratio: float,
    local: dict[str, Array],
    tensors: tuple[TensorSpec, ...],
    masks: dict[str, BoolArray] | None,
    sent: dict[str, Array],
    chunk_bytes: int,
    compression: str,
    examples: int,
) -> _Prepared:
    # Only "int8" so far (canonical_compression checked the name). The payload is the encoding, so its
    # size follows from the layout and ratio alone, as the header check requires.
    encoded = encode_int8(sent)
    spec, data = pack(encoded, chunk_bytes)
    digest = spec_digest(tensors)
    decoded = decode_int8(encoded, sent)
    return _Prepared(
        node_id,
        group,
        round,
        seed,
        ratio,
        local,
        tensors,
        digest,
        masks,
        sent,
        spec,
        data,
        compression=compression,
        sent_decoded=decoded,
        examples=examples,
    )


def _mix(p: _Prepared, remote: dict[str, Array], remote_examples: int = 0) -> dict[str, Array]:
    """What this side keeps: ``gossip.mixing.average`` (``weighted_average`` when both sides counted
    their examples) over the exchanged coordinates, which both ends compute bit-identically (with
    int8, ``int8_merge`` with the partner's weight: the pair's weighted sum kept, not bit-identity);
    coordinates outside the mask keep their local values."""
    if p.compression:
        # The peer's payload is its encoding: dequantised exactly as the peer dequantised it.
        assert p.sent_decoded is not None
        _, remote_weight = pair_weights(p.examples, remote_examples)
        mixed = int8_merge(p.sent, p.sent_decoded, decode_int8(remote, p.sent), remote_weight)
        if p.masks is None:
            return mixed
    elif p.masks is None:
        return weighted_average(p.params, remote, p.examples, remote_examples)
    else:
        mixed = weighted_average(p.sent, remote, p.examples, remote_examples)
    out: dict[str, Array] = {}
    for name, value in p.params.items():
        merged = value.copy()
        merged[p.masks[name]] = mixed[name]
        out[name] = merged
    return out


def _decode(tensors: tuple[TensorSpec, ...], buf: bytearray) -> dict[str, Array]:
    # Every chunk was verified on arrival; these are views onto the one receive buffer (no copy).
    out: dict[str, Array] = {}
    offset = 0
    for t in tensors:
        out[t.name] = np.frombuffer(buf, dtype=np.dtype(t.dtype), count=math.prod(t.shape), offset=offset).reshape(
            t.shape
        )
        offset += t.nbytes
    return out


def _header(p: _Prepared, receiver: str) -> pb.ExchangeChunk:
    return pb.ExchangeChunk(
        header=pb.ExchangeHeader(
            protocol_version=PROTOCOL_VERSION,
            group=p.group,
            round=p.round,
            sender=p.node_id,
            receiver=receiver,
            spec_digest=p.digest,
            tensors=[pb.ExchangeTensor(name=t.name, dtype=t.dtype, shape=t.shape) for t in p.layout],
            sparsity_ratio=p.ratio,
            seed=p.seed,
            compression=p.compression,
            payload_bytes=p.payload.total_bytes,
            chunk_bytes=p.payload.chunk_size,
            chunk_count=p.chunk_count,
            examples=p.examples,
        )
    )


def _check_identity(h: pb.ExchangeHeader, node_id: str, expected_peer: str | None) -> None:
    """Is this header meant for us, from the partner we expect? (Checked by the serving side before it
    hands its offer over, so a stray dialer cannot spoil the offer for the real partner.)"""
    if h.receiver != node_id:
        raise RoundMismatch(f"{h.sender or '?'} meant to reach node {h.receiver!r}, this is {node_id!r}")
    if h.sender == node_id or not h.sender:
        raise RoundMismatch(f"invalid sender {h.sender!r}")
    if expected_peer is not None and h.sender != expected_peer:
        raise RoundMismatch(
            f"round {h.round} of {h.group!r} matched {node_id} with {expected_peer}, not with {h.sender}"
        )


def _check_header(h: pb.ExchangeHeader, p: _Prepared) -> None:
    """Does the peer's header describe the same round and the same model as ours?"""
    if h.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(f"{h.sender} speaks exchange protocol {h.protocol_version}, this node {PROTOCOL_VERSION}")
    if (h.group, h.round, h.seed) != (p.group, p.round, p.seed):
        raise RoundMismatch(
            f"{h.sender} is at group {h.group!r} round {h.round} seed {h.seed}, "
            f"{p.node_id} at group {p.group!r} round {p.round} seed {p.seed}"
        )
    if h.sparsity_ratio != p.ratio:
        raise SpecMismatch(f"sparsity ratio {p.ratio} locally, {h.sparsity_ratio} at {h.sender}")
    if h.compression != p.compression:
        raise SpecMismatch(f"compression {p.compression or 'none'} locally, {h.compression or 'none'} at {h.sender}")
    if h.spec_digest != p.digest:
        remote = tuple(TensorSpec(t.name, t.dtype, tuple(int(d) for d in t.shape)) for t in h.tensors)
        try:
            _require_same_layout(p.layout, remote)
        except ValueError as exc:
            raise SpecMismatch(f"{p.node_id} and {h.sender}: {exc}") from None
        raise SpecMismatch(f"{h.sender}'s spec digest does not match its own tensor list")
    # Same layout, ratio, seed and round: the peer's payload has exactly our payload's size.
    if h.payload_bytes != p.payload.total_bytes:
        raise ProtocolError(
            f"{h.sender} announces {h.payload_bytes} payload bytes, the spec gives {p.payload.total_bytes}"
        )
    if not 0 < h.chunk_bytes <= MAX_CHUNK_BYTES:
        raise ProtocolError(f"{h.sender} announces chunks of {h.chunk_bytes} bytes (limit {MAX_CHUNK_BYTES})")
    if h.chunk_count != -(-h.payload_bytes // h.chunk_bytes):
        raise ProtocolError(
            f"{h.sender} announces {h.chunk_count} chunks for {h.payload_bytes} bytes of {h.chunk_bytes}"
        )


# --- the protocol, identical on both sides --------------------------------------------------------


class _Stream(Protocol):
    """One side's view of the bidirectional stream; gRPC errors already mapped to ExchangeError."""

    async def read(self) -> pb.ExchangeChunk | None:
        """The next message, or None at the end of the peer's stream."""
        ...

    async def write(self, message: pb.ExchangeChunk) -> None: ...

    async def close(self) -> None:
        """No more messages from this side."""
        ...


class _DialerStream:
    def __init__(self, call: Any, peer: str) -> None:
        self._call = call
        self._peer = peer

    async def read(self) -> pb.ExchangeChunk | None:
        try:
            message = await self._call.read()
            if message is grpc.aio.EOF:
                # A clean end is status OK; anything else is the serving side's failure.
                code = await self._call.code()
                if code != grpc.StatusCode.OK:
                    raise PeerUnavailable(f"exchange with {self._peer}: {code.name}: {await self._call.details()}")
                return None
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc_error(exc, self._peer) from None
        return message  # type: ignore[no-any-return]

    async def write(self, message: pb.ExchangeChunk) -> None:
        try:
            await self._call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc_error(exc, self._peer) from None
        except asyncio.InvalidStateError:
            raise PeerUnavailable(f"exchange with {self._peer}: the call already ended") from None

    async def close(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()


class _ServingStream:
    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    async def read(self) -> pb.ExchangeChunk | None:
        message = await self._context.read()
        return None if message is grpc.aio.EOF else message  # type: ignore[no-any-return]

    async def write(self, message: pb.ExchangeChunk) -> None:
        # A dialer that went away cancels this handler (CancelledError), so failures here are rare;
        # any other error from the transport means the same: the stream is gone.
        try:
            await self._context.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError) as exc:
            raise PeerUnavailable(f"stream to the dialer broke: {exc!r}") from None

    async def close(self) -> None:
        return None  # the serving side's stream ends when its handler returns

    def certified_node(self) -> str | None:
        """The node id the dialer's verified client certificate names (its ``agent:`` or ``server:``
        URI SAN), or None without one (plaintext gossip, or a certificate naming no node)."""
        from controlplane.tls import URI_PREFIX, Identity, TlsError  # TLS gossip only (cryptography)

        uris = [
            value.decode(errors="replace")
            for value in (self._context.auth_context() or {}).get("x509_subject_alternative_name", ())
            if value.startswith(URI_PREFIX.encode())
        ]
        for uri in uris:
            try:
                identity = Identity.from_uri(uri)
            except TlsError:
                continue
            if identity.role in ("agent", "server"):
                return identity.id
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with an error status. After a failure this is what stops the dialer from
        committing: it mixes only after the call ended with OK."""
        await self._context.abort(code, details)


@dataclass(frozen=True)
class _Received:
    remote: dict[str, Array]
    bytes_sent: int
    bytes_received: int
    receive_seconds: float
    remote_examples: int = 0


def _store(view: memoryview, start: int, data: bytes, digest: bytes) -> bool:
    """Verify one chunk against its SHA-256 and copy it into place; False (and nothing copied) when
    it does not match."""
    if hashlib.sha256(data).digest() != digest:
        return False
    view[start : start + len(data)] = data
    return True


async def _expect(stream: _Stream, kind: str, peer: str) -> pb.ExchangeChunk:
    message = await stream.read()
    if message is None:
        raise TruncatedStream(f"{peer}'s stream ended where its {kind} was expected")
    got = message.WhichOneof("body")
    if got == "refusal":
        raise _from_refusal(message.refusal, peer)
    if got != kind:
        raise ProtocolError(f"{peer} sent {got or 'an empty message'} where its {kind} was expected")
    return message


async def _send(stream: _Stream, p: _Prepared, peer: str, verdict: asyncio.Future[ExchangeError | None]) -> int:
    """Header, chunks, trailer; then, once our own verification is done, accept or refusal."""
    await stream.write(_header(p, peer))
    sent = 0
    size = p.payload.chunk_size
    for k, digest in enumerate(p.payload.checksums):
        if verdict.done() and verdict.result() is not None:
            break  # we already failed: stop streaming, go tell the peer why
        # (A verdict of None only says the peer's payload arrived intact, which can happen before
        # our own payload is all out: keep sending.)
        chunk = p.data[k * size : (k + 1) * size]
        await stream.write(pb.ExchangeChunk(data=pb.ExchangeData(index=k, data=chunk, sha256=bytes.fromhex(digest))))
        sent += len(chunk)
    else:
        await stream.write(
            pb.ExchangeChunk(trailer=pb.ExchangeTrailer(chunk_count=p.chunk_count, payload_bytes=p.payload.total_bytes))
        )
    failure = await verdict
    if failure is None:
        await stream.write(pb.ExchangeChunk(accept=pb.ExchangeAccept()))
    elif not failure.from_peer:  # the peer already knows what it refused
        await stream.write(pb.ExchangeChunk(refusal=pb.ExchangeRefusal(reason=_reason(failure), message=str(failure))))
    await stream.close()
    return sent


async def _receive(
    stream: _Stream,
    p: _Prepared,
    peer: str,
    header: pb.ExchangeHeader | None,
    verdict: asyncio.Future[ExchangeError | None],
    expect_end: bool,
) -> tuple[dict[str, Array], int, float, int]:
    """The peer's header (unless the caller already read it), chunks and trailer, each checked; then
    our verdict (to the sender) and the peer's accept."""
    loop = asyncio.get_running_loop()
    if header is None:
        header = (await _expect(stream, "header", peer)).header
        _check_identity(header, p.node_id, peer)
    started = loop.time()
    _check_header(header, p)
    total, size = header.payload_bytes, header.chunk_bytes
    buf = bytearray(total)
    view = memoryview(buf)
    # Chunks are hashed and copied into place in worker threads (hashlib and memoryview copies release
    # the GIL), overlapping with the next reads; at most _HASHING_AHEAD chunks are in flight, so a
    # sender faster than our hashing cannot make us buffer its whole model twice.
    hashing: collections.deque[tuple[int, asyncio.Future[bool]]] = collections.deque()

    async def settle(until: int) -> None:
        while len(hashing) > until:
            k, ok = hashing.popleft()
            if not await ok:
                start = k * size
                end = min(start + size, total)
                raise CorruptChunk(f"chunk {k} (bytes {start}..{end}) from {peer} fails its SHA-256")

    try:
        for k in range(header.chunk_count):
            chunk = (await _expect(stream, "data", peer)).data
            start = k * size
            want = min(size, total - start)
            if chunk.index != k:
                raise ProtocolError(f"{peer} sent chunk {chunk.index} where chunk {k} was expected")
            if len(chunk.data) != want:
                raise ProtocolError(f"{peer}'s chunk {k} has {len(chunk.data)} bytes, expected {want}")
            hashing.append((k, loop.run_in_executor(None, _store, view, start, chunk.data, chunk.sha256)))
            await settle(_HASHING_AHEAD)
        trailer = (await _expect(stream, "trailer", peer)).trailer
        if (trailer.chunk_count, trailer.payload_bytes) != (header.chunk_count, total):
            raise ProtocolError(
                f"{peer}'s trailer counts {trailer.chunk_count} chunks / {trailer.payload_bytes} bytes, "
                f"its header {header.chunk_count} / {total}"
            )
        arrived = loop.time()
        await settle(0)
    finally:
        # Never leave a worker writing into the buffer after we returned (or raised).
        if hashing:
            await asyncio.gather(*(f for _, f in hashing), return_exceptions=True)
    receive_seconds = arrived - started
    remote = _decode(p.payload.tensors, buf)  # our payload layout: the header check proved it is the peer's
    _require_finite(remote, f"{peer}'s")  # refused to the sender like any failure: both keep their own
    verdict.set_result(None)
    await _expect(stream, "accept", peer)
    if expect_end and await stream.read() is not None:
        raise ProtocolError(f"{peer} sent more after its accept")
    return remote, total, receive_seconds, header.examples


async def _drain(stream: _Stream, timeout: float) -> None:
    """Read and drop messages until the peer ends the stream (or fails, or ``timeout`` passes)."""
    with contextlib.suppress(ExchangeError, TimeoutError):
        async with asyncio.timeout(timeout):
            while await stream.read() is not None:
                pass


async def _session(
    stream: _Stream,
    p: _Prepared,
    peer: str,
    header: pb.ExchangeHeader | None,
    *,
    expect_end: bool,
    on_failure: Callable[[ExchangeError], None] | None = None,
) -> _Received:
    """Run both halves concurrently; succeed only if both do. On a local failure the sender still gets
    a short grace to refuse, so the peer keeps its parameters too instead of waiting for a deadline.

    ``on_failure`` hears the error as soon as it is known, before that grace: the peer may end the
    call (cancelling us) the moment it has read our refusal, and the precise error must not be lost
    to that cancellation."""
    verdict: asyncio.Future[ExchangeError | None] = asyncio.get_running_loop().create_future()
    sender = asyncio.create_task(_send(stream, p, peer, verdict))
    receiver = asyncio.create_task(_receive(stream, p, peer, header, verdict, expect_end))
    try:
        await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_EXCEPTION)
        if sender.done() and sender.exception() is not None and not receiver.done():
            # A broken write usually has a reason waiting on the read side (a refusal): prefer it.
            await asyncio.wait((receiver,), timeout=_REFUSAL_GRACE_S)
        if receiver.done() and receiver.exception() is not None:
            error = receiver.exception()
            if isinstance(error, ExchangeError) and on_failure is not None:
                on_failure(error)
            if isinstance(error, ExchangeError) and not verdict.done():
                verdict.set_result(error)
                await asyncio.wait((sender,), timeout=_REFUSAL_GRACE_S)
                if not error.from_peer:
                    # Let the refusal arrive before this side ends the call: the dialer cancels its call
                    # on the way out and the serving side aborts it, and either can drop a message
                    # still in flight. The peer ends its side as soon as it has read the refusal.
                    await _drain(stream, _REFUSAL_GRACE_S)
            assert error is not None
            raise error
        if sender.done() and sender.exception() is not None:
            error = sender.exception()
            assert error is not None
            if isinstance(error, ExchangeError) and on_failure is not None:
                on_failure(error)
            raise error
        remote, received, receive_seconds, remote_examples = receiver.result()
        return _Received(remote, await sender, received, receive_seconds, remote_examples)
    finally:
        for task in (sender, receiver):
            task.cancel()
        # Retrieve every outcome (no "exception was never retrieved"), even when we are cancelled.
        await asyncio.gather(sender, receiver, return_exceptions=True)


# --- the serving side -----------------------------------------------------------------------------


class Offer:
    """The local side of one round's exchange, posted on the local server for the partner to dial.

    Resolves exactly once: with the mixed parameters, with the error that ended the exchange, or with
    ``PeerTimeout`` at the deadline if no valid partner dialed.
    """

    def __init__(self, server: ExchangeServer, p: _Prepared, peer: str | None, deadline: float, started: float) -> None:
        self.group = p.group
        self.round = p.round
        self.peer = peer
        self.deadline = deadline
        """Event-loop time at which the offer and any exchange serving it give up."""
        self._server = server
        self._prepared: _Prepared | None = p
        self._started = started
        self._claimed_by: asyncio.Task[Any] | None = None
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future[ExchangeResult] = loop.create_future()
        self._timer = loop.call_at(deadline, self._expire)

    @property
    def claimed(self) -> bool:
        return self._claimed_by is not None

    def done(self) -> bool:
        return self._future.done()

    async def result(self) -> ExchangeResult:
        """Wait for the exchange. Cancelling the wait withdraws the offer (and stops its exchange)."""
        try:
            async with asyncio.timeout_at(self.deadline + _RESOLVE_SLACK_S):
                return await asyncio.shield(self._future)
        except TimeoutError:
            self._give_up(PeerTimeout(f"exchange for round {self.round} of {self.group!r} never resolved"))
            return await self._future
        except asyncio.CancelledError:
            self.withdraw()
            raise

    def withdraw(self) -> None:
        """Give up on this offer: a pending exchange serving it is cancelled, later dialers are refused."""
        self._give_up(PeerUnavailable(f"offer for round {self.round} of {self.group!r} withdrawn"))

    def _give_up(self, error: ExchangeError) -> None:
        self._fail(error)
        # Cancelling the exchange ends its call with CANCELLED, never OK: the dialer cannot commit.
        if self._claimed_by is not None and not self._claimed_by.done():
            self._claimed_by.cancel()

    def _claim(self) -> _Prepared:
        assert self._prepared is not None and self._claimed_by is None
        self._claimed_by = asyncio.current_task()
        return self._prepared

    def _resolve(self, result: ExchangeResult) -> None:
        if not self._future.done():
            self._future.set_result(result)
        self._release()

    def _fail(self, error: ExchangeError) -> None:
        if not self._future.done():
            self._future.set_exception(error)
            self._future.exception()  # mark retrieved: an offer nobody awaits must not warn
        self._release()

    def _release(self) -> None:
        self._timer.cancel()
        self._prepared = None  # the packed model can be large: drop it as soon as the round is over
        self._server._forget(self)

    def _expire(self) -> None:
        # A claimed offer is bounded by its exchange's own timeout (same deadline), which reports the
        # precise outcome; only an offer nobody dialed expires here.
        if not self.claimed:
            self._fail(PeerTimeout(f"{self.peer or 'no peer'} did not dial for round {self.round} of {self.group!r}"))


class _Servicer(pb_grpc.GossipPeerServicer):
    """Thin: the gRPC handler hands the stream to the server's transport-neutral logic."""

    def __init__(self, owner: ExchangeServer) -> None:
        self._owner = owner

    async def Exchange(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        remaining = context.time_remaining()
        await self._owner._serve(_ServingStream(context), remaining)


class ExchangeServer:
    """The local node's gossip port: answers partners that dial it with the offer posted for their round.

    One per node, shared by every group the node gossips in; offers are keyed by (group, round).
    """

    def __init__(
        self,
        node_id: str,
        address: str = "127.0.0.1:0",
        *,
        offer_wait_s: float = DEFAULT_OFFER_WAIT_S,
        server_credentials: grpc.ServerCredentials | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.offer_wait_s = offer_wait_s
        self.channel_credentials = channel_credentials
        """Used when this node dials a partner (None: plaintext, for loopback and trusted networks)."""
        self._bind = address
        self._server_credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self._address: str | None = None
        self._offers: dict[tuple[str, int], Offer] = {}
        self._changed = asyncio.Condition()

    @property
    def address(self) -> str:
        """``host:port`` actually bound (the port is chosen by the OS when the configured one is 0)."""
        if self._address is None:
            raise RuntimeError("the exchange server is not started")
        return self._address

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the exchange server is already started")
        server = grpc.aio.server(options=GOSSIP_SERVER_OPTIONS)
        pb_grpc.add_GossipPeerServicer_to_server(_Servicer(self), server)
        if self._server_credentials is None:
            port = server.add_insecure_port(self._bind)
        else:
            port = server.add_secure_port(self._bind, self._server_credentials)
        if port == 0:
            raise OSError(f"cannot bind the gossip port {self._bind}")
        await server.start()
        host = self._bind.rpartition(":")[0]
        self._server, self._address = server, f"{host}:{port}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: pending offers fail with PeerUnavailable, exchanges in flight are cancelled
        (after ``grace`` seconds, if given)."""
        for offer in list(self._offers.values()):
            offer._fail(PeerUnavailable(f"gossip server of {self.node_id} stopped"))
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> ExchangeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)

    @property
    def offers(self) -> tuple[tuple[str, int], ...]:
        """(group, round) of the offers still open, sorted."""
        return tuple(sorted(self._offers))

    async def offer(
        self,
        group: str,
        round: int,
        params: Params,
        *,
        seed: int,
        sparsity_ratio: float = 1.0,
        peer: str | None = None,
        deadline_s: float,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        compression: str = "",
        examples: int = 0,
    ) -> Offer:
        """Post this node's parameters for (group, round) and return the offer to await.

        ``peer`` is the partner the round matched (others are refused); ``deadline_s`` bounds both the
        wait for the partner and the exchange itself.
        """
        _check_args(self.node_id, peer, group, round, seed, sparsity_ratio, deadline_s, chunk_bytes)
        compression = canonical_compression(compression)
        examples = _check_examples(examples)
        loop = asyncio.get_running_loop()
        started = loop.time()
        key = (group, round)
        if key in self._offers:
            raise ValueError(f"an offer for round {round} of {group!r} is already open")
        async with asyncio.timeout_at(started + deadline_s):
            p = await asyncio.to_thread(
                _prepare,
                self.node_id,
                group,
                round,
                params,
                seed,
                sparsity_ratio,
                chunk_bytes,
                compression,
                examples,
            )
        async with self._changed:
            if key in self._offers:
                raise ValueError(f"an offer for round {round} of {group!r} is already open")
            offer = Offer(self, p, peer, started + deadline_s, started)
            self._offers[key] = offer
            self._changed.notify_all()
        return offer

    def _forget(self, offer: Offer) -> None:
        key = (offer.group, offer.round)
        if self._offers.get(key) is offer:
            del self._offers[key]

    async def _find_offer(self, key: tuple[str, int]) -> Offer:
        """The open offer for ``key``, waiting for it to be posted (the caller bounds the wait)."""
        async with self._changed:
            await self._changed.wait_for(lambda: key in self._offers)
            return self._offers[key]

    def _check_certified(self, h: pb.ExchangeHeader, certified: str | None) -> None:
        """TLS gossip: the dialer is the node its certificate names, whatever its header says."""
        if certified != h.sender:
            REFUSED_IDENTITY.inc()
            named = f"names {certified!r}" if certified else "names no agent or server"
            raise IdentityMismatch(
                f"a dialer claims to be {h.sender!r} but its certificate {named}: refused by {self.node_id}"
            )

    async def _serve(self, stream: _ServingStream, remaining: float | None) -> None:
        """One incoming exchange: read the dialer's header, find (or wait for) the offer of its round,
        check the dialer is the partner, then run the protocol and resolve the offer with the outcome."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        dialer_deadline = now + remaining if remaining is not None else math.inf
        h: pb.ExchangeHeader | None = None
        try:
            async with asyncio.timeout_at(min(dialer_deadline, now + self.offer_wait_s)):
                h = (await _expect(stream, "header", "the dialer")).header
                offer = await self._find_offer((h.group, h.round))
        except TimeoutError:
            what = "no header came" if h is None else f"no offer for round {h.round} of {h.group!r} was posted"
            await _refuse(stream, PeerTimeout(f"{self.node_id} gave up waiting: {what}"))
            return
        except ExchangeError as exc:
            await _refuse(stream, exc)
            return
        try:
            if self._server_credentials is not None:
                self._check_certified(h, stream.certified_node())
            _check_identity(h, self.node_id, offer.peer)
            if offer.claimed or offer.done():
                raise RoundMismatch(f"round {h.round} of {h.group!r} is already exchanged by {self.node_id}")
        except ExchangeError as exc:
            await _refuse(stream, exc)  # the offer stays open for the real partner
            return
        p = offer._claim()
        try:
            async with asyncio.timeout_at(min(offer.deadline, dialer_deadline)):
                got = await _session(stream, p, h.sender, h, expect_end=False, on_failure=offer._fail)
                params = await asyncio.to_thread(_mix, p, got.remote, got.remote_examples)
        except TimeoutError:
            offer._fail(PeerTimeout(f"exchange with {h.sender} for round {h.round} of {h.group!r}: deadline passed"))
            await stream.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.node_id}'s deadline passed")
            return
        except ExchangeError as exc:
            offer._fail(exc)
            await stream.abort(grpc.StatusCode.ABORTED, f"{self.node_id}: {exc}")
            return
        except asyncio.CancelledError:
            offer._fail(PeerUnavailable(f"exchange with {h.sender} cancelled (dialer gone or server stopping)"))
            raise
        except Exception as exc:  # a bug: still resolve the offer, so its owner is not left waiting
            offer._fail(ExchangeError(f"exchange with {h.sender} failed unexpectedly: {exc!r}"))
            raise
        offer._resolve(
            ExchangeResult(
                params=params,
                peer=h.sender,
                group=p.group,
                round=p.round,
                bytes_sent=got.bytes_sent,
                bytes_received=got.bytes_received,
                seconds=loop.time() - offer._started,
                receive_seconds=got.receive_seconds,
                dialed=False,
                peer_examples=got.remote_examples,
            )
        )


async def _refuse(stream: _Stream, error: ExchangeError) -> None:
    """Turn a dialer away before any exchange: say why, then wait (briefly) for it to hang up, so the
    refusal is read rather than lost to a write of the dialer's racing the end of the call."""
    if error.from_peer:
        return
    with contextlib.suppress(ExchangeError):
        await stream.write(pb.ExchangeChunk(refusal=pb.ExchangeRefusal(reason=_reason(error), message=str(error))))
        await _drain(stream, _REFUSAL_GRACE_S)


# --- the entry points -----------------------------------------------------------------------------


async def exchange(
    server: ExchangeServer,
    peer: str,
    peer_address: str,
    group: str,
    round: int,
    params: Params,
    *,
    seed: int,
    sparsity_ratio: float = 1.0,
    deadline_s: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compression: str = "",
    examples: int = 0,
) -> ExchangeResult:
    """Exchange this round's parameters with the matched ``peer`` and return what this node keeps.

    The side with the smaller node id dials ``peer_address``; the other posts an offer on ``server``
    and waits for the dial. Both get ``average`` of the two models on the exchanged coordinates
    (all of them at ratio 1, else the shared mask of (seed, round, tensor)); other coordinates keep
    their local values. ``examples``: the training examples behind ``params`` (0: none given); when
    both sides give one the pair averages with weights ``n / (n_a + n_b)`` (``mixing.pair_weights``).
    Raises an :class:`ExchangeError` subclass, never later than ``deadline_s``, when the exchange
    fails: then nothing was mixed. With ``compression="int8"`` both ends send their values quantised
    and each keeps ``x + w_peer * (peer's - own dequantised values)`` (``gossip.mixing.int8_merge``).
    """
    _check_args(server.node_id, peer, group, round, seed, sparsity_ratio, deadline_s, chunk_bytes)
    compression = canonical_compression(compression)
    examples = _check_examples(examples)
    if server.node_id > peer:
        offer = await server.offer(
            group,
            round,
            params,
            seed=seed,
            sparsity_ratio=sparsity_ratio,
            peer=peer,
            deadline_s=deadline_s,
            chunk_bytes=chunk_bytes,
            compression=compression,
            examples=examples,
        )
        return await offer.result()
    return await _dial(
        server,
        peer,
        peer_address,
        group,
        round,
        params,
        seed,
        sparsity_ratio,
        deadline_s,
        chunk_bytes,
        compression,
        examples,
    )


async def _dial(
    server: ExchangeServer,
    peer: str,
    peer_address: str,
    group: str,
    round: int,
    params: Params,
    seed: int,
    ratio: float,
    deadline_s: float,
    chunk_bytes: int,
    compression: str = "",
    examples: int = 0,
) -> ExchangeResult:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + deadline_s
    try:
        async with asyncio.timeout_at(deadline):
            p = await asyncio.to_thread(
                _prepare, server.node_id, group, round, params, seed, ratio, chunk_bytes, compression, examples
            )
            if server.channel_credentials is None:
                channel = grpc.aio.insecure_channel(peer_address, options=GOSSIP_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    peer_address, server.channel_credentials, options=GOSSIP_CHANNEL_OPTIONS
                )
            async with channel:
                # wait_for_ready: a partner whose server is still starting gets until the deadline.
                call = pb_grpc.GossipPeerStub(channel).Exchange(
                    timeout=max(deadline - loop.time(), 0.001), wait_for_ready=True
                )
                try:
                    got = await _session(_DialerStream(call, peer), p, peer, None, expect_end=True)
                finally:
                    call.cancel()  # no-op after a clean end; otherwise the serving side stops at once
            params_out = await asyncio.to_thread(_mix, p, got.remote, got.remote_examples)
    except TimeoutError:
        raise PeerTimeout(
            f"exchange with {peer} for round {round} of {group!r}: deadline of {deadline_s}s passed"
        ) from None
    return ExchangeResult(
        params=params_out,
        peer=peer,
        group=group,
        round=round,
        bytes_sent=got.bytes_sent,
        bytes_received=got.bytes_received,
        seconds=loop.time() - started,
        receive_seconds=got.receive_seconds,
        dialed=True,
        peer_examples=got.remote_examples,
    )


async def exchange_or_keep(
    server: ExchangeServer,
    peer: str,
    peer_address: str,
    group: str,
    round: int,
    params: Params,
    *,
    seed: int,
    sparsity_ratio: float = 1.0,
    deadline_s: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compression: str = "",
    examples: int = 0,
) -> ExchangeResult:
    """:func:`exchange`, but a failed exchange returns the local parameters (the same arrays) with
    ``error`` set instead of raising: the survivor of a round keeps its own model and reports."""
    started = asyncio.get_running_loop().time()
    try:
        return await exchange(
            server,
            peer,
            peer_address,
            group,
            round,
            params,
            seed=seed,
            sparsity_ratio=sparsity_ratio,
            deadline_s=deadline_s,
            chunk_bytes=chunk_bytes,
            compression=compression,
            examples=examples,
        )
    except ExchangeError as exc:
        return ExchangeResult(
            params=dict(params),
            peer=peer,
            group=group,
            round=round,
            bytes_sent=0,
            bytes_received=0,
            seconds=asyncio.get_running_loop().time() - started,
            receive_seconds=0.0,
            dialed=server.node_id < peer,
            error=exc,
        )
