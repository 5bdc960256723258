"""The gossip layer's coordination for the SDK (``client.gossip``): the bandwidth matrix, rounds and
group configurations.

Like the other result modules, no protobuf type reaches a caller. ``client.gossip``'s methods (sync
and async) are in ``_api_async.py`` (the sync twin is generated from it) over the requests and converters here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.client._base import Rpc
from controlplane.client._ports import convert, revision_of
from controlplane.v1 import gossip_pb2

__all__ = [
    "BandwidthMatrix",
    "GossipEvent",
    "GroupChange",
    "GroupConfig",
    "Link",
    "NodeMetrics",
    "Round",
    "RoundFailure",
    "RoundState",
    "TensorInfo",
    "TensorSpec",
    "TrainingMetrics",
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
    #: How exchanged values travel: "" (as they are) or "int8".
    compression: str = ""


@dataclass(frozen=True, slots=True)
class RoundFailure:
    node: str
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class TrainingMetrics:
    """A node's own training metrics for a round (the model it brought to the round, before the
    mix), or a round's aggregate of them. None: not measured (never a stand-in for 0)."""

    loss: float | None = None
    #: In [0, 1].
    accuracy: float | None = None
    examples: int | None = None


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    node: str
    metrics: TrainingMetrics


@dataclass(frozen=True, slots=True)
class Round:
    group: str
    number: int
    participants: tuple[str, ...]
    matrix_version: int
    seed: int
    #: The group's policy, or "probe" for a probe round (see ``probe``).
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
    #: Participants that reported a successful mix, and the sum of their ``mix_delta_sq``.
    mixed: int = 0
    mix_delta_sq: float = 0.0
    #: The training metrics participants reported with the round, one record each, by node.
    node_metrics: tuple[NodeMetrics, ...] = ()
    #: Over ``node_metrics``: mean loss and mean accuracy over the records carrying each, examples
    #: summed (None when no participant reported metrics; see ``loss`` and ``accuracy``).
    metrics: TrainingMetrics | None = None

    @property
    def loss(self) -> float | None:
        """The mean loss the participants reported (None: none did)."""
        return self.metrics.loss if self.metrics is not None else None

    @property
    def accuracy(self) -> float | None:
        """The mean accuracy the participants reported (None: none did)."""
        return self.metrics.accuracy if self.metrics is not None else None

    @property
    def probe(self) -> bool:
        """A probe round: its pairs measured their links (two transfer sizes each way) and mixed
        nothing, so it has no consensus measure, and its bottleneck says nothing about a policy."""
        return self.policy == "probe"

    @property
    def pair_distance_sq(self) -> float | None:
        """The consensus measure: mean squared distance between matched partners' parameters before
        the round, on the exchanged coordinates (None until a mix was reported). With W = (I + P) / 2
        each end moves by half its pair's difference, hence 4 x the mean reported squared move."""
        return 4.0 * self.mix_delta_sq / self.mixed if self.mixed else None

    @property
    def duration_s(self) -> float | None:
        """Seconds from the start to the end (None while running)."""
        return (self.ended_unix_ms - self.started_unix_ms) / 1000 if self.ended_unix_ms else None


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A gossip group's configuration (see ``GroupConfig`` in gossip.proto)."""

    group: str
    #: "saps", "saps-adaptive", "random" or "best_bottleneck".
    policy: str
    sparsity_ratio: float
    round_timeout_s: float
    #: Fixed once the group exists: the tensors its peers train.
    spec: TensorSpec | None
    min_participants: int
    seed: int
    paused: bool
    create_revision: int
    mod_revision: int
    updated_unix_ms: int
    #: Training rounds between two probe cycles (0: probe only links nobody measured).
    probe_every_rounds: int = 0
    #: Fixed once the group exists: how exchanged values travel, "" (as they are) or "int8".
    compression: str = ""


@dataclass(frozen=True, slots=True)
class GroupChange:
    """What ``configure_group`` / ``update_group`` did."""

    group: GroupConfig
    #: The group did not exist and was created.
    created: bool
    #: Something changed (always with ``created``).
    changed: bool
    revision: int


@dataclass(frozen=True, slots=True)
class GossipEvent:
    """What a watch on domain "gossip" carries in ``Event.gossip``."""

    round: Round | None
    matrix_version: int
    #: For keys "groups/NAME": the group's configuration (its last one, for a DELETE).
    group: GroupConfig | None = None


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
            spec=tensor_spec(tensors, sparsity_ratio),
        ),
        request_id=request_id,
    )


