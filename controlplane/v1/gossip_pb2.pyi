from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_RUNNING: _ClassVar[RoundState]
    ROUND_STATE_DONE: _ClassVar[RoundState]
    ROUND_STATE_TIMED_OUT: _ClassVar[RoundState]
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_RUNNING: RoundState
ROUND_STATE_DONE: RoundState
ROUND_STATE_TIMED_OUT: RoundState

class LinkReport(_message.Message):
    __slots__ = ("peer", "bandwidth_bps", "latency_s", "spread_bps", "samples")
    PEER_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    SPREAD_BPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    peer: str
    bandwidth_bps: float
    latency_s: float
    spread_bps: float
    samples: int
    def __init__(self, peer: _Optional[str] = ..., bandwidth_bps: _Optional[float] = ..., latency_s: _Optional[float] = ..., spread_bps: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class Link(_message.Message):
    __slots__ = ("a", "b", "bandwidth_bps", "latency_s", "spread_bps", "samples", "bandwidth_a_bps", "bandwidth_b_bps", "updated_unix_ms", "failures")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    SPREAD_BPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_A_BPS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_B_BPS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    bandwidth_bps: float
    latency_s: float
    spread_bps: float
    samples: int
    bandwidth_a_bps: float
    bandwidth_b_bps: float
    updated_unix_ms: int
    failures: int
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., bandwidth_bps: _Optional[float] = ..., latency_s: _Optional[float] = ..., spread_bps: _Optional[float] = ..., samples: _Optional[int] = ..., bandwidth_a_bps: _Optional[float] = ..., bandwidth_b_bps: _Optional[float] = ..., updated_unix_ms: _Optional[int] = ..., failures: _Optional[int] = ...) -> None: ...

class BandwidthMatrix(_message.Message):
    __slots__ = ("version", "updated_unix_ms", "links")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    version: int
    updated_unix_ms: int
    links: _containers.RepeatedCompositeFieldContainer[Link]
    def __init__(self, version: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., links: _Optional[_Iterable[_Union[Link, _Mapping]]] = ...) -> None: ...

class Pair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("tensors", "sparsity_ratio", "compression")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_RATIO_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    sparsity_ratio: float
    compression: str
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., sparsity_ratio: _Optional[float] = ..., compression: _Optional[str] = ...) -> None: ...

