"""Recovery from a lost quorum: ``cpctl serve --force-new-cluster`` (etcd's flag of the same name).

When a majority of the voters is gone for good, no leader can be elected and nothing can be
written, ever: Raft is right to refuse. The way back is to start one survivor as a cluster of its
own, keeping its state, then add new servers. This module does the one step that needs care, on
the stopped server's data directory, before Raft starts:

1. Read the configuration the data dir holds: the dump's member list, then every configuration
   entry of the journal after it (``read_membership_change``), starting from ``--peer`` when there
   is no dump (exactly how pysyncobj builds it at start).
2. Refuse if any other voter of it still listens on its Raft address (a TCP connect): forcing a
   cluster next to a running member of the old one can make two clusters. If a majority runs, the
   quorum is not lost at all.
3. Rewrite: every configuration entry of the journal becomes a no-op (same index and term: the log
   stays one log; a replay must not add the old members back), the dump's member list becomes this
   server alone, and the commit index moves to the last entry, so *everything* in this log is
   applied. Keeping the entries this server had not yet seen committed is deliberate: its recorded
   commit index lags (it is written lazily, DESIGN.md "Durability"), so cutting at it could drop
   writes a client was told succeeded; an entry applied here that the old cluster never committed
   is a write whose client got an error or no answer (a retry with the same request id is
   deduplicated).
4. Write ``raft.forced`` (what was done, when, who the old voters were). It stays: with it, the
   server's configuration starts from itself alone, whatever ``--peer`` still says (the old flags
   name dead members), and the log (dump, then journal) holds every change since. ``raft.voter``
   too: a learner's data dir forced this way restarts as a voter even with ``--join``.

The member directory (replicated state) still lists the old members: the autopilot finishes their
removal ("directory voter outside the configuration"), which also bars their ids, so a server of
the old cluster that was not as dead as believed is refused on the peer plane and stops itself. New
servers join under new ids (``--join``, then ``cpctl cluster members add``).
"""

from __future__ import annotations

import datetime
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import structlog

from controlplane.server.config import ConfigError, ServerConfig
from controlplane.server.journal import DurableJournal, write_file_atomically
from controlplane.server.raft_codec import NO_OP_COMMAND, CodecError, is_membership_change, read_membership_change
from controlplane.v1 import storage_pb2

log = structlog.get_logger("controlplane.recovery")

FORCED_MARKER = "raft.forced"
#: How long a TCP connect to an old voter's Raft address may take before it counts as gone.
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ForcedCluster:
    """What ``force_new_cluster`` did."""

    #: The Raft addresses of the other voters of the configuration it had.
    old_voters: tuple[str, ...]
    #: Index of the last entry, now committed: the state the new cluster starts from.
    last_index: int
    #: Configuration entries turned into no-ops.
    membership_entries: int


def marker_file(config: ServerConfig) -> Path:
    return config.data_dir / FORCED_MARKER


def forced_cluster(config: ServerConfig) -> bool:
    """This data dir was forced into a new cluster: its configuration started from itself alone."""
    return marker_file(config).exists()


def configured_partners(config: ServerConfig) -> list[str]:
    """Who the Raft configuration starts from when the data dir has no dump: the configured peers,
    or nobody after --force-new-cluster: its log then holds every change since it was alone, and
    --peer may still name the old, dead members."""
    if forced_cluster(config):
        return []
    return [peer.raft_address for peer in config.peers]


def configuration(config: ServerConfig, journal: DurableJournal) -> set[str]:
    """The voters' Raft addresses this data dir holds (itself included when it is a voter)."""
    voters = {config.raft_address, *configured_partners(config)}
    first_index = 0
    if config.dump_file.exists():
        try:
            dump = storage_pb2.RaftDump.FromString(config.dump_file.read_bytes())
        except Exception as exc:
            raise ConfigError(f"{config.dump_file} cannot be read ({exc}): nothing to recover from here") from None
        voters = set(dump.cluster) | {config.raft_address}
        first_index = dump.last_applied.index
    for command, index, _term in journal[:]:
        if index <= first_index or not is_membership_change(command):
            continue
        try:
            op, address = read_membership_change(command)
        except CodecError as exc:
            raise ConfigError(f"{config.journal_file}: entry {index} is not a configuration entry: {exc}") from None
        if op == "add":
            voters.add(address)
        else:
            voters.discard(address)
    return voters


