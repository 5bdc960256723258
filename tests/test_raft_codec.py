"""The Raft peer codec: pysyncobj's message dicts to protobuf and back, never pickle on the wire.

Commands are built the way pysyncobj builds them (its pickle, its command type byte, TCPNode), and
the last test runs three real SyncObj instances in-process whose every message crosses the codec.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE, _bchr
from pysyncobj.transport import Transport

from controlplane.server import raft_codec
from controlplane.server.raft_codec import CodecError, RaftCodec
from controlplane.state import limits
from controlplane.v1 import raft_peer_pb2

FUNC_ID = 0
codec = RaftCodec(FUNC_ID)


def call(batch: bytes, func_id: int = FUNC_ID) -> bytes:
    """What @replicated apply_entry(batch, callback=...) queues."""
    return _bchr(_COMMAND_TYPE.REGULAR) + pysyncobj_pickle.dumps((func_id, (batch,)))


def membership(op: str, address: str) -> bytes:
    """What addNodeToCluster / removeNodeFromCluster queue."""
    node = TCPNode(address)
    return _bchr(_COMMAND_TYPE.MEMBERSHIP) + pysyncobj_pickle.dumps([op, node.id, node])


NO_OP = _bchr(_COMMAND_TYPE.NO_OP)


def over_the_wire(message: dict[str, Any], sender: RaftCodec = codec, receiver: RaftCodec = codec) -> dict[str, Any]:
    return receiver.decode_bytes(sender.encode(message).SerializeToString())


def assert_same(actual: Any, expected: Any) -> None:
    """Equal and of the same types all the way down: True == 1 and (1,) != [1] matter to SyncObj."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            assert_same(got, want)
    else:
        assert actual == expected


def append(
    entries: list[tuple[bytes, int, int]], prev: tuple[int, int] | None = (4, 2), term: int = 3
) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 4,
        "entries": entries,
        "prevLogIdx": prev[0] if prev else None,
        "prevLogTerm": prev[1] if prev else None,
    }


# Every dict SyncObj 0.3.17 passes to Transport.send, in each of its forms.
MESSAGES: dict[str, dict[str, Any]] = {
    "request_vote": {"type": "request_vote", "term": 7, "last_log_index": 120, "last_log_term": 6},
    "request_vote_empty_log": {"type": "request_vote", "term": 1, "last_log_index": 1, "last_log_term": 0},
    "pre_vote": {"type": "request_vote", "term": 8, "last_log_index": 120, "last_log_term": 6, "pre_vote": True},
    "pre_vote_granted": {"type": "response_vote", "term": 8, "pre_vote": True},
    "response_vote": {"type": "response_vote", "term": 7},
    "timeout_now": {"type": "timeout_now", "term": 2**64 - 1},
    "heartbeat": append([]),
    "entries": append(
        [
            (NO_OP, 5, 3),
            (call(b"batch"), 6, 3),
            (call(b""), 7, 3),
            (call(bytes(range(256))), 8, 3),
            (membership("add", "10.0.0.4:7001"), 9, 3),
            (membership("rem", "[::1]:7002"), 10, 3),
        ]
    ),
    "no_prev_entry": append([], prev=None),
    "initial_entry": append([(NO_OP, 1, 0)], prev=(0, 0), term=0),
    "snapshot_first": {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "serialized": (b"\x1f\x8b", True, False),
    },
    "snapshot_middle": {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "serialized": (b"x" * 100, False, False),
    },
    "snapshot_last": {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"", False, True)},
    "snapshot_busy": {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None},
    "next_node_idx_ok": {"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": True},
    "next_node_idx_reset": {"type": "next_node_idx", "next_node_idx": 4, "reset": True, "success": False},
    "next_node_idx_pending": {"type": "next_node_idx", "next_node_idx": 4, "reset": False, "success": False},
    "apply_command": {"type": "apply_command", "command": call(b"forwarded"), "request_id": 3},
    "apply_command_no_reply": {"type": "apply_command", "command": call(b"forwarded")},
    "apply_membership": {"type": "apply_command", "command": membership("add", "node-4.example:7001"), "request_id": 1},
    "applied": {"type": "apply_command_response", "request_id": 3, "log_idx": 12, "log_term": 3},
    "denied": {"type": "apply_command_response", "request_id": 3, "error": FAIL_REASON.REQUEST_DENIED},
    "not_leader": {"type": "apply_command_response", "request_id": 4, "error": FAIL_REASON.NOT_LEADER},
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_round_trips_to_the_same_dict(name: str) -> None:
    message = MESSAGES[name]
    assert_same(over_the_wire(message), message)
    assert_same(codec.decode(codec.encode(message)), message)


