"""pysyncobj's peer messages to protobuf and back, so no pickle ever crosses the wire.

Why: pysyncobj's TCP transport pickles the message dicts ``SyncObj`` hands to
``Transport.send`` and unpickles whatever arrives, so anyone who reaches the Raft port runs code.
Our transport (``peer_transport.py``) sends a ``RaftMessage`` (``raft_peer.proto``) instead, and
this module converts between the two. It is pure: no I/O, no clock, no state but the method id
below and a cache of commands it has already checked.

The one pickle pysyncobj still needs is in its log: a command is one type byte and, for a
replicated call or a membership change, a pickle (protocol 2). On the wire an entry is typed
(``LogEntry``: a ``batch``, a ``no_op`` or a ``membership`` change), and:

* ``encode`` (sender) reads this process's own command bytes with a restricted unpickler. A
  replicated call cannot resolve *no* global at all: protocol 2 writes a ``bytes`` argument as
  ``_codecs.encode(text, "latin1")`` (``__builtin__.bytes()`` when empty), so exactly those two
  names resolve, to local shims that build bytes and nothing else. A membership change resolves
  only ``pysyncobj.node.TCPNode``. Any other global is refused before anything runs. Then encode
  rebuilds the command from what it read and requires the very same bytes, so what it sends is
  exactly what pysyncobj logged.
* ``decode`` (receiver) never unpickles: it rebuilds pysyncobj's command bytes from the typed
  fields with pysyncobj's own ``pickle.dumps``. Only protobuf parsing touches wire bytes.

A replicated call is rebuilt with the *receiver's* id for ``apply_entry`` (``RaftCodec(
apply_func_id)``), so the id never travels. ``apply_entry(entry: bytes)`` is our only replicated
method, called with one positional ``bytes`` argument; any other call shape is refused.

Refused (``CodecError``), on both sides:

* the chunked ``append_entries`` form (``transmission``): pysyncobj takes it for an entry at
  least ``appendEntriesBatchSizeBytes`` long, which we set above our largest entry, and it is
  broken upstream (``limits.RAFT_MAX_ENTRY_BYTES``);
* code-version commands (we never call ``setCodeVersion``), and any command type byte beyond the
  four pysyncobj 0.3.17 knows;
* a dict with a key missing, a key too many, or a value of another type (an ``int`` where a
  ``bool`` belongs, or the reverse): SyncObj must see exactly the dict its peer sent;
* numbers outside uint64, an empty or unknown oneof, an error reason that is not a failure;
* entries that are not consecutive from ``prevLogIdx + 1``, whose terms decrease or exceed the
  message's term (pysyncobj adds received entries to its log unchecked);
* anything above the size caps below.

Invariants: ``decode(encode(m)) == m`` for every message pysyncobj 0.3.17 sends (same keys,
same value types, entry commands byte for byte); whatever ``encode`` accepts, ``decode`` accepts
after a protobuf round trip (the same checks run on both sides); both raise ``CodecError`` and
nothing else. A ``CodecError`` from ``decode`` means the peer sent something no pysyncobj sends:
the transport closes the connection. From ``encode`` it means this process's pysyncobj produced
something we do not carry: a bug here, not an attack.

``CodecError`` is local to the peer plane: it never reaches a client, so it is not part of the
``controlplane.errors`` tree.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

from google.protobuf.message import DecodeError
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE

from controlplane.state import limits
from controlplane.v1 import raft_peer_pb2

__all__ = [
    "MAX_APPEND_BYTES",
    "MAX_APPEND_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_RAFT_MESSAGE_BYTES",
    "CodecError",
    "RaftCodec",
]

# One entry's batch, one forwarded command, one snapshot piece. pysyncobj measures an entry by
# its pickled command, which is longer than the batch inside it (protocol 2 stores bytes as latin-1
# text in UTF-8: up to twice as long); an entry whose command reached appendEntriesBatchSizeBytes
# (= RAFT_MAX_ENTRY_BYTES) would have taken the refused chunked form.
MAX_ENTRY_BYTES: Final = limits.RAFT_MAX_ENTRY_BYTES
# All batches of one append_entries. pysyncobj closes a batch once its commands reach
# appendEntriesBatchSizeBytes, so the entries before the last one stay below one cap and the last
# one is below another: together, less than twice the cap.
MAX_APPEND_BYTES: Final = 2 * limits.RAFT_MAX_ENTRY_BYTES
# Entries in one append_entries, so a message of tiny entries cannot make a receiver build
# tens of millions of tuples. A call of apply_entry pickles to at least 36 bytes, so pysyncobj's
# batch holds at most RAFT_MAX_ENTRY_BYTES / 36 + 1 (about 932k) of them; the cap leaves room for
# about 116k no-ops on top (one per election) and for membership changes (over 100 bytes each).
MAX_APPEND_ENTRIES: Final = limits.RAFT_MAX_ENTRY_BYTES // 32
# What a LogEntry adds around its batch at most: tags, length prefixes, a 10-byte varint each for
# index and term (32 bytes; round up).
_ENTRY_OVERHEAD_BYTES: Final = 40
# No RaftMessage decode accepts is longer (unless it carries fields this schema does not know), so
# a transport may refuse a longer frame before reading it: the 1 KiB on top covers the message's own
# fields and the PeerFrame around it. Use it as the frame cap: a legitimate append_entries can be
# close to MAX_APPEND_BYTES, twice RAFT_MAX_ENTRY_BYTES. A frame parses in memory before decode
# can look at it, so this also bounds what a peer can make the parser allocate.
MAX_RAFT_MESSAGE_BYTES: Final = MAX_APPEND_BYTES + MAX_APPEND_ENTRIES * _ENTRY_OVERHEAD_BYTES + 1024

# Batch bytes of the replicated calls encode remembers as already checked (the command bytes are
# kept alive with them). Four of our largest usual batches (max_batch_bytes, 4 MiB): enough that
# one append_entries slice read for the first follower is found again for the next ones.
_VERIFIED_CACHE_BYTES: Final = 16 * 1024 * 1024

_UINT64_MAX: Final = 2**64 - 1
# A membership address is "host:port" as limits.check_address accepts it; bound the host too.
_MAX_ADDRESS_CHARS: Final = limits.MAX_HOST_CHARS + len("[]:65535")
# pysyncobj's FAIL_REASON values that can be an error; SUCCESS (0) read as an error would be taken
# for a success without a result.
_FAIL_REASONS: Final = frozenset(
    value for name, value in vars(FAIL_REASON).items() if name.isupper() and value != FAIL_REASON.SUCCESS
)
_MEMBERSHIP_OPS: Final = {
    "add": raft_peer_pb2.LogEntry.MembershipChange.OP_ADD,
    "rem": raft_peer_pb2.LogEntry.MembershipChange.OP_REMOVE,
}
_MEMBERSHIP_OP_NAMES: Final = {op: name for name, op in _MEMBERSHIP_OPS.items()}
_NO_OP_COMMAND: Final = bytes([_COMMAND_TYPE.NO_OP])
#: What an entry replaced by a no-op holds (pysyncobj's own no-op command).
NO_OP_COMMAND: Final = _NO_OP_COMMAND

# The exact key sets of every dict pysyncobj 0.3.17 sends (syncobj.py, every __transport.send).
_REQUEST_VOTE_KEYS: Final = frozenset({"type", "term", "last_log_index", "last_log_term"})
_PRE_VOTE_KEYS: Final = _REQUEST_VOTE_KEYS | {"pre_vote"}
_TERM_ONLY_KEYS: Final = frozenset({"type", "term"})
_PRE_VOTE_GRANTED_KEYS: Final = _TERM_ONLY_KEYS | {"pre_vote"}
_APPEND_KEYS: Final = frozenset({"type", "term", "commit_index", "entries", "prevLogIdx", "prevLogTerm"})
_SNAPSHOT_KEYS: Final = frozenset({"type", "term", "commit_index", "serialized"})
_NEXT_NODE_IDX_KEYS: Final = frozenset({"type", "next_node_idx", "reset", "success"})
_APPLY_KEYS: Final = frozenset({"type", "command"})
_APPLY_WITH_ID_KEYS: Final = frozenset({"type", "command", "request_id"})
_APPENDED_KEYS: Final = frozenset({"type", "request_id", "log_idx", "log_term"})
_FAILED_KEYS: Final = frozenset({"type", "request_id", "error"})

Entry = tuple[bytes, int, int]


class CodecError(ValueError):
    """A message or log entry that has no protobuf form, or a protobuf that no pysyncobj sends."""


def _refuse(reason: str) -> NoReturn:
    raise CodecError(reason)


# ------------------------------------------------------------------ reading our own pickles


def _latin1_bytes(text: object, encoding: object) -> bytes:
    # Protocol 2 writes b"..." as _codecs.encode(b.decode("latin1"), "latin1"): only that call.
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed as protocol 2's bytes constructor")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # Protocol 2 writes b"" as __builtin__.bytes().
    if args:
        raise pickle.UnpicklingError("__builtin__.bytes is only allowed without arguments")
    return b""


_CALL_GLOBALS: Final[Mapping[tuple[str, str], Callable[..., Any]]] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}
_MEMBERSHIP_GLOBALS: Final[Mapping[tuple[str, str], Any]] = {("pysyncobj.node", "TCPNode"): TCPNode}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals it is given; every other one is an error before anything runs.

    Only ever used on command bytes this process's pysyncobj produced or this codec rebuilt; the
    bytes are then compared with their canonical re-pickling, so a stray opcode cannot pass.
    """

    def __init__(self, data: bytes, allowed: Mapping[tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _unpickle(data: bytes, allowed: Mapping[tuple[str, str], Any], what: str) -> Any:
    try:
        return _RestrictedUnpickler(data, allowed).load()
    except Exception as exc:
        raise CodecError(f"{what} does not unpickle as one: {exc}") from None


def _membership_command(op: str, address: str) -> bytes:
    # As SyncObj.addNodeToCluster / removeNodeFromCluster build it from an address string.
    node = TCPNode(address)
    return bytes([_COMMAND_TYPE.MEMBERSHIP]) + pysyncobj_pickle.dumps([op, node.id, node])


def is_membership_change(command: bytes) -> bool:
    """A pysyncobj configuration entry (the other kinds: a replicated call, a no-op)."""
    return bool(command) and command[0] == _COMMAND_TYPE.MEMBERSHIP


def read_membership_change(command: bytes) -> tuple[str, str]:
    """("add" or "rem", Raft address) of a pysyncobj membership command; CodecError if it is none.

    Also how ``recovery.py`` reads the configuration entries of a server's own journal.
    """
    change = _unpickle(command[1:], _MEMBERSHIP_GLOBALS, "a membership change")
    if not (type(change) is list and len(change) == 3):
        _refuse("a membership change must be [op, node id, node]")
    op, node_id, node = change
    if op not in _MEMBERSHIP_OPS or type(node_id) is not str or type(node) is not TCPNode or node.id != node_id:
        _refuse("a membership change must be ['add' or 'rem', address, TCPNode(address)]")
    if _membership_command(op, _check_address(node_id)) != command:
        _refuse("a membership change that is not in pysyncobj's own pickling (a node with extra attributes?)")
    return op, node_id


# ------------------------------------------------------------------ value checks


def _uint(value: object, what: str) -> int:
    # type() and not isinstance(): a bool is an int to Python but not to SyncObj's peer.
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        _refuse(f"{what} must be an int in 0..2**64-1, not {type(value).__name__} {value!r:.40}")
    return value


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        _refuse(f"{what} must be a bool, not {type(value).__name__} {value!r:.40}")
    return value


def _pre_vote_flag(message: Mapping[str, Any], with_flag: frozenset[str], without: frozenset[str], kind: str) -> bool:
    """The message's ``pre_vote`` (it must be True when present), checking its keys either way."""
    if "pre_vote" not in message:
        _keys(message, without, kind)
        return False
    _keys(message, with_flag, kind)
    if message["pre_vote"] is not True:
        _refuse(f"{kind}: pre_vote must be True when present, not {message['pre_vote']!r}")
    return True


def _keys(message: Mapping[str, Any], expected: frozenset[str], kind: str) -> None:
    if message.keys() != expected:
        missing = sorted(expected - message.keys())
        extra = sorted(message.keys() - expected, key=repr)
        _refuse(f"{kind} has keys missing {missing} and unexpected {extra}")


def _check_address(address: str) -> str:
    problem = (
        f"membership address is {len(address)} characters"
        if len(address) > _MAX_ADDRESS_CHARS
        else limits.check_address(address, "membership address")
    )
    if problem is not None:
        _refuse(problem)
    return address


def _check_batch(batch: bytes, what: str) -> bytes:
    if len(batch) > MAX_ENTRY_BYTES:
        _refuse(f"{what} is {len(batch)} bytes; the cap is {MAX_ENTRY_BYTES}")
    return batch


def _check_entries(
    term: int, prev_index: int | None, prev_term: int | None, positions: list[tuple[int, int]], payload: int
) -> None:
    """What pysyncobj's leader always sends and its follower never checks: a contiguous slice of a log."""
    if len(positions) > MAX_APPEND_ENTRIES:
        _refuse(f"append_entries carries {len(positions)} entries; the cap is {MAX_APPEND_ENTRIES}")
    if payload > MAX_APPEND_BYTES:
        _refuse(f"append_entries carries {payload} bytes of entries; the cap is {MAX_APPEND_BYTES}")
    if prev_index is None or prev_term is None:
        if prev_index is not None or prev_term is not None:
            _refuse("append_entries has only one of prevLogIdx and prevLogTerm")
        if positions:
            _refuse("append_entries without prevLogIdx carries entries")
        return
    expected_index, last_term = prev_index + 1, prev_term
    for index, entry_term in positions:
        if index != expected_index:
            _refuse(f"append_entries entry {index} where {expected_index} was due (entries must be consecutive)")
        if not last_term <= entry_term <= term:
            _refuse(f"append_entries entry {index} has term {entry_term} after {last_term} in a term-{term} message")
        expected_index, last_term = index + 1, entry_term


def _message_type(message: object) -> str:
    if not isinstance(message, dict):
        _refuse(f"a pysyncobj message is a dict, not {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        _refuse(f"message type {kind!r:.40} is not a string")
    return kind


class RaftCodec:
    """Converts pysyncobj's message dicts to ``RaftMessage`` and back (see the module docstring).

    ``apply_func_id`` is this process's pysyncobj id for ``apply_entry`` (``for_syncobj`` reads it):
    encoding refuses calls of any other id, decoding rebuilds calls with it. One codec per
    ``SyncObj``, used on the thread that ticks it only: encode keeps a small cache and takes no lock.
    """

    def __init__(self, apply_func_id: int) -> None:
        self._apply_func_id = _uint(apply_func_id, "apply_func_id")
        # Replicated calls already read and checked, most recently sent last (see
        # _VERIFIED_CACHE_BYTES). A leader sends each entry to every follower, and again after a
        # retry: reading a pickled command costs about twice what pickling it did.
        self._verified: OrderedDict[bytes, bytes] = OrderedDict()
        self._verified_bytes = 0

    @classmethod
    def for_syncobj(cls, sync: Any) -> RaftCodec:
        """The codec for a constructed ``SyncObj`` with a replicated ``apply_entry``.

        pysyncobj numbers the versioned copy (``apply_entry_v0``), not the method's own name.
        """
        try:
            return cls(sync._methodToID[sync._getFuncName("apply_entry")])
        except (AttributeError, KeyError) as exc:
            raise CodecError(f"the SyncObj has no replicated apply_entry: {exc!r}") from None

    # -------------------------------------------------------------- encode

    def encode(self, message: dict[str, Any]) -> raft_peer_pb2.RaftMessage:
        """The protobuf form of a message this process's ``SyncObj`` passed to ``Transport.send``."""
        try:
            return self._encode(message)
        except CodecError:
            raise
        except Exception as exc:  # a bug or a shape nobody foresaw: still only CodecError
            raise CodecError(f"cannot encode the message: {exc!r}") from exc

    def _encode(self, message: dict[str, Any]) -> raft_peer_pb2.RaftMessage:
        kind = _message_type(message)
        if kind == "request_vote":
            pre_vote = _pre_vote_flag(message, _PRE_VOTE_KEYS, _REQUEST_VOTE_KEYS, kind)
            return raft_peer_pb2.RaftMessage(
                request_vote=raft_peer_pb2.RequestVote(
                    term=_uint(message["term"], "term"),
                    last_log_index=_uint(message["last_log_index"], "last_log_index"),
                    last_log_term=_uint(message["last_log_term"], "last_log_term"),
                    pre_vote=pre_vote,
                )
            )
        if kind == "response_vote":
            pre_vote = _pre_vote_flag(message, _PRE_VOTE_GRANTED_KEYS, _TERM_ONLY_KEYS, kind)
            return raft_peer_pb2.RaftMessage(
                response_vote=raft_peer_pb2.ResponseVote(term=_uint(message["term"], "term"), pre_vote=pre_vote)
            )
        if kind == "timeout_now":
            _keys(message, _TERM_ONLY_KEYS, kind)
            return raft_peer_pb2.RaftMessage(timeout_now=raft_peer_pb2.TimeoutNow(term=_uint(message["term"], "term")))
        if kind == "append_entries":
            if "transmission" in message:
                _refuse("the chunked append_entries form (transmission) is never carried: an entry reached the cap")
            if "serialized" in message:
                return raft_peer_pb2.RaftMessage(snapshot_chunk=self._encode_snapshot(message))
            return raft_peer_pb2.RaftMessage(append_entries=self._encode_append(message))
        if kind == "next_node_idx":
            _keys(message, _NEXT_NODE_IDX_KEYS, kind)
            return raft_peer_pb2.RaftMessage(
                next_node_idx=raft_peer_pb2.NextNodeIndex(
                    next_node_idx=_uint(message["next_node_idx"], "next_node_idx"),
                    reset=_bool(message["reset"], "reset"),
                    success=_bool(message["success"], "success"),
                )
            )
        if kind == "apply_command":
            return raft_peer_pb2.RaftMessage(apply_command=self._encode_apply(message))
        if kind == "apply_command_response":
            return raft_peer_pb2.RaftMessage(apply_command_response=self._encode_apply_response(message))
        _refuse(f"unknown message type {kind!r:.40}")

    def _encode_append(self, message: dict[str, Any]) -> raft_peer_pb2.AppendEntries:
        _keys(message, _APPEND_KEYS, "append_entries")
        term = _uint(message["term"], "term")
        append = raft_peer_pb2.AppendEntries(term=term, commit_index=_uint(message["commit_index"], "commit_index"))
        prev_index = prev_term = None
        if message["prevLogIdx"] is not None:
            prev_index = append.prev_log_idx = _uint(message["prevLogIdx"], "prevLogIdx")
        if message["prevLogTerm"] is not None:
            prev_term = append.prev_log_term = _uint(message["prevLogTerm"], "prevLogTerm")
        entries = message["entries"]
        if type(entries) is not list:
            _refuse(f"append_entries entries must be a list, not {type(entries).__name__}")
        payload = 0
        for entry in entries:
            encoded = self._encode_entry(entry)
            append.entries.append(encoded)
            payload += len(encoded.batch)
        _check_entries(term, prev_index, prev_term, [(entry[1], entry[2]) for entry in entries], payload)
        return append

    def _encode_entry(self, entry: object) -> raft_peer_pb2.LogEntry:
        if type(entry) is not tuple or len(entry) != 3:
            _refuse("a log entry must be a (command, index, term) tuple")
        command, index, term = entry
        encoded = raft_peer_pb2.LogEntry(index=_uint(index, "entry index"), term=_uint(term, "entry term"))
        command_type = self._command_type(command)
        if command_type == _COMMAND_TYPE.NO_OP:
            if command != _NO_OP_COMMAND:
                _refuse("a no-op command carries data")
            encoded.no_op.SetInParent()
        elif command_type == _COMMAND_TYPE.REGULAR:
            encoded.batch = self._read_call(command, "an entry")
        else:
            self._read_membership(command, encoded.membership)
        return encoded

    def _command_type(self, command: object) -> int:
        if type(command) is not bytes or not command:
            _refuse(f"a pysyncobj command is non-empty bytes, not {type(command).__name__}")
        command_type = command[0]
        if command_type == _COMMAND_TYPE.VERSION:
            _refuse("code-version commands are never carried (we never call setCodeVersion)")
        if command_type not in (_COMMAND_TYPE.REGULAR, _COMMAND_TYPE.NO_OP, _COMMAND_TYPE.MEMBERSHIP):
            _refuse(f"unknown pysyncobj command type {command_type}")
        return command_type

    def _read_call(self, command: bytes, what: str) -> bytes:
        batch = self._verified.get(command)
        if batch is None:
            batch = self._verify_call(command)
            self._remember(command, batch)
        else:
            self._verified.move_to_end(command)
        return _check_batch(batch, what)

    def _remember(self, command: bytes, batch: bytes) -> None:
        if len(batch) > _VERIFIED_CACHE_BYTES:
            return
        self._verified[command] = batch
        self._verified_bytes += len(batch)
        while self._verified_bytes > _VERIFIED_CACHE_BYTES:
            _, evicted = self._verified.popitem(last=False)
            self._verified_bytes -= len(evicted)

    def _verify_call(self, command: bytes) -> bytes:
        call = _unpickle(command[1:], _CALL_GLOBALS, "a replicated call")
        if not (type(call) is tuple and len(call) == 2 and type(call[1]) is tuple and len(call[1]) == 1):
            _refuse("a replicated call must be (method id, (entry,)): one positional argument, no kwargs")
        func_id, (batch,) = call
        if type(func_id) is not int or func_id != self._apply_func_id:
            _refuse(f"a call of replicated method {func_id!r:.40}; only apply_entry ({self._apply_func_id}) is carried")
        if type(batch) is not bytes:
            _refuse(f"apply_entry's argument must be bytes, not {type(batch).__name__}")
        if self._call_command(batch) != command:
            _refuse("a replicated call that is not in pysyncobj's own pickling")
        return batch

    def _read_membership(self, command: bytes, into: raft_peer_pb2.LogEntry.MembershipChange) -> None:
        op, address = read_membership_change(command)
        into.op = _MEMBERSHIP_OPS[op]
        into.address = address

    def _encode_snapshot(self, message: dict[str, Any]) -> raft_peer_pb2.RaftSnapshotChunk:
        _keys(message, _SNAPSHOT_KEYS, "append_entries (snapshot)")
        chunk = raft_peer_pb2.RaftSnapshotChunk(
            term=_uint(message["term"], "term"), commit_index=_uint(message["commit_index"], "commit_index")
        )
        serialized = message["serialized"]
        if serialized is not None:
            # (data, isFirst, isLast) from Serializer.getTransmissionData; its False (a read error)
            # would make the follower raise, so it is refused here.
            if type(serialized) is not tuple or len(serialized) != 3 or type(serialized[0]) is not bytes:
                _refuse("serialized must be None or (bytes, first, last)")
            data, first, last = serialized
            chunk.part.data = _check_batch(data, "a snapshot piece")
            chunk.part.first = _bool(first, "serialized first")
            chunk.part.last = _bool(last, "serialized last")
        return chunk

    def _encode_apply(self, message: dict[str, Any]) -> raft_peer_pb2.ApplyCommand:
        _keys(message, _APPLY_WITH_ID_KEYS if "request_id" in message else _APPLY_KEYS, "apply_command")
        apply = raft_peer_pb2.ApplyCommand()
        if "request_id" in message:
            apply.request_id = _uint(message["request_id"], "request_id")
        command = message["command"]
        command_type = self._command_type(command)
        if command_type == _COMMAND_TYPE.REGULAR:
            apply.batch = self._read_call(command, "a forwarded command")
        elif command_type == _COMMAND_TYPE.MEMBERSHIP:
            self._read_membership(command, apply.membership)
        else:
            _refuse("a forwarded no-op: only a leader creates no-ops")
        return apply

    def _encode_apply_response(self, message: dict[str, Any]) -> raft_peer_pb2.ApplyCommandResponse:
        response = raft_peer_pb2.ApplyCommandResponse()
        if "error" in message:
            _keys(message, _FAILED_KEYS, "apply_command_response")
            error = _uint(message["error"], "error")
            if error not in _FAIL_REASONS:
                _refuse(f"apply_command_response error {error} is not a pysyncobj failure reason")
            response.error = error  # type: ignore[assignment]  # the enum has pysyncobj's numbers
        else:
            _keys(message, _APPENDED_KEYS, "apply_command_response")
            response.appended.log_idx = _uint(message["log_idx"], "log_idx")
            response.appended.log_term = _uint(message["log_term"], "log_term")
        response.request_id = _uint(message["request_id"], "request_id")
        return response

    # -------------------------------------------------------------- decode

    def decode_bytes(self, data: bytes) -> dict[str, Any]:
        """``decode`` of a serialized ``RaftMessage``; bytes that do not parse are a ``CodecError`` too."""
        if len(data) > MAX_RAFT_MESSAGE_BYTES:
            _refuse(f"a RaftMessage of {len(data)} bytes; the cap is {MAX_RAFT_MESSAGE_BYTES}")
        try:
            message = raft_peer_pb2.RaftMessage.FromString(data)
        except DecodeError as exc:
            raise CodecError(f"not a RaftMessage: {exc}") from None
        except Exception as exc:  # whatever else the parser may raise is still only a CodecError
            raise CodecError(f"not a RaftMessage: {exc!r}") from exc
        return self.decode(message)

    def decode(self, message: raft_peer_pb2.RaftMessage) -> dict[str, Any]:
        """The dict the peer's ``SyncObj`` sent, with pysyncobj's command bytes rebuilt locally."""
        try:
            return self._decode(message)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"cannot decode the message: {exc!r}") from exc

    def _decode(self, message: raft_peer_pb2.RaftMessage) -> dict[str, Any]:
        if not isinstance(message, raft_peer_pb2.RaftMessage):
            _refuse(f"decode takes a RaftMessage, not {type(message).__name__}")
        kind = message.WhichOneof("kind")
        if kind == "request_vote":
            vote = message.request_vote
            request = {
                "type": "request_vote",
                "term": vote.term,
                "last_log_index": vote.last_log_index,
                "last_log_term": vote.last_log_term,
            }
            if vote.pre_vote:  # only then: pysyncobj's own messages keep their exact shape
                request["pre_vote"] = True
            return request
        if kind == "response_vote":
            response = {"type": "response_vote", "term": message.response_vote.term}
            if message.response_vote.pre_vote:
                response["pre_vote"] = True
            return response
        if kind == "timeout_now":
            return {"type": "timeout_now", "term": message.timeout_now.term}
        if kind == "append_entries":
            return self._decode_append(message.append_entries)
        if kind == "snapshot_chunk":
            return self._decode_snapshot(message.snapshot_chunk)
        if kind == "next_node_idx":
            ack = message.next_node_idx
            return {
                "type": "next_node_idx",
                "next_node_idx": ack.next_node_idx,
                "reset": ack.reset,
                "success": ack.success,
            }
        if kind == "apply_command":
            return self._decode_apply(message.apply_command)
        if kind == "apply_command_response":
            return self._decode_apply_response(message.apply_command_response)
        _refuse("a RaftMessage with no kind this codec knows (empty, or from a newer schema)")

    def _decode_append(self, append: raft_peer_pb2.AppendEntries) -> dict[str, Any]:
        prev_index = append.prev_log_idx if append.HasField("prev_log_idx") else None
        prev_term = append.prev_log_term if append.HasField("prev_log_term") else None
        # Caps and order before any command is rebuilt: the rebuilding is the expensive part.
        wire_entries = append.entries
        if len(wire_entries) > MAX_APPEND_ENTRIES:  # before listing them
            _refuse(f"append_entries carries {len(wire_entries)} entries; the cap is {MAX_APPEND_ENTRIES}")
        _check_entries(
            append.term,
            prev_index,
            prev_term,
            [(entry.index, entry.term) for entry in wire_entries],
            sum(len(entry.batch) for entry in wire_entries),
        )
        entries: list[Entry] = [(self._decode_entry(entry), entry.index, entry.term) for entry in wire_entries]
        return {
            "type": "append_entries",
            "term": append.term,
            "commit_index": append.commit_index,
            "entries": entries,
            "prevLogIdx": prev_index,
            "prevLogTerm": prev_term,
        }

    def _decode_entry(self, entry: raft_peer_pb2.LogEntry) -> bytes:
        command = entry.WhichOneof("command")
        if command == "batch":
            return self._call_command(_check_batch(entry.batch, "an entry"))
        if command == "no_op":
            return _NO_OP_COMMAND
        if command == "membership":
            return self._membership_from(entry.membership)
        _refuse(f"log entry {entry.index} has no command")

    def _membership_from(self, change: raft_peer_pb2.LogEntry.MembershipChange) -> bytes:
        op = _MEMBERSHIP_OP_NAMES.get(change.op)
        if op is None:
            _refuse(f"membership change op {change.op} is neither add nor remove")
        return _membership_command(op, _check_address(change.address))

    def _decode_snapshot(self, chunk: raft_peer_pb2.RaftSnapshotChunk) -> dict[str, Any]:
        serialized = None
        if chunk.HasField("part"):
            part = chunk.part
            serialized = (_check_batch(part.data, "a snapshot piece"), part.first, part.last)
        return {
            "type": "append_entries",
            "term": chunk.term,
            "commit_index": chunk.commit_index,
            "serialized": serialized,
        }

    def _decode_apply(self, apply: raft_peer_pb2.ApplyCommand) -> dict[str, Any]:
        command = apply.WhichOneof("command")
        if command == "batch":
            data = self._call_command(_check_batch(apply.batch, "a forwarded command"))
        elif command == "membership":
            data = self._membership_from(apply.membership)
        else:
            _refuse("apply_command has no command")
        message: dict[str, Any] = {"type": "apply_command", "command": data}
        if apply.HasField("request_id"):
            message["request_id"] = apply.request_id
        return message

    def _decode_apply_response(self, response: raft_peer_pb2.ApplyCommandResponse) -> dict[str, Any]:
        outcome = response.WhichOneof("outcome")
        if outcome == "appended":
            return {
                "type": "apply_command_response",
                "request_id": response.request_id,
                "log_idx": response.appended.log_idx,
                "log_term": response.appended.log_term,
            }
        if outcome == "error":
            error = int(response.error)
            if error not in _FAIL_REASONS:
                _refuse(f"apply_command_response error {error} is not a pysyncobj failure reason")
            return {"type": "apply_command_response", "request_id": response.request_id, "error": error}
        _refuse("apply_command_response has neither a position nor an error")

    # -------------------------------------------------------------- shared

    def _call_command(self, batch: bytes) -> bytes:
        # What @replicated builds for apply_entry(batch, callback=...): pickle.dumps((id, args)).
        return bytes([_COMMAND_TYPE.REGULAR]) + pysyncobj_pickle.dumps((self._apply_func_id, (batch,)))
