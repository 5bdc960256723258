from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExchangeFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCHANGE_FAILURE_UNSPECIFIED: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_SPEC_MISMATCH: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_ROUND_MISMATCH: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_CORRUPT: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_PROTOCOL: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_TIMEOUT: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_NOT_FINITE: _ClassVar[ExchangeFailure]
    EXCHANGE_FAILURE_IDENTITY: _ClassVar[ExchangeFailure]
EXCHANGE_FAILURE_UNSPECIFIED: ExchangeFailure
EXCHANGE_FAILURE_SPEC_MISMATCH: ExchangeFailure
EXCHANGE_FAILURE_ROUND_MISMATCH: ExchangeFailure
EXCHANGE_FAILURE_CORRUPT: ExchangeFailure
EXCHANGE_FAILURE_PROTOCOL: ExchangeFailure
EXCHANGE_FAILURE_TIMEOUT: ExchangeFailure
EXCHANGE_FAILURE_NOT_FINITE: ExchangeFailure
EXCHANGE_FAILURE_IDENTITY: ExchangeFailure

class ExchangeChunk(_message.Message):
    __slots__ = ("header", "data", "trailer", "accept", "refusal")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    header: ExchangeHeader
    data: ExchangeData
    trailer: ExchangeTrailer
    accept: ExchangeAccept
    refusal: ExchangeRefusal
    def __init__(self, header: _Optional[_Union[ExchangeHeader, _Mapping]] = ..., data: _Optional[_Union[ExchangeData, _Mapping]] = ..., trailer: _Optional[_Union[ExchangeTrailer, _Mapping]] = ..., accept: _Optional[_Union[ExchangeAccept, _Mapping]] = ..., refusal: _Optional[_Union[ExchangeRefusal, _Mapping]] = ...) -> None: ...

class ExchangeTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ExchangeHeader(_message.Message):
    __slots__ = ("protocol_version", "group", "round", "sender", "receiver", "spec_digest", "tensors", "sparsity_ratio", "seed", "payload_bytes", "chunk_bytes", "chunk_count", "compression", "examples")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_RATIO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    group: str
    round: int
    sender: str
    receiver: str
    spec_digest: bytes
    tensors: _containers.RepeatedCompositeFieldContainer[ExchangeTensor]
    sparsity_ratio: float
    seed: int
    payload_bytes: int
    chunk_bytes: int
    chunk_count: int
    compression: str
    examples: int
    def __init__(self, protocol_version: _Optional[int] = ..., group: _Optional[str] = ..., round: _Optional[int] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., spec_digest: _Optional[bytes] = ..., tensors: _Optional[_Iterable[_Union[ExchangeTensor, _Mapping]]] = ..., sparsity_ratio: _Optional[float] = ..., seed: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., chunk_count: _Optional[int] = ..., compression: _Optional[str] = ..., examples: _Optional[int] = ...) -> None: ...

class ExchangeData(_message.Message):
    __slots__ = ("index", "data", "sha256")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    sha256: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ExchangeTrailer(_message.Message):
    __slots__ = ("chunk_count", "payload_bytes")
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk_count: int
    payload_bytes: int
    def __init__(self, chunk_count: _Optional[int] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class ExchangeAccept(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExchangeRefusal(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: ExchangeFailure
    message: str
    def __init__(self, reason: _Optional[_Union[ExchangeFailure, str]] = ..., message: _Optional[str] = ...) -> None: ...