def test_the_receiver_rebuilds_calls_with_its_own_method_id() -> None:
    received = over_the_wire(append([(call(b"x", func_id=2), 5, 3)]), sender=RaftCodec(2), receiver=RaftCodec(5))
    assert received["entries"] == [(call(b"x", func_id=5), 5, 3)]


def test_for_syncobj_finds_the_versioned_apply_entry() -> None:
    node = _Log("127.0.0.1:9001", [], _conf(), _Transport(_Wire(), "127.0.0.1:9001"))
    try:
        assert set(node._methodToID) == {"apply_entry_v0"}  # not "apply_entry": pysyncobj numbers the copy
        entry = call(b"x", func_id=node._methodToID["apply_entry_v0"])
        assert RaftCodec.for_syncobj(node).encode(append([(entry, 5, 3)])).append_entries.entries[0].batch == b"x"
    finally:
        node.destroy()


def test_the_fail_reason_enum_has_pysyncobj_numbers() -> None:
    enum = raft_peer_pb2.ApplyCommandResponse.FailReason
    reasons = {name: value for name, value in vars(FAIL_REASON).items() if name.isupper()}
    assert {name: enum.Value(f"FAIL_REASON_{name}") for name in reasons if name != "SUCCESS"} == {
        name: value for name, value in reasons.items() if name != "SUCCESS"
    }


# ------------------------------------------------------------------ properties

ADDRESSES = st.builds(
    "{}:{}".format, st.sampled_from(["127.0.0.1", "node-1.example", "[::1]", "10.1.2.3"]), st.integers(1, 65535)
)
COMMANDS = st.one_of(
    st.binary(max_size=300).map(call),
    st.just(NO_OP),
    st.builds(membership, st.sampled_from(["add", "rem"]), ADDRESSES),
)


@st.composite
def append_messages(draw: st.DrawFn) -> dict[str, Any]:
    term = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        return append([], prev=None, term=term)
    prev_index = draw(st.integers(0, 2**63))
    prev_term = draw(st.integers(0, term))
    commands = draw(st.lists(COMMANDS, max_size=12))
    terms = sorted(draw(st.lists(st.integers(prev_term, term), min_size=len(commands), max_size=len(commands))))
    entries = [
        (command, prev_index + 1 + offset, entry_term)
        for offset, (command, entry_term) in enumerate(zip(commands, terms, strict=True))
    ]
    return append(entries, prev=(prev_index, prev_term), term=term)


@settings(max_examples=200, deadline=None)
@given(append_messages())
def test_append_entries_with_random_entries_round_trip(message: dict[str, Any]) -> None:
    assert_same(over_the_wire(message), message)


