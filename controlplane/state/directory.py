"""The member directory: the cluster's servers (id -> Raft and client address, learner or voter),
the ids that were removed, and the cluster level.

These describe this cluster, not its data: a restore from a backup keeps them.
"""

from __future__ import annotations

from typing import ClassVar

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import Handler, Refused, check, not_found, precondition, refusing
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, common_pb2, kv_pb2, watch_pb2

DOMAIN_CLUSTER = "cluster"
#: The cluster-domain key of the cluster level's events (member ids cannot start with "/").
CLUSTER_LEVEL_KEY = "/level"
CommandResult = command_pb2.CommandResult


class MemberDirectory:
    """Servers by id, in the order they were added, and the removed ids (they may not rejoin under
    the same id). The cluster level itself is the machine's (``Journal.cluster_level``): it is
    snapshot in the header, because it decides how the rest of a snapshot is written."""

    name: ClassVar[str] = "cluster"
    state_type: ClassVar[type[command_pb2.MemberDirectoryState]] = command_pb2.MemberDirectoryState
    backup_noun: ClassVar[str] = "a bad member directory"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.members: dict[str, command_pb2.MemberRecord] = {}
        self.removed_members: dict[str, None] = {}
        #: Bumped on every change, reset and load; derived, not snapshotted (readers cache by it).
        self.version = 0

    def reset(self) -> None:
        self.members = {}
        self.removed_members = {}
        self.version += 1

    def handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {
            "member_upsert": self._upsert,
            "member_remove": self._remove,
            "set_cluster_level": self._set_cluster_level,
        }
        return {kind: refusing(lambda: self._journal.revision, handler) for kind, handler in handlers.items()}

    def _upsert(self, command: command_pb2.Command) -> CommandResult:
        member = command.member_upsert.member
        revision = self._journal.revision
        check(
            limits.check_member_id(member.id)
            or limits.check_address(member.raft_address, "raft address")
            or limits.check_address(member.client_address, "client address")
        )
        if member.id in self.removed_members:
            raise precondition(
                f"member {member.id!r} was removed from this cluster and may not rejoin under that id; "
                "wipe its data directory and add it under a new id"
            )
        for other in self.members.values():
            if other.id != member.id and other.raft_address == member.raft_address:
                raise Refused(
                    common_pb2.ERROR_CODE_ALREADY_EXISTS,
                    f"raft address {member.raft_address} already belongs to member {other.id!r}",
                )
        prev = self.members.get(member.id)
        if (
            prev is not None
            and prev.raft_address == member.raft_address
            and prev.client_address == member.client_address
            and prev.learner == member.learner
        ):
            return CommandResult(revision=revision, member=command_pb2.MemberResult(changed=False))
        record = command_pb2.MemberRecord(
            id=member.id,
            raft_address=member.raft_address,
            client_address=member.client_address,
            added_revision=prev.added_revision if prev is not None else revision + 1,
            learner=member.learner,
        )
        self.members[member.id] = record
        self.version += 1
        revision = self._journal.record_change(
            DOMAIN_CLUSTER,
            member.id,
            watch_pb2.EVENT_TYPE_PUT,
            kv_pb2.KeyValue(key=member.id, value=record.SerializeToString(deterministic=True)),
            None,
        )
        return CommandResult(revision=revision, member=command_pb2.MemberResult(changed=True))

    def _remove(self, command: command_pb2.Command) -> CommandResult:
        member_id = command.member_remove.id
        prev = self.members.pop(member_id, None)
        if prev is None:
            raise not_found(f"no member {member_id!r} in this cluster")
        self.removed_members[member_id] = None
        self.version += 1
        revision = self._journal.record_change(
            DOMAIN_CLUSTER,
            member_id,
            watch_pb2.EVENT_TYPE_DELETE,
            kv_pb2.KeyValue(key=member_id),
            kv_pb2.KeyValue(key=member_id, value=prev.SerializeToString(deterministic=True)),
        )
        return CommandResult(revision=revision, member=command_pb2.MemberResult(changed=True))

    def _set_cluster_level(self, command: command_pb2.Command) -> CommandResult:
        """Raise the cluster level; one at or below the current level changes nothing (never lowered).

        Stored whatever this release applies, so the replicas agree: a server whose release is
        below the level learns from ``cluster_level`` that it is too old (Cluster.Status says so).
        """
        journal = self._journal
        level = command.set_cluster_level.level
        if level <= journal.cluster_level:
            return CommandResult(
                revision=journal.revision,
                cluster_level=command_pb2.ClusterLevelResult(level=journal.cluster_level, changed=False),
            )
        journal.cluster_level = level
        revision = journal.record_change(
            DOMAIN_CLUSTER,
            CLUSTER_LEVEL_KEY,
            watch_pb2.EVENT_TYPE_PUT,
            kv_pb2.KeyValue(key=CLUSTER_LEVEL_KEY, value=str(level).encode()),
            None,
        )
        return CommandResult(revision=revision, cluster_level=command_pb2.ClusterLevelResult(level=level, changed=True))

    # ----------------------------------------------------------------- snapshots and backups

    def to_state(self) -> command_pb2.MemberDirectoryState:
        return command_pb2.MemberDirectoryState(
            members=self.members.values(), removed_members=list(self.removed_members)
        )

    def load_state(self, state: command_pb2.MemberDirectoryState | None) -> None:
        self.reset()
        if state is not None:
            self.members = {member.id: member for member in state.members}
            self.removed_members = dict.fromkeys(state.removed_members)

    def check_backup(self, state: command_pb2.MemberDirectoryState | None, backup: BackupSource) -> None:
        """Nothing to check: a restore keeps this cluster's directory."""

    def restore_backup(self, state: command_pb2.MemberDirectoryState | None, backup: BackupSource) -> None:
        """Keep this cluster's directory: the backup's names another cluster's servers."""
