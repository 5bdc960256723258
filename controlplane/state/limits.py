"""Input limits and validation shared by the request handlers and the state machine.

Handlers call these before proposing, so bad input is refused at once with INVALID_ARGUMENT;
the state machine calls them again because a log entry must be safe whatever proposed it.
Each function returns a message a person can act on, or None when the input is fine.
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024
MAX_LIST_LIMIT = 10_000
# Revisions are uint64 on the wire; stop well short so no arithmetic on them can overflow.
MAX_REVISION = 2**62
# A restore is one Raft log entry; see RAFT_MAX_ENTRY_BYTES.
MAX_RESTORE_BYTES = 16 * 1024 * 1024
# pysyncobj 0.3.17 mis-frames entries larger than its appendEntriesBatchSizeBytes (the chunked
# "transmission" path marks the last chunk using the unpickled length, followers unpickle a
# truncated buffer and stall on that entry for good). No entry may reach that size: batches are
# capped at max_batch_bytes (4 MiB) plus one command (<= 1 MiB value), restores at 16 MiB.
RAFT_MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_REQUEST_ID_CHARS = 128
MAX_MEMBER_ID_CHARS = 64

# fullmatch and explicit ASCII classes: "$" would accept a trailing newline and "\d" non-ASCII digits.
_MEMBER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")


def check_key(key: str) -> str | None:
    if not key:
        return "key must not be empty"
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"key is {size} bytes; the limit is {MAX_KEY_BYTES}"
    return None


def check_value(value: bytes) -> str | None:
    if len(value) > MAX_VALUE_BYTES:
        return f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES} (store large artifacts elsewhere)"
    return None


def check_request_id(request_id: str) -> str | None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return f"request_id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}"
    return None


def check_member_id(member_id: str) -> str | None:
    if not member_id:
        return "member id must not be empty"
    if len(member_id) > MAX_MEMBER_ID_CHARS or not _MEMBER_ID.fullmatch(member_id):
        return (
            f"member id {member_id!r} is not valid: use up to {MAX_MEMBER_ID_CHARS} letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return None


def check_address(address: str, what: str) -> str | None:
    """A HOST:PORT address (IPv6 hosts in brackets)."""
    match = _HOST_PORT.fullmatch(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        return f"{what} {address!r} is not a HOST:PORT address with a port in 1-65535"
    return None