_KEYS = sorted(
    ({key for message in MESSAGES.values() for key in message} | {"transmission", "data", "entries", "serialized"})
    - {"type"}
)
_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-2, 2**65),
        st.binary(max_size=40),
        st.text(max_size=5),
        COMMANDS,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner, inner)),
    max_leaves=8,
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A real message with one key replaced, added or dropped."""
    message = dict(draw(st.sampled_from([MESSAGES[name] for name in sorted(MESSAGES)])))
    key = draw(st.sampled_from(_KEYS))
    if key in message and draw(st.booleans()):
        del message[key]
    else:
        message[key] = draw(_VALUES)
    return message


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        mutated_messages(),
        st.fixed_dictionaries(
            {"type": st.sampled_from([*sorted({m["type"] for m in MESSAGES.values()}), "other"])},
            optional=dict.fromkeys(_KEYS, _VALUES),
        ),
    )
)
def test_encode_refuses_only_with_codec_error_and_what_it_accepts_round_trips(message: dict[str, Any]) -> None:
    try:
        encoded = codec.encode(message)
    except CodecError:
        return
    assert_same(codec.decode_bytes(encoded.SerializeToString()), message)


_SERIALIZED = [codec.encode(MESSAGES[name]).SerializeToString() for name in sorted(MESSAGES)]


@st.composite
def damaged_messages(draw: st.DrawFn) -> bytes:
    """A real serialized message with some bytes changed, or cut short."""
    data = bytearray(draw(st.sampled_from(_SERIALIZED)))
    if not data or draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), damaged_messages()))
def test_decoding_arbitrary_bytes_gives_a_dict_or_codec_error(data: bytes) -> None:
    try:
        message = codec.decode_bytes(data)
    except CodecError:
        return
    # Whatever decodes is a message pysyncobj could have sent: it encodes back to the same thing.
    assert_same(over_the_wire(message), message)


# ------------------------------------------------------------------ nothing runs

side_effects: list[str] = []


def _record(what: str) -> None:
    side_effects.append(what)


class _Trap:
    """Unpickling it calls _record: proof that a pickle ran code."""

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_record, ("unpickled",))


@pytest.fixture
def trap() -> bytes:
    """A pickle that records a side effect when loaded, checked to really do so."""
    payload = pysyncobj_pickle.dumps((FUNC_ID, (_Trap(),)))
    side_effects.clear()
    pickle.loads(payload)
    assert side_effects == ["unpickled"]
    side_effects.clear()
    return payload


def test_a_call_that_would_run_code_is_refused_without_running_it(trap: bytes) -> None:
    for message in (
        append([(_bchr(_COMMAND_TYPE.REGULAR) + trap, 5, 3)]),
        {"type": "apply_command", "command": _bchr(_COMMAND_TYPE.REGULAR) + trap, "request_id": 1},
        append([(_bchr(_COMMAND_TYPE.MEMBERSHIP) + trap, 5, 3)]),
    ):
        with pytest.raises(CodecError, match="not allowed"):
            codec.encode(message)
    assert side_effects == []


def test_a_call_naming_any_global_is_refused() -> None:
    for payload in ((FUNC_ID, (os.system,)), (FUNC_ID, (b"x",), {"shell": os.system}), ["add", "a:1", os.system]):
        command = _bchr(_COMMAND_TYPE.REGULAR) + pysyncobj_pickle.dumps(payload)
        with pytest.raises(CodecError, match=r"posix\.system is not allowed"):
            codec.encode(append([(command, 5, 3)]))


def test_pickled_or_garbage_wire_bytes_are_refused_without_running_anything(trap: bytes) -> None:
    for data in (
        trap,
        pickle.dumps(MESSAGES["entries"]),
        pickle.dumps(MESSAGES["entries"], protocol=5),
        pysyncobj_pickle.dumps(MESSAGES["request_vote"]),
        b"\xff" * 32,
        b"\x0a\x05\x08\x01",  # request_vote field, truncated
    ):
        with pytest.raises(CodecError):
            codec.decode_bytes(data)
    assert side_effects == []


# ------------------------------------------------------------------ refused on encode


def _version_command() -> bytes:
    return _bchr(_COMMAND_TYPE.VERSION) + pysyncobj_pickle.dumps(1)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            {
                "type": "append_entries",
                "transmission": "start",
                "data": b"x",
                "term": 3,
                "commit_index": 4,
                "prevLogIdx": 4,
                "prevLogTerm": 2,
            },
            "chunked",
        ),
        (append([(_version_command(), 5, 3)]), "code-version"),
        ({"type": "apply_command", "command": _version_command(), "request_id": 1}, "code-version"),
        (append([(b"\x07", 5, 3)]), "unknown pysyncobj command type"),
        (append([(b"", 5, 3)]), "non-empty bytes"),
        (append([(NO_OP + b"x", 5, 3)]), "no-op command carries data"),
        ({"type": "apply_command", "command": NO_OP}, "forwarded no-op"),
        (append([(call(b"x", func_id=1), 5, 3)]), "only apply_entry"),
        (append([(_bchr(0) + pysyncobj_pickle.dumps((FUNC_ID, (b"x",), {})), 5, 3)]), "no kwargs"),
        (append([(_bchr(0) + pysyncobj_pickle.dumps((FUNC_ID, (b"x", b"y"))), 5, 3)]), "one positional"),
        (append([(_bchr(0) + pysyncobj_pickle.dumps(FUNC_ID), 5, 3)]), "one positional"),
        (append([(_bchr(0) + pysyncobj_pickle.dumps((FUNC_ID, ("text",))), 5, 3)]), "must be bytes"),
        (append([(_bchr(0) + pickle.dumps((FUNC_ID, (b"x",)), protocol=4), 5, 3)]), "own pickling"),
        (append([(_bchr(0) + b"\x80\x02", 5, 3)]), "does not unpickle"),
        (append([(membership("join", "a.example:1"), 5, 3)]), "'add' or 'rem'"),
        (append([(membership("add", "a.example:0"), 5, 3)]), "not a HOST:PORT"),
        (
            append(
                [(_bchr(2) + pysyncobj_pickle.dumps(["add", "a.example:1", TCPNode("a.example:1", extra=1)]), 5, 3)]
            ),
            "own pickling",
        ),
        (append([(_bchr(2) + pysyncobj_pickle.dumps(["add", "a.example:1", TCPNode("b.example:1")]), 5, 3)]), "add"),
        (append([(call(b"x"), 6, 3)]), "consecutive"),
        (append([(call(b"x"), 5, 3), (call(b"y"), 7, 3)]), "consecutive"),
        (append([(call(b"x"), 5, 3), (call(b"y"), 6, 2)]), "has term"),
        (append([(call(b"x"), 5, 4)]), "has term"),
        (append([(call(b"x"), 5, 1)]), "has term"),
        (append([(call(b"x"), 5, 3)], prev=None), "without prevLogIdx"),
        ({**append([]), "prevLogTerm": None}, "only one of"),
        (append([[call(b"x"), 5, 3]]), "tuple"),  # type: ignore[list-item]
        ({**append([]), "entries": ()}, "must be a list"),
        ({"type": "request_vote", "term": True, "last_log_index": 1, "last_log_term": 0}, "must be an int"),
        ({"type": "request_vote", "term": -1, "last_log_index": 1, "last_log_term": 0}, "must be an int"),
        ({"type": "request_vote", "term": 2**64, "last_log_index": 1, "last_log_term": 0}, "must be an int"),
        ({"type": "request_vote", "term": 1.0, "last_log_index": 1, "last_log_term": 0}, "must be an int"),
        ({"type": "request_vote", "term": 1, "last_log_index": 1}, "missing"),
        ({"type": "response_vote", "term": 1, "extra": 1}, "unexpected"),
        ({"type": "next_node_idx", "next_node_idx": 4, "reset": 0, "success": True}, "must be a bool"),
        ({"type": "append_entries", "term": 3, "commit_index": 9, "serialized": False}, "None or"),
        ({"type": "append_entries", "term": 3, "commit_index": 9, "serialized": ("x", True, True)}, "None or"),
        ({"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"x", 1, True)}, "must be a bool"),
        ({"type": "apply_command_response", "request_id": 3, "error": FAIL_REASON.SUCCESS}, "failure reason"),
        ({"type": "apply_command_response", "request_id": 3, "error": 99}, "failure reason"),
        ({"type": "apply_command_response", "request_id": 3, "log_idx": 1}, "missing"),
        ({"type": "apply_command", "command": call(b"x"), "request_id": None}, "must be an int"),
        ({"type": "vote_for_me", "term": 1}, "unknown message type"),
        ({"term": 1}, "not a string"),
    ],
)
def test_encode_refuses(message: Any, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        codec.encode(message)


def test_encode_refuses_what_is_not_a_dict() -> None:
    with pytest.raises(CodecError, match="is a dict"):
        codec.encode(["request_vote", 1])  # type: ignore[arg-type]


def test_the_codec_needs_a_method_id() -> None:
    with pytest.raises(CodecError):
        RaftCodec(-1)
    with pytest.raises(CodecError, match="no replicated apply_entry"):
        RaftCodec.for_syncobj(object())


# ------------------------------------------------------------------ refused on decode


def _entry(**fields: Any) -> raft_peer_pb2.LogEntry:
    return raft_peer_pb2.LogEntry(index=5, term=3, **fields)


def _append(*entries: raft_peer_pb2.LogEntry, **fields: Any) -> raft_peer_pb2.RaftMessage:
    fields = {"term": 3, "commit_index": 4, "prev_log_idx": 4, "prev_log_term": 2, **fields}
    return raft_peer_pb2.RaftMessage(append_entries=raft_peer_pb2.AppendEntries(entries=entries, **fields))


Change = raft_peer_pb2.LogEntry.MembershipChange
Response = raft_peer_pb2.ApplyCommandResponse


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (raft_peer_pb2.RaftMessage(), "no kind"),
        (_append(_entry()), "has no command"),
        (_append(_entry(membership=Change(op=Change.OP_UNSPECIFIED, address="a.example:1"))), "neither add nor"),
        (_append(_entry(membership=Change(op=Change.OP_ADD, address="a.example"))), "HOST:PORT"),
        (_append(_entry(membership=Change(op=Change.OP_ADD, address="a.example:0"))), "HOST:PORT"),
        (_append(_entry(membership=Change(op=Change.OP_ADD, address="a" * 300 + ":1"))), "characters"),
        (_append(_entry(membership=Change(op=7, address="a.example:1"))), "neither add nor"),  # type: ignore[arg-type]
        (_append(_entry(batch=b"x"), prev_log_idx=5), "consecutive"),
        (_append(_entry(batch=b"x"), term=2), "has term"),
        (
            raft_peer_pb2.RaftMessage(append_entries=raft_peer_pb2.AppendEntries(term=3, prev_log_idx=4)),
            "only one of",
        ),
        (
            raft_peer_pb2.RaftMessage(append_entries=raft_peer_pb2.AppendEntries(term=3, entries=[_entry(no_op={})])),
            "without prevLogIdx",
        ),
        (raft_peer_pb2.RaftMessage(apply_command=raft_peer_pb2.ApplyCommand(request_id=1)), "has no command"),
        (raft_peer_pb2.RaftMessage(apply_command_response=Response(request_id=1)), "neither a position"),
        # An error field holding SUCCESS would read as a success without a result.
        (raft_peer_pb2.RaftMessage(apply_command_response=Response(request_id=1, error=0)), "failure reason"),  # type: ignore[arg-type]
        (raft_peer_pb2.RaftMessage(apply_command_response=Response(request_id=1, error=42)), "failure reason"),  # type: ignore[arg-type]
    ],
)
def test_decode_refuses(message: raft_peer_pb2.RaftMessage, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        codec.decode(message)
    with pytest.raises(CodecError, match=reason):
        codec.decode_bytes(message.SerializeToString())


def test_decode_refuses_what_is_not_a_raft_message() -> None:
    with pytest.raises(CodecError, match="takes a RaftMessage"):
        codec.decode(raft_peer_pb2.PeerFrame())  # type: ignore[arg-type]


def test_size_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = [
        (append([(call(b"123456789"), 5, 3)]), "an entry is 9 bytes"),
        (append([(call(b"12345678"), 5, 3), (call(b"12345"), 6, 3)]), "13 bytes of entries"),
        (append([(NO_OP, index, 3) for index in range(5, 9)]), "4 entries"),
        ({"type": "apply_command", "command": call(b"123456789")}, "a forwarded command is 9 bytes"),
        ({"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"x" * 9, True, False)}, "piece is 9"),
    ]
    sent = [codec.encode(message) for message, _ in refused]  # from a peer with larger caps
    monkeypatch.setattr(raft_codec, "MAX_ENTRY_BYTES", 8)
    monkeypatch.setattr(raft_codec, "MAX_APPEND_BYTES", 12)
    monkeypatch.setattr(raft_codec, "MAX_APPEND_ENTRIES", 3)
    monkeypatch.setattr(raft_codec, "MAX_RAFT_MESSAGE_BYTES", 100)
    fits = append([(call(b"12345678"), 5, 3), (call(b"1234"), 6, 3), (NO_OP, 7, 3)])
    assert_same(over_the_wire(fits), fits)
    for (message, reason), wire in zip(refused, sent, strict=True):
        with pytest.raises(CodecError, match=reason):
            codec.encode(message)
        with pytest.raises(CodecError, match=reason):
            codec.decode(wire)
    with pytest.raises(CodecError, match="a RaftMessage of 101 bytes"):
        codec.decode_bytes(b"\x00" * 101)


def test_encode_reads_each_call_once_within_its_cache_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[bytes] = []
    read = raft_codec._unpickle

    def counting(data: bytes, *args: Any) -> Any:
        reads.append(data)
        return read(data, *args)

    monkeypatch.setattr(raft_codec, "_unpickle", counting)
    monkeypatch.setattr(raft_codec, "_VERIFIED_CACHE_BYTES", 10)
    fresh = RaftCodec(FUNC_ID)
    first = append([(call(b"12345"), 5, 3), (call(b"678"), 6, 3)])
    for _ in range(3):  # a leader sending the same slice to several followers
        assert_same(over_the_wire(first, sender=fresh), first)
    assert len(reads) == 2
    fresh.encode(append([(call(b"abc"), 5, 3)]))  # 5 + 3 + 3 > 10: the oldest is forgotten
    fresh.encode(append([(call(b"678"), 5, 3)]))
    assert len(reads) == 3
    fresh.encode(append([(call(b"12345"), 5, 3)]))
    assert len(reads) == 4
    huge = append([(call(b"x" * 11), 5, 3)])  # above the whole budget: never kept
    fresh.encode(huge)
    fresh.encode(huge)
    assert len(reads) == 6
    # What was checked once still obeys the caps.
    monkeypatch.setattr(raft_codec, "MAX_ENTRY_BYTES", 4)
    with pytest.raises(CodecError, match="an entry is 5 bytes"):
        fresh.encode(first)


def test_the_caps_admit_what_pysyncobj_sends_at_our_batch_size() -> None:
    # pysyncobj closes a batch once its commands reach appendEntriesBatchSizeBytes (raft.py sets it to
    # RAFT_MAX_ENTRY_BYTES): all entries but the last stay under that, the last one is under it too.
    cap = limits.RAFT_MAX_ENTRY_BYTES
    assert cap <= raft_codec.MAX_ENTRY_BYTES and 2 * cap <= raft_codec.MAX_APPEND_BYTES
    smallest_call = len(call(b""))
    assert cap // smallest_call + 1 <= raft_codec.MAX_APPEND_ENTRIES
    # The frame cap holds everything decode accepts: each entry adds at most its overhead to its batch.
    for size in (0, 127, 2**14, 2**21, raft_codec.MAX_ENTRY_BYTES):
        entry = raft_peer_pb2.LogEntry(index=2**64 - 1, term=2**64 - 1, batch=b"x" * size)
        overhead = raft_peer_pb2.AppendEntries(entries=[entry]).ByteSize() - size
        assert overhead <= raft_codec._ENTRY_OVERHEAD_BYTES
    header = (
        raft_peer_pb2.RaftMessage(
            append_entries=raft_peer_pb2.AppendEntries(
                term=2**64 - 1, commit_index=2**64 - 1, prev_log_idx=2**64 - 1, prev_log_term=2**64 - 1
            )
        ).ByteSize()
        + 5
    )  # the entries field's length prefix
    header += 6  # the PeerFrame around it: a tag and a length
    largest = raft_codec.MAX_APPEND_BYTES + raft_codec.MAX_APPEND_ENTRIES * raft_codec._ENTRY_OVERHEAD_BYTES + header
    assert largest <= raft_codec.MAX_RAFT_MESSAGE_BYTES


# ------------------------------------------------------------------ real SyncObj instances over the codec


class _Log(SyncObj):  # type: ignore[misc]
    """Like raft.py's _ReplicatedLog: one replicated method taking the entry bytes."""

    def __init__(self, address: str, partners: list[str], conf: SyncObjConf, transport: Transport) -> None:
        super().__init__(address, partners, conf, transport=transport)
        # After SyncObj.__init__: part of pysyncobj's own (in-memory) dump, so a snapshot carries it.
        self.applied: list[bytes] = []

    @replicated  # type: ignore[misc]
    def apply_entry(self, entry: bytes) -> int:
        self.applied.append(entry)
        return len(self.applied)


