"""Values near the 1 MiB limit replicate cleanly: pysyncobj sends entries over 64 KiB in chunks."""

from __future__ import annotations

import random
import re

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster
from controlplane.state import limits

from .conftest import assert_same_state, running, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

PREFIX = "large/"
# pysyncobj's appendEntriesBatchSizeBytes (64 KiB): a log entry at least this big is sent as a
# chunked "transmission", whose end marker is computed from the entry's length while the chunks cut
# its (longer) pickled form. Two kinds of value reach past it: ASCII values whose entry is a little
# under two chunks (pickle adds a few dozen bytes), and binary values of any size over a chunk
# (pickle protocol 2 stores bytes >= 0x80 as two UTF-8 bytes).
CHUNK = 64 * 1024
ASCII_SIZES = range(2 * CHUNK - 200, 2 * CHUNK - 120, 8)
BINARY_SIZES = (CHUNK, 3 * CHUNK, limits.MAX_VALUE_BYTES)


def _log_offsets(cluster: LocalCluster) -> dict[str, int]:
    return {node.id: node.log_path.stat().st_size for node in cluster.nodes.values()}


def _new_log_text(cluster: LocalCluster, offsets: dict[str, int]) -> dict[str, str]:
    out = {}
    for node in cluster.nodes.values():
        with open(node.log_path, "rb") as log:
            log.seek(offsets[node.id])
            out[node.id] = log.read().decode("utf-8", "replace")
    return out


def test_large_values_replicate_without_raft_errors(cluster: LocalCluster) -> None:
    offsets = _log_offsets(cluster)
    written = {}
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as client:
        for kind, sizes in (("ascii", ASCII_SIZES), ("binary", BINARY_SIZES)):
            for size in sizes:
                key = f"{PREFIX}{kind}/{size:08d}"
                value = b"a" * size if kind == "ascii" else random.Random(size).randbytes(size)
                written[key] = (value, client.put(key, value).revision)
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision, PREFIX)
    assert {key: (kv.value, kv.mod_revision) for key, kv in state.items()} == written

    # The Raft tick thread must not fail on the way (an exception there aborts the whole tick:
    # heartbeats, applies and every other message read in it).
    failures = {}
    for node_id, text in _new_log_text(cluster, offsets).items():
        ticks = text.count("failed _onTick")
        if ticks or "Traceback" in text:
            errors = sorted({line for line in text.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)})
            failures[node_id] = f"{ticks} failed ticks, {text.count('Traceback')} tracebacks: {errors}"
    assert not failures, f"Raft tick-thread exceptions while replicating large values: {failures}"