class RoundFailure(_message.Message):
    __slots__ = ("node", "peer", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    peer: str
    reason: str
    def __init__(self, node: _Optional[str] = ..., peer: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Round(_message.Message):
    __slots__ = ("group", "number", "participants", "matrix_version", "seed", "policy", "pairs", "idle", "spec", "started_unix_ms", "deadline_unix_ms", "state", "reported", "failures", "bytes_total", "bottleneck_bps", "seconds_max", "ended_unix_ms", "create_revision", "mod_revision", "mixed", "mix_delta_sq", "node_metrics", "metrics")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MATRIX_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_BPS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_MAX_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    MIXED_FIELD_NUMBER: _ClassVar[int]
    MIX_DELTA_SQ_FIELD_NUMBER: _ClassVar[int]
    NODE_METRICS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    group: str
    number: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    matrix_version: int
    seed: int
    policy: str
    pairs: _containers.RepeatedCompositeFieldContainer[Pair]
    idle: _containers.RepeatedScalarFieldContainer[str]
    spec: TensorSpec
    started_unix_ms: int
    deadline_unix_ms: int
    state: RoundState
    reported: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.RepeatedCompositeFieldContainer[RoundFailure]
    bytes_total: int
    bottleneck_bps: float
    seconds_max: float
    ended_unix_ms: int
    create_revision: int
    mod_revision: int
    mixed: int
    mix_delta_sq: float
    node_metrics: _containers.RepeatedCompositeFieldContainer[NodeMetrics]
    metrics: TrainingMetrics
    def __init__(self, group: _Optional[str] = ..., number: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., matrix_version: _Optional[int] = ..., seed: _Optional[int] = ..., policy: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., idle: _Optional[_Iterable[str]] = ..., spec: _Optional[_Union[TensorSpec, _Mapping]] = ..., started_unix_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., state: _Optional[_Union[RoundState, str]] = ..., reported: _Optional[_Iterable[str]] = ..., failures: _Optional[_Iterable[_Union[RoundFailure, _Mapping]]] = ..., bytes_total: _Optional[int] = ..., bottleneck_bps: _Optional[float] = ..., seconds_max: _Optional[float] = ..., ended_unix_ms: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., mixed: _Optional[int] = ..., mix_delta_sq: _Optional[float] = ..., node_metrics: _Optional[_Iterable[_Union[NodeMetrics, _Mapping]]] = ..., metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ...) -> None: ...

class TrainingMetrics(_message.Message):
    __slots__ = ("loss", "accuracy", "examples")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    loss: float
    accuracy: float
    examples: int
    def __init__(self, loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class NodeMetrics(_message.Message):
    __slots__ = ("node", "metrics")
    NODE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    node: str
    metrics: TrainingMetrics
    def __init__(self, node: _Optional[str] = ..., metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ...) -> None: ...

class GroupConfig(_message.Message):
    __slots__ = ("group", "policy", "sparsity_ratio", "round_timeout_s", "spec", "min_participants", "seed", "paused", "create_revision", "mod_revision", "updated_unix_ms", "probe_every_rounds", "compression")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_RATIO_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROBE_EVERY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    group: str
    policy: str
    sparsity_ratio: float
    round_timeout_s: float
    spec: TensorSpec
    min_participants: int
    seed: int
    paused: bool
    create_revision: int
    mod_revision: int
    updated_unix_ms: int
    probe_every_rounds: int
    compression: str
    def __init__(self, group: _Optional[str] = ..., policy: _Optional[str] = ..., sparsity_ratio: _Optional[float] = ..., round_timeout_s: _Optional[float] = ..., spec: _Optional[_Union[TensorSpec, _Mapping]] = ..., min_participants: _Optional[int] = ..., seed: _Optional[int] = ..., paused: _Optional[bool] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., probe_every_rounds: _Optional[int] = ..., compression: _Optional[str] = ...) -> None: ...

class GossipEvent(_message.Message):
    __slots__ = ("round", "matrix_version", "group")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MATRIX_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    round: Round
    matrix_version: int
    group: GroupConfig
    def __init__(self, round: _Optional[_Union[Round, _Mapping]] = ..., matrix_version: _Optional[int] = ..., group: _Optional[_Union[GroupConfig, _Mapping]] = ...) -> None: ...

class GossipState(_message.Message):
    __slots__ = ("matrix", "rounds", "groups")
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    matrix: BandwidthMatrix
    rounds: _containers.RepeatedCompositeFieldContainer[Round]
    groups: _containers.RepeatedCompositeFieldContainer[GroupConfig]
    def __init__(self, matrix: _Optional[_Union[BandwidthMatrix, _Mapping]] = ..., rounds: _Optional[_Iterable[_Union[Round, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupConfig, _Mapping]]] = ...) -> None: ...

class ReportBandwidthRequest(_message.Message):
    __slots__ = ("node_id", "links", "request_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    links: _containers.RepeatedCompositeFieldContainer[LinkReport]
    request_id: str
    def __init__(self, node_id: _Optional[str] = ..., links: _Optional[_Iterable[_Union[LinkReport, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReportBandwidthResponse(_message.Message):
    __slots__ = ("header", "matrix_version", "links_changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MATRIX_VERSION_FIELD_NUMBER: _ClassVar[int]
    LINKS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    matrix_version: int
    links_changed: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., matrix_version: _Optional[int] = ..., links_changed: _Optional[int] = ...) -> None: ...

class GetBandwidthRequest(_message.Message):
    __slots__ = ("read", "node_id")
    READ_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    node_id: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class GetBandwidthResponse(_message.Message):
    __slots__ = ("header", "matrix")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    matrix: BandwidthMatrix
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., matrix: _Optional[_Union[BandwidthMatrix, _Mapping]] = ...) -> None: ...

class StartRoundRequest(_message.Message):
    __slots__ = ("round", "request_id")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    round: Round
    request_id: str
    def __init__(self, round: _Optional[_Union[Round, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartRoundResponse(_message.Message):
    __slots__ = ("header", "round")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    round: Round
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., round: _Optional[_Union[Round, _Mapping]] = ...) -> None: ...

class ReportRoundRequest(_message.Message):
    __slots__ = ("group", "number", "node_id", "bytes", "seconds", "failed_peer", "reason", "request_id", "mix_delta_sq", "metrics")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILED_PEER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MIX_DELTA_SQ_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    group: str
    number: int
    node_id: str
    bytes: int
    seconds: float
    failed_peer: str
    reason: str
    request_id: str
    mix_delta_sq: float
    metrics: TrainingMetrics
    def __init__(self, group: _Optional[str] = ..., number: _Optional[int] = ..., node_id: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., failed_peer: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., mix_delta_sq: _Optional[float] = ..., metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ...) -> None: ...

class ReportRoundResponse(_message.Message):
    __slots__ = ("header", "round")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    round: Round
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., round: _Optional[_Union[Round, _Mapping]] = ...) -> None: ...

class EndRoundRequest(_message.Message):
    __slots__ = ("group", "number", "request_id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group: str
    number: int
    request_id: str
    def __init__(self, group: _Optional[str] = ..., number: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class EndRoundResponse(_message.Message):
    __slots__ = ("header", "round", "ended")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    round: Round
    ended: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., round: _Optional[_Union[Round, _Mapping]] = ..., ended: _Optional[bool] = ...) -> None: ...

class GetRoundRequest(_message.Message):
    __slots__ = ("read", "group", "number")
    READ_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    group: str
    number: int
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., group: _Optional[str] = ..., number: _Optional[int] = ...) -> None: ...

class GetRoundResponse(_message.Message):
    __slots__ = ("header", "round")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    round: Round
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., round: _Optional[_Union[Round, _Mapping]] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("read", "group", "after", "limit")
    READ_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    group: str
    after: int
    limit: int
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., group: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("header", "rounds")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    rounds: _containers.RepeatedCompositeFieldContainer[Round]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., rounds: _Optional[_Iterable[_Union[Round, _Mapping]]] = ...) -> None: ...

class ConfigureGroupRequest(_message.Message):
    __slots__ = ("group", "update_mask", "request_id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group: GroupConfig
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, group: _Optional[_Union[GroupConfig, _Mapping]] = ..., update_mask: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ConfigureGroupResponse(_message.Message):
    __slots__ = ("header", "group", "created", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    group: GroupConfig
    created: bool
    changed: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., group: _Optional[_Union[GroupConfig, _Mapping]] = ..., created: _Optional[bool] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetGroupRequest(_message.Message):
    __slots__ = ("read", "group")
    READ_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    group: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., group: _Optional[str] = ...) -> None: ...

class GetGroupResponse(_message.Message):
    __slots__ = ("header", "group")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    group: GroupConfig
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., group: _Optional[_Union[GroupConfig, _Mapping]] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class ListGroupsResponse(_message.Message):
    __slots__ = ("header", "groups")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    groups: _containers.RepeatedCompositeFieldContainer[GroupConfig]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[GroupConfig, _Mapping]]] = ...) -> None: ...

class DeleteGroupRequest(_message.Message):
    __slots__ = ("group", "request_id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group: str
    request_id: str
    def __init__(self, group: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteGroupResponse(_message.Message):
    __slots__ = ("header", "deleted")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deleted: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...