class _Wire:
    """Every node's inbox. Messages cross the codec when sent and are delivered by pump()."""

    def __init__(self) -> None:
        self.transports: dict[str, _Transport] = {}
        self.codecs: dict[str, RaftCodec] = {}
        self.cut: set[frozenset[str]] = set()
        self.inboxes: dict[str, deque[tuple[str, dict[str, Any]]]] = {}
        self.seen: Counter[str] = Counter()

    def carry(self, sender: str, receiver: str, message: dict[str, Any]) -> bool:
        if receiver not in self.transports or frozenset((sender, receiver)) in self.cut:
            return False
        raft = self.codecs[sender].encode(message)
        decoded = self.codecs[receiver].decode_bytes(raft.SerializeToString())
        assert_same(decoded, message)
        kind = raft.WhichOneof("kind")
        self.seen[kind] += 1
        if kind == "apply_command_response":
            self.seen[f"apply_command_response.{raft.apply_command_response.WhichOneof('outcome')}"] += 1
        if kind == "snapshot_chunk" and not raft.snapshot_chunk.HasField("part"):
            self.seen["snapshot_chunk.busy"] += 1
        for entry in raft.append_entries.entries:
            self.seen[f"entry.{entry.WhichOneof('command')}"] += 1
        self.inboxes[receiver].append((sender, decoded))
        return True

    def pump(self, nodes: dict[str, _Log]) -> None:
        for node in nodes.values():
            node.doTick(0)
        for address, inbox in self.inboxes.items():
            while inbox:
                sender, message = inbox.popleft()
                self.transports[address]._onMessageReceived(TCPNode(sender), message)

    def link(self, a: str, b: str, up: bool) -> None:
        (self.cut.discard if up else self.cut.add)(frozenset((a, b)))
        for here, there in ((a, b), (b, a)):
            transport = self.transports[here]
            (transport._onNodeConnected if up else transport._onNodeDisconnected)(TCPNode(there))