Tensors = Iterable[tuple[str, str, Sequence[int]]]


def training_metrics(
    loss: float | None = None, accuracy: float | None = None, examples: int | None = None
) -> gossip_pb2.TrainingMetrics:
    """A report's metrics: only the given ones set (the cluster checks them: finite, accuracy in [0, 1])."""
    return gossip_pb2.TrainingMetrics(loss=loss, accuracy=accuracy, examples=examples)


def tensor_spec(tensors: Tensors, sparsity_ratio: float = 0.0) -> gossip_pb2.TensorSpec:
    """``[(name, dtype, shape), ...]`` as a TensorSpec (dtype: a numpy dtype name, e.g. "float32")."""
    return gossip_pb2.TensorSpec(
        tensors=[gossip_pb2.TensorInfo(name=n, dtype=d, shape=list(s)) for n, d, s in tensors],
        sparsity_ratio=sparsity_ratio,
    )


def configure_request(
    group: str,
    tensors: Tensors,
    *,
    policy: str,
    sparsity_ratio: float,
    round_timeout_s: float,
    min_participants: int,
    seed: int,
    paused: bool,
    probe_every_rounds: int | None = None,
    compression: str = "",
    request_id: str,
) -> gossip_pb2.ConfigureGroupRequest:
    """``probe_every_rounds=None`` leaves it to the cluster's default (50); ``compression``: "" or
    "none" (values as they are) or "int8"."""
    return gossip_pb2.ConfigureGroupRequest(
        group=gossip_pb2.GroupConfig(
            group=group,
            policy=policy,
            sparsity_ratio=sparsity_ratio,
            round_timeout_s=round_timeout_s,
            spec=tensor_spec(tensors),
            min_participants=min_participants,
            seed=seed,
            paused=paused,
            probe_every_rounds=probe_every_rounds,
            compression=compression,
        ),
        request_id=request_id,
    )


def update_request(
    group: str,
    *,
    policy: str | None,
    round_timeout_s: float | None,
    min_participants: int | None,
    paused: bool | None,
    probe_every_rounds: int | None = None,
    request_id: str,
) -> gossip_pb2.ConfigureGroupRequest:
    """A ConfigureGroup whose update_mask names exactly the fields given (not None)."""
    given = {
        "policy": policy,
        "round_timeout_s": round_timeout_s,
        "min_participants": min_participants,
        "paused": paused,
        "probe_every_rounds": probe_every_rounds,
    }
    mask = [name for name, value in given.items() if value is not None]
    if not mask:
        raise ValueError(f"name at least one of {', '.join(given)} to change")
    config = gossip_pb2.GroupConfig(group=group, **{name: given[name] for name in mask})  # type: ignore[arg-type]
    return gossip_pb2.ConfigureGroupRequest(group=config, update_mask=mask, request_id=request_id)


def group_change(response: gossip_pb2.ConfigureGroupResponse) -> GroupChange:
    return GroupChange(convert(GroupConfig, response.group), response.created, response.changed, revision_of(response))


_G = "/controlplane.v1.Gossip/"
REPORT_BANDWIDTH = Rpc(_G + "ReportBandwidth", gossip_pb2.ReportBandwidthResponse)
GET_BANDWIDTH = Rpc(_G + "GetBandwidth", gossip_pb2.GetBandwidthResponse)
START_ROUND = Rpc(_G + "StartRound", gossip_pb2.StartRoundResponse)
REPORT_ROUND = Rpc(_G + "ReportRound", gossip_pb2.ReportRoundResponse)
END_ROUND = Rpc(_G + "EndRound", gossip_pb2.EndRoundResponse)
GET_ROUND = Rpc(_G + "GetRound", gossip_pb2.GetRoundResponse)
LIST_ROUNDS = Rpc(_G + "ListRounds", gossip_pb2.ListRoundsResponse)
CONFIGURE_GROUP = Rpc(_G + "ConfigureGroup", gossip_pb2.ConfigureGroupResponse)
GET_GROUP = Rpc(_G + "GetGroup", gossip_pb2.GetGroupResponse)
LIST_GROUPS = Rpc(_G + "ListGroups", gossip_pb2.ListGroupsResponse)
DELETE_GROUP = Rpc(_G + "DeleteGroup", gossip_pb2.DeleteGroupResponse)
