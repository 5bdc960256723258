from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RaftEntry(_message.Message):
    __slots__ = ("data", "index", "term")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    index: int
    term: int
    def __init__(self, data: _Optional[bytes] = ..., index: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class RaftDump(_message.Message):
    __slots__ = ("state", "last_applied", "previous", "cluster")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    state: bytes
    last_applied: RaftEntry
    previous: RaftEntry
    cluster: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[bytes] = ..., last_applied: _Optional[_Union[RaftEntry, _Mapping]] = ..., previous: _Optional[_Union[RaftEntry, _Mapping]] = ..., cluster: _Optional[_Iterable[str]] = ...) -> None: ...
