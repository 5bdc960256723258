"""The gossip layer's coordination for the SDK (``client.gossip``): the bandwidth matrix and rounds.

Like the other result modules, no protobuf type reaches a caller.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.client._base import Rpc
from controlplane.v1 import gossip_pb2

__all__ = [
    "BandwidthMatrix",
    "GossipEvent",
    "Link",
    "Round",
    "RoundFailure",
    "RoundState",
    "TensorInfo",
    "TensorSpec",
]


class RoundState(enum.Enum):
    UNSPECIFIED = gossip_pb2.ROUND_STATE_UNSPECIFIED
    RUNNING = gossip_pb2.ROUND_STATE_RUNNING
    DONE = gossip_pb2.ROUND_STATE_DONE
    TIMED_OUT = gossip_pb2.ROUND_STATE_TIMED_OUT


@dataclass(frozen=True, slots=True)
class Link:
    a: str
    b: str
    #: Bytes per second: the lower of the two ends' views.
    bandwidth_bps: float
    latency_s: float
    spread_bps: float
    samples: int
    bandwidth_a_bps: float
    bandwidth_b_bps: float
    updated_unix_ms: int
    failures: int


@dataclass(frozen=True, slots=True)
class BandwidthMatrix:
    version: int
    updated_unix_ms: int
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    tensors: tuple[TensorInfo, ...]
    sparsity_ratio: float


@dataclass(frozen=True, slots=True)
class RoundFailure:
    node: str
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Round:
    group: str
    number: int
    participants: tuple[str, ...]
    matrix_version: int
    seed: int
    policy: str
    pairs: tuple[Pair, ...]
    idle: tuple[str, ...]
    spec: TensorSpec | None
    started_unix_ms: int
    deadline_unix_ms: int
    state: RoundState
    reported: tuple[str, ...]
    failures: tuple[RoundFailure, ...]
    bytes_total: int
    bottleneck_bps: float
    seconds_max: float
    ended_unix_ms: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class GossipEvent:
    """What a watch on domain "gossip" carries in ``Event.gossip``."""

    round: Round | None
    matrix_version: int


def link_reports(links: Mapping[str, float | Mapping[str, float]]) -> list[gossip_pb2.LinkReport]:
    """Estimates given as ``{peer: bandwidth_bps}`` or ``{peer: {"bandwidth_bps": ..., "latency_s": ...}}``."""
    out = []
    for peer, value in sorted(links.items()):
        if isinstance(value, Mapping):
            out.append(gossip_pb2.LinkReport(peer=peer, **value))  # type: ignore[arg-type]
        else:
            out.append(gossip_pb2.LinkReport(peer=peer, bandwidth_bps=float(value)))
    return out


def round_request(
    group: str,
    number: int,
    participants: Sequence[str],
    pairs: Iterable[tuple[str, str]],
    idle: Iterable[str],
    *,
    seed: int,
    policy: str,
    matrix_version: int,
    deadline_unix_ms: int,
    tensors: Iterable[tuple[str, str, Sequence[int]]],
    sparsity_ratio: float,
    request_id: str,
) -> gossip_pb2.StartRoundRequest:
    spec = gossip_pb2.TensorSpec(
        tensors=[gossip_pb2.TensorInfo(name=n, dtype=d, shape=list(s)) for n, d, s in tensors],
        sparsity_ratio=sparsity_ratio,
    )
    return gossip_pb2.StartRoundRequest(
        round=gossip_pb2.Round(
            group=group,
            number=number,
            participants=list(participants),
            pairs=[gossip_pb2.Pair(a=a, b=b) for a, b in pairs],
            idle=list(idle),
            seed=seed,
            policy=policy,
            matrix_version=matrix_version,
            deadline_unix_ms=deadline_unix_ms,
            spec=spec,
        ),
        request_id=request_id,
    )


_G = "/controlplane.v1.Gossip/"
REPORT_BANDWIDTH = Rpc(_G + "ReportBandwidth", gossip_pb2.ReportBandwidthResponse, write=True)
GET_BANDWIDTH = Rpc(_G + "GetBandwidth", gossip_pb2.GetBandwidthResponse, write=False)
START_ROUND = Rpc(_G + "StartRound", gossip_pb2.StartRoundResponse, write=True)
REPORT_ROUND = Rpc(_G + "ReportRound", gossip_pb2.ReportRoundResponse, write=True)
END_ROUND = Rpc(_G + "EndRound", gossip_pb2.EndRoundResponse, write=True)
GET_ROUND = Rpc(_G + "GetRound", gossip_pb2.GetRoundResponse, write=False)
LIST_ROUNDS = Rpc(_G + "ListRounds", gossip_pb2.ListRoundsResponse, write=False)