class _Transport(Transport):  # type: ignore[misc]
    def __init__(self, wire: _Wire, address: str) -> None:
        super().__init__(None, None, None)
        self._wire = wire
        self._address = address
        wire.transports[address] = self
        wire.inboxes[address] = deque()

    def send(self, node: TCPNode, message: dict[str, Any]) -> bool:
        return self._wire.carry(self._address, node.id, message)


def _conf() -> SyncObjConf:
    return SyncObjConf(
        autoTick=False,
        # Appends go out when a command arrives and when the leader commits, not on a timer: the
        # run below advances by ticks alone. No election starts by itself (the test starts them).
        appendEntriesUseBatch=False,
        raftMinTimeout=1000.0,
        raftMaxTimeout=2000.0,
        connectionTimeout=2000.0,
        leaderFallbackTimeout=3000.0,
        dynamicMembershipChange=True,
        logCompactionMinEntries=10**6,
        logCompactionMinTime=10**6,
        # Snapshots travel in many small pieces.
        logCompactionBatchSize=64,
    )


def test_pysyncobj_cluster_runs_over_the_codec() -> None:
    a, b, c = "127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"
    wire = _Wire()
    nodes = {
        address: _Log(address, [p for p in (a, b, c) if p != address], _conf(), _Transport(wire, address))
        for address in (a, b, c)
    }
    for address, node in nodes.items():
        wire.codecs[address] = RaftCodec.for_syncobj(node)
    for first, second in ((a, b), (a, c), (b, c)):
        wire.link(first, second, up=True)
    results: dict[str, tuple[Any, int]] = {}

    def done(name: str) -> Callable[[Any, int], None]:
        return lambda result, reason: results.__setitem__(name, (result, reason))

    def run_until(condition: Callable[[], bool], what: str) -> None:
        for _ in range(500):
            if condition():
                return
            wire.pump(nodes)
        pytest.fail(f"no {what} after 500 rounds; seen {dict(wire.seen)}")

    def leader_is(address: str) -> bool:
        return all(node._getLeader() == TCPNode(address) for node in nodes.values())

    def converged() -> bool:
        logs = [node.applied for node in nodes.values()]
        return all(log == logs[0] for log in logs)

    try:
        # An election: a campaigns now (its deadline is the only clock the run depends on).
        nodes[a]._SyncObj__raftElectionDeadline = 0
        run_until(lambda: leader_is(a), "leader")

        # Entries from the leader, and from a follower (pysyncobj forwards them: apply_command).
        nodes[a].apply_entry(b"from-a", callback=done("a1"))
        nodes[b].apply_entry(b"from-b", callback=done("b1"))
        run_until(lambda: {"a1", "b1"} <= results.keys() and converged(), "replication")
        assert results["a1"][1] == results["b1"][1] == FAIL_REASON.SUCCESS
        assert sorted(nodes[c].applied) == [b"from-a", b"from-b"]

        # c misses entries the leader then compacts away: it catches up through a snapshot.
        wire.link(a, c, up=False)
        wire.link(b, c, up=False)
        for n in range(5):
            nodes[a].apply_entry(f"while-c-was-away-{n}".encode(), callback=done(f"away{n}"))
        run_until(lambda: len(nodes[a].applied) == len(nodes[b].applied) == 7, "commit without c")
        nodes[a].forceLogCompaction()
        c_last = nodes[c]._SyncObj__raftLog[-1][1]
        run_until(lambda: nodes[a]._SyncObj__raftLog[0][1] > c_last + 1, "compaction")
        wire.link(a, c, up=True)
        wire.link(b, c, up=True)
        # A new entry makes the leader send at once (heartbeats alone would wait for a timer).
        nodes[a].apply_entry(b"after-c-returned", callback=done("returned"))
        run_until(lambda: "returned" in results and converged(), "snapshot")
        assert wire.seen["snapshot_chunk"] > 2

        # Membership through a follower: the second identical add is denied (the error form).
        nodes[b].addNodeToCluster("127.0.0.1:9104", callback=done("add"))
        nodes[b].addNodeToCluster("127.0.0.1:9104", callback=done("add-again"))
        run_until(lambda: {"add", "add-again"} <= results.keys(), "membership answers")
        assert results["add"][1] == FAIL_REASON.SUCCESS
        assert results["add-again"][1] == FAIL_REASON.REQUEST_DENIED
        nodes[a].removeNodeFromCluster("127.0.0.1:9104", callback=done("remove"))
        run_until(lambda: "remove" in results, "removal")
        assert results["remove"][1] == FAIL_REASON.SUCCESS

        # Leadership transfer (timeout_now), then the new leader replicates. pysyncobj only hands
        # over to a follower that holds the leader's whole log.
        run_until(
            lambda: nodes[a]._SyncObj__raftMatchIndex[TCPNode(b)] == nodes[a]._SyncObj__raftLog[-1][1],
            "b caught up",
        )
        nodes[a].transferLeadership(b, callback=done("transfer"))
        run_until(lambda: leader_is(b), "new leader")
        nodes[b].apply_entry(b"after-transfer", callback=done("last"))
        run_until(lambda: "last" in results and converged(), "replication by the new leader")
        assert results["last"][1] == FAIL_REASON.SUCCESS
        assert nodes[a].applied[-1] == b"after-transfer"
        assert len(nodes[a].applied) == 9
    finally:
        for node in nodes.values():
            node.destroy()

    kinds = {field.name for field in raft_peer_pb2.RaftMessage.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds <= wire.seen.keys(), wire.seen
    for form in ("apply_command_response.appended", "apply_command_response.error"):
        assert wire.seen[form] > 0, form
    for command in ("batch", "no_op", "membership"):
        assert wire.seen[f"entry.{command}"] > 0, command


@pytest.mark.parametrize(
    "message",
    [
        {"type": "request_vote", "term": 8, "last_log_index": 1, "last_log_term": 1, "pre_vote": False},
        {"type": "response_vote", "term": 8, "pre_vote": 1},
    ],
)
def test_a_pre_vote_flag_is_true_or_absent(message: dict[str, Any]) -> None:
    """pysyncobj's own vote messages never carry the key; a false flag would be a real vote in disguise."""
    with pytest.raises(CodecError, match="pre_vote"):
        codec.encode(message)
