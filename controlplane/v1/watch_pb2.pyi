from controlplane.v1 import gossip_pb2 as _gossip_pb2
from controlplane.v1 import kv_pb2 as _kv_pb2
from controlplane.v1 import membership_pb2 as _membership_pb2
from controlplane.v1 import models_pb2 as _models_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from controlplane.v1 import ports_pb2 as _ports_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PUT: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PUT: EventType
EVENT_TYPE_DELETE: EventType

class Event(_message.Message):
    __slots__ = ("revision", "type", "domain", "key", "kv", "prev_kv", "time_unix_ms", "port", "model", "membership", "gossip")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: EventType
    domain: str
    key: str
    kv: _kv_pb2.KeyValue
    prev_kv: _kv_pb2.KeyValue
    time_unix_ms: int
    port: _ports_pb2.PortEvent
    model: _models_pb2.ModelEvent
    membership: _membership_pb2.MembershipEvent
    gossip: _gossip_pb2.GossipEvent
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., domain: _Optional[str] = ..., key: _Optional[str] = ..., kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ..., prev_kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ..., time_unix_ms: _Optional[int] = ..., port: _Optional[_Union[_ports_pb2.PortEvent, _Mapping]] = ..., model: _Optional[_Union[_models_pb2.ModelEvent, _Mapping]] = ..., membership: _Optional[_Union[_membership_pb2.MembershipEvent, _Mapping]] = ..., gossip: _Optional[_Union[_gossip_pb2.GossipEvent, _Mapping]] = ...) -> None: ...

class WatchFilter(_message.Message):
    __slots__ = ("key_prefix", "domains", "types")
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    key_prefix: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[EventType]
    def __init__(self, key_prefix: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[_Union[EventType, str]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("from_revision", "filter")
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    filter: WatchFilter
    def __init__(self, from_revision: _Optional[int] = ..., filter: _Optional[_Union[WatchFilter, _Mapping]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("events", "revision")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    revision: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...
