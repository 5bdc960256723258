from controlplane.v1 import command_pb2 as _command_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerFrame(_message.Message):
    __slots__ = ("hello", "raft", "propose_call", "propose_reply")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_CALL_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_REPLY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    raft: RaftMessage
    propose_call: ProposeCall
    propose_reply: ProposeReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., raft: _Optional[_Union[RaftMessage, _Mapping]] = ..., propose_call: _Optional[_Union[ProposeCall, _Mapping]] = ..., propose_reply: _Optional[_Union[ProposeReply, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "node_id", "raft_address", "learner")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    raft_address: str
    learner: bool
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., raft_address: _Optional[str] = ..., learner: _Optional[bool] = ...) -> None: ...

class ProposeCall(_message.Message):
    __slots__ = ("call_id", "commands")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    commands: _containers.RepeatedCompositeFieldContainer[_command_pb2.Command]
    def __init__(self, call_id: _Optional[int] = ..., commands: _Optional[_Iterable[_Union[_command_pb2.Command, _Mapping]]] = ...) -> None: ...

class ProposeReply(_message.Message):
    __slots__ = ("call_id", "results", "error_kind", "error_message")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    results: _containers.RepeatedCompositeFieldContainer[_command_pb2.CommandResult]
    error_kind: str
    error_message: str
    def __init__(self, call_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_command_pb2.CommandResult, _Mapping]]] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("request_vote", "response_vote", "append_entries", "snapshot_chunk", "next_node_idx", "apply_command", "apply_command_response", "timeout_now")
    REQUEST_VOTE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_VOTE_FIELD_NUMBER: _ClassVar[int]
    APPEND_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    NEXT_NODE_IDX_FIELD_NUMBER: _ClassVar[int]
    APPLY_COMMAND_FIELD_NUMBER: _ClassVar[int]
    APPLY_COMMAND_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_NOW_FIELD_NUMBER: _ClassVar[int]
    request_vote: RequestVote
    response_vote: ResponseVote
    append_entries: AppendEntries
    snapshot_chunk: RaftSnapshotChunk
    next_node_idx: NextNodeIndex
    apply_command: ApplyCommand
    apply_command_response: ApplyCommandResponse
    timeout_now: TimeoutNow
    def __init__(self, request_vote: _Optional[_Union[RequestVote, _Mapping]] = ..., response_vote: _Optional[_Union[ResponseVote, _Mapping]] = ..., append_entries: _Optional[_Union[AppendEntries, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[RaftSnapshotChunk, _Mapping]] = ..., next_node_idx: _Optional[_Union[NextNodeIndex, _Mapping]] = ..., apply_command: _Optional[_Union[ApplyCommand, _Mapping]] = ..., apply_command_response: _Optional[_Union[ApplyCommandResponse, _Mapping]] = ..., timeout_now: _Optional[_Union[TimeoutNow, _Mapping]] = ...) -> None: ...

class RequestVote(_message.Message):
    __slots__ = ("term", "last_log_index", "last_log_term", "pre_vote")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    def __init__(self, term: _Optional[int] = ..., last_log_index: _Optional[int] = ..., last_log_term: _Optional[int] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class ResponseVote(_message.Message):
    __slots__ = ("term", "pre_vote")
    TERM_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    term: int
    pre_vote: bool
    def __init__(self, term: _Optional[int] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class AppendEntries(_message.Message):
    __slots__ = ("term", "commit_index", "prev_log_idx", "prev_log_term", "entries")
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_IDX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    term: int
    commit_index: int
    prev_log_idx: int
    prev_log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    def __init__(self, term: _Optional[int] = ..., commit_index: _Optional[int] = ..., prev_log_idx: _Optional[int] = ..., prev_log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("index", "term", "batch", "no_op", "membership")
    class NoOp(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class MembershipChange(_message.Message):
        __slots__ = ("op", "address")
        class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            OP_UNSPECIFIED: _ClassVar[LogEntry.MembershipChange.Op]
            OP_ADD: _ClassVar[LogEntry.MembershipChange.Op]
            OP_REMOVE: _ClassVar[LogEntry.MembershipChange.Op]
        OP_UNSPECIFIED: LogEntry.MembershipChange.Op
        OP_ADD: LogEntry.MembershipChange.Op
        OP_REMOVE: LogEntry.MembershipChange.Op
        OP_FIELD_NUMBER: _ClassVar[int]
        ADDRESS_FIELD_NUMBER: _ClassVar[int]
        op: LogEntry.MembershipChange.Op
        address: str
        def __init__(self, op: _Optional[_Union[LogEntry.MembershipChange.Op, str]] = ..., address: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    NO_OP_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    batch: bytes
    no_op: LogEntry.NoOp
    membership: LogEntry.MembershipChange
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., batch: _Optional[bytes] = ..., no_op: _Optional[_Union[LogEntry.NoOp, _Mapping]] = ..., membership: _Optional[_Union[LogEntry.MembershipChange, _Mapping]] = ...) -> None: ...

class RaftSnapshotChunk(_message.Message):
    __slots__ = ("term", "commit_index", "part")
    class Part(_message.Message):
        __slots__ = ("data", "first", "last")
        DATA_FIELD_NUMBER: _ClassVar[int]
        FIRST_FIELD_NUMBER: _ClassVar[int]
        LAST_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        first: bool
        last: bool
        def __init__(self, data: _Optional[bytes] = ..., first: _Optional[bool] = ..., last: _Optional[bool] = ...) -> None: ...
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    term: int
    commit_index: int
    part: RaftSnapshotChunk.Part
    def __init__(self, term: _Optional[int] = ..., commit_index: _Optional[int] = ..., part: _Optional[_Union[RaftSnapshotChunk.Part, _Mapping]] = ...) -> None: ...

class NextNodeIndex(_message.Message):
    __slots__ = ("next_node_idx", "reset", "success")
    NEXT_NODE_IDX_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    next_node_idx: int
    reset: bool
    success: bool
    def __init__(self, next_node_idx: _Optional[int] = ..., reset: _Optional[bool] = ..., success: _Optional[bool] = ...) -> None: ...

class ApplyCommand(_message.Message):
    __slots__ = ("batch", "membership", "request_id")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    batch: bytes
    membership: LogEntry.MembershipChange
    request_id: int
    def __init__(self, batch: _Optional[bytes] = ..., membership: _Optional[_Union[LogEntry.MembershipChange, _Mapping]] = ..., request_id: _Optional[int] = ...) -> None: ...

class ApplyCommandResponse(_message.Message):
    __slots__ = ("request_id", "appended", "error")
    class FailReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FAIL_REASON_UNSPECIFIED: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_QUEUE_FULL: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_MISSING_LEADER: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_DISCARDED: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_NOT_LEADER: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_LEADER_CHANGED: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_REQUEST_DENIED: _ClassVar[ApplyCommandResponse.FailReason]
        FAIL_REASON_UNKNOWN_OUTCOME: _ClassVar[ApplyCommandResponse.FailReason]
    FAIL_REASON_UNSPECIFIED: ApplyCommandResponse.FailReason
    FAIL_REASON_QUEUE_FULL: ApplyCommandResponse.FailReason
    FAIL_REASON_MISSING_LEADER: ApplyCommandResponse.FailReason
    FAIL_REASON_DISCARDED: ApplyCommandResponse.FailReason
    FAIL_REASON_NOT_LEADER: ApplyCommandResponse.FailReason
    FAIL_REASON_LEADER_CHANGED: ApplyCommandResponse.FailReason
    FAIL_REASON_REQUEST_DENIED: ApplyCommandResponse.FailReason
    FAIL_REASON_UNKNOWN_OUTCOME: ApplyCommandResponse.FailReason
    class Appended(_message.Message):
        __slots__ = ("log_idx", "log_term")
        LOG_IDX_FIELD_NUMBER: _ClassVar[int]
        LOG_TERM_FIELD_NUMBER: _ClassVar[int]
        log_idx: int
        log_term: int
        def __init__(self, log_idx: _Optional[int] = ..., log_term: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPENDED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    appended: ApplyCommandResponse.Appended
    error: ApplyCommandResponse.FailReason
    def __init__(self, request_id: _Optional[int] = ..., appended: _Optional[_Union[ApplyCommandResponse.Appended, _Mapping]] = ..., error: _Optional[_Union[ApplyCommandResponse.FailReason, str]] = ...) -> None: ...

class TimeoutNow(_message.Message):
    __slots__ = ("term",)
    TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    def __init__(self, term: _Optional[int] = ...) -> None: ...
