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


def check_member_id(member_id: str, what: str = "member id") -> str | None:
    """Server, node and client ids."""
    if not member_id:
        return f"{what} must not be empty"
    if len(member_id) > MAX_MEMBER_ID_CHARS or not _MEMBER_ID.fullmatch(member_id):
        return (
            f"{what} {member_id!r} is not valid: use up to {MAX_MEMBER_ID_CHARS} letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return None


def check_address(address: str, what: str) -> str | None:
    """A HOST:PORT address (IPv6 hosts in brackets)."""
    match = _HOST_PORT.fullmatch(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        return f"{what} {address!r} is not a HOST:PORT address with a port in 1-65535"
    return None


# ------------------------------------------------------------------ ports, services, leases

MAX_NAME_CHARS = 128
MAX_HOST_CHARS = 253
MAX_DECLARED_PORTS = 64
MAX_RESERVE_SPAN = 4096
MAX_REASON_CHARS = 512
MAX_OBSERVED_PORTS = 65535
MIN_LEASE_TTL_MS = 1000
MAX_LEASE_TTL_MS = 24 * 3600 * 1000

# A host is a DNS name or an IP address (IPv6 without brackets).
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_port(port: int, what: str = "port") -> str | None:
    if not 1 <= port <= 65535:
        return f"{what} {port} is outside 1-65535"
    return None


def check_host(host: str) -> str | None:
    if not host:
        return "host must not be empty"
    if len(host) > MAX_HOST_CHARS or not _HOST.fullmatch(host):
        return f"host {host!r} is not a DNS name or IP address (letters, digits, '.', '-', '_', ':')"
    return None


def check_name(name: str, what: str) -> str | None:
    """Service, port, range and label-like names: what a person would type on a command line."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        return (
            f"{what} {name!r} is not valid: use up to {MAX_NAME_CHARS} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def check_text(text: str, what: str, limit: int = MAX_REASON_CHARS) -> str | None:
    if len(text) > limit:
        return f"{what} is {len(text)} characters; the limit is {limit}"
    return None


def check_lease_ttl(ttl_ms: int) -> str | None:
    if not MIN_LEASE_TTL_MS <= ttl_ms <= MAX_LEASE_TTL_MS:
        return f"lease TTL {ttl_ms} ms is outside {MIN_LEASE_TTL_MS} ms to {MAX_LEASE_TTL_MS} ms (1 s to 1 day)"
    return None


# Model names may use any script's letters ("Café-7B"): word characters, '.', '-', no spaces.
_MODEL_NAME = re.compile(r"[^\W_][\w.-]*")


def check_model_name(name: str, what: str = "model name") -> str | None:
    """Model names, families and tags: letters of any script, digits, '.', '_', '-'."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_NAME_CHARS or not _MODEL_NAME.fullmatch(name):
        return (
            f"{what} {name!r} is not valid: use up to {MAX_NAME_CHARS} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None