def listening(addresses: list[str], timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Those of ``addresses`` where something accepts a TCP connection."""
    answered = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                answered.append(address)
        except OSError:
            continue
    return answered


def force_new_cluster(config: ServerConfig, *, probe_timeout: float = PROBE_TIMEOUT_S) -> ForcedCluster:
    """Rewrite this stopped server's data dir into a one-voter cluster of itself, keeping its state.

    Raises ConfigError (nothing changed) when there is no journal, when the journal or dump cannot
    be read, or when another voter of the old configuration still listens.
    """
    if not config.journal_file.exists():
        raise ConfigError(
            f"{config.data_dir} holds no Raft journal ({config.journal_file.name}): there is no state to keep. "
            "Start a new cluster and restore a backup instead (`cpctl cluster snapshot restore`)"
        )
    journal = DurableJournal(config.journal_file, fsync=config.durability == "fsync")
    try:
        voters = configuration(config, journal)
        others = sorted(voters - {config.raft_address})
        alive = listening(others, probe_timeout)
        if alive:
            majority = len(voters) // 2 + 1
            if len(alive) + 1 >= majority:
                why = (
                    f"{len(alive) + 1} of the {len(voters)} voters run (this one included): the cluster has its "
                    "quorum. "
                    "Restart this server normally (without --force-new-cluster) and replace the missing ones "
                    "with `cpctl cluster members remove` / `add`"
                )
            else:
                why = (
                    "stop every server of the old cluster but this one first (a new cluster beside a running "
                    "member of the old one risks two clusters), then run this again"
                )
            raise ConfigError(f"refusing --force-new-cluster: a server still listens at {', '.join(alive)}; {why}")
        entries = list(journal[:])
        membership = sum(1 for command, _index, _term in entries if is_membership_change(command))
        last_index = entries[-1][1] if entries else 1
        journal.clear()
        for command, index, term in entries:
            journal.add(NO_OP_COMMAND if is_membership_change(command) else command, index, term)
        journal.setRaftCommitIndex(last_index)
        journal.sync()
    finally:
        journal.close()
    if config.dump_file.exists():
        dump = storage_pb2.RaftDump.FromString(config.dump_file.read_bytes())
        del dump.cluster[:]
        dump.cluster.append(config.raft_address)
        # pysyncobj keeps the journal only if it starts with exactly these two entries (data included),
        # else it clears it and everything after the dump is gone: rewritten as in the journal.
        for entry in (dump.last_applied, dump.previous):
            if is_membership_change(entry.data):
                entry.data = NO_OP_COMMAND
        write_file_atomically(config.dump_file, dump.SerializeToString())
    record = {
        "forced_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "node_id": config.node_id,
        "raft_address": config.raft_address,
        "old_voters": others,
        "last_index": last_index,
    }
    write_file_atomically(marker_file(config), json.dumps(record, indent=2).encode())
    # A voter from now on, also if it was a learner (started with --join) or is started that way again.
    write_file_atomically(config.voter_marker_file, b"")
    forced = ForcedCluster(old_voters=tuple(others), last_index=last_index, membership_entries=membership)
    log.warning(
        "forced_new_cluster",
        node_id=config.node_id,
        old_voters=list(forced.old_voters),
        last_index=last_index,
        membership_entries_dropped=membership,
        detail="FORCED A NEW CLUSTER: this server is now the only voter, with every entry of its own log "
        "applied. The old members are removed and their ids barred; add new servers under new ids "
        "(cpctl serve --join ..., then cpctl cluster members add).",
    )
    return forced
