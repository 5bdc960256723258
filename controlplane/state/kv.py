"""The key space: etcd's KV (put, delete, compare-and-swap) with revisions per key."""

from __future__ import annotations

from typing import ClassVar

from sortedcontainers import SortedDict

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import Handler, check, invalid, refusing
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, kv_pb2, watch_pb2

DOMAIN_KV = "kv"
CommandResult = command_pb2.CommandResult


def _meta_only(kv: kv_pb2.KeyValue) -> kv_pb2.KeyValue:
    """The key's metadata without its value: what write results return, to keep answers small."""
    return kv_pb2.KeyValue(
        key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision, version=kv.version
    )


class KvTable:
    """Keys in a ``SortedDict`` (ordered prefix listing and pagination). Stored ``KeyValue``
    objects are never mutated, only replaced: the watch history shares them."""

    name: ClassVar[str] = "kv"
    state_type: ClassVar[type[command_pb2.KvState]] = command_pb2.KvState
    backup_noun: ClassVar[str] = "a bad key"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._kvs: SortedDict = SortedDict()

    def reset(self) -> None:
        self._kvs = SortedDict()

    def handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {
            "kv_put": self._put,
            "kv_delete": self._delete_command,
            "kv_compare_and_swap": self._compare_and_swap,
        }
        return {kind: refusing(lambda: self._journal.revision, handler) for kind, handler in handlers.items()}

    # ----------------------------------------------------------------- commands

    def _put(self, command: command_pb2.Command) -> CommandResult:
        put = command.kv_put
        check(limits.check_key(put.key) or limits.check_value(put.value))
        prev = self._kvs.get(put.key)
        result = self._write(put.key, put.value, prev)
        body = result.kv_put
        if put.prev_kv and prev is not None:
            body.prev_kv.CopyFrom(prev)
        return result

    def _write(self, key: str, value: bytes, prev: kv_pb2.KeyValue | None) -> CommandResult:
        revision = self._journal.revision + 1
        kv = kv_pb2.KeyValue(
            key=key,
            value=value,
            create_revision=prev.create_revision if prev is not None else revision,
            mod_revision=revision,
            version=prev.version + 1 if prev is not None else 1,
        )
        self._kvs[key] = kv
        self._journal.record_change(DOMAIN_KV, key, watch_pb2.EVENT_TYPE_PUT, kv, prev)
        return CommandResult(revision=revision, kv_put=command_pb2.KvPutResult(kv=_meta_only(kv)))

    def _delete(self, key: str) -> tuple[int, kv_pb2.KeyValue | None]:
        prev = self._kvs.pop(key, None)
        if prev is None:
            return self._journal.revision, None
        tombstone = kv_pb2.KeyValue(key=key, mod_revision=self._journal.revision + 1)
        return self._journal.record_change(DOMAIN_KV, key, watch_pb2.EVENT_TYPE_DELETE, tombstone, prev), prev

    def _delete_command(self, command: command_pb2.Command) -> CommandResult:
        key = command.kv_delete.key
        check(limits.check_key(key))
        revision, prev = self._delete(key)
        body = command_pb2.KvDeleteResult(deleted=prev is not None)
        if prev is not None:
            body.prev_kv.CopyFrom(prev)
        return CommandResult(revision=revision, kv_delete=body)

    def _compare_and_swap(self, command: command_pb2.Command) -> CommandResult:
        cas = command.kv_compare_and_swap
        check(limits.check_key(cas.key) or limits.check_value(cas.value))
        current = self._kvs.get(cas.key)
        current_mod = current.mod_revision if current is not None else 0
        if current_mod != cas.expected_mod_revision:
            body = command_pb2.KvCompareAndSwapResult(succeeded=False, found=current is not None)
            if current is not None:
                body.kv.CopyFrom(current)
            return CommandResult(revision=self._journal.revision, kv_compare_and_swap=body)
        if cas.delete:
            revision, _ = self._delete(cas.key)
            return CommandResult(
                revision=revision, kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(succeeded=True)
            )
        written = self._write(cas.key, cas.value, current)
        return CommandResult(
            revision=written.revision,
            kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(succeeded=True, found=True, kv=written.kv_put.kv),
        )

    # ----------------------------------------------------------------- reads

    def get(self, key: str) -> kv_pb2.KeyValue | None:
        kv: kv_pb2.KeyValue | None = self._kvs.get(key)
        return kv

    def list_keys(
        self, prefix: str, start_after: str = "", limit: int = limits.MAX_LIST_LIMIT
    ) -> tuple[list[kv_pb2.KeyValue], bool]:
        """Keys under ``prefix`` in lexical order after ``start_after``; and whether more follow."""
        if start_after and start_after >= prefix:
            keys = self._kvs.irange(minimum=start_after, inclusive=(False, True))
        else:
            keys = self._kvs.irange(minimum=prefix)
        out: list[kv_pb2.KeyValue] = []
        for key in keys:
            if not key.startswith(prefix):
                break
            if len(out) == limit:
                return out, True
            out.append(self._kvs[key])
        return out, False

    def key_count(self) -> int:
        return len(self._kvs)

    # ----------------------------------------------------------------- snapshots and backups

    def to_state(self) -> command_pb2.KvState:
        return command_pb2.KvState(kvs=self._kvs.values())

    def load_state(self, state: command_pb2.KvState | None) -> None:
        # The parsed messages are kept as they are (never mutated, like every stored KeyValue).
        self._kvs = SortedDict((kv.key, kv) for kv in state.kvs) if state is not None else SortedDict()

    def check_backup(self, state: command_pb2.KvState | None, backup: BackupSource) -> None:
        for kv in state.kvs if state is not None else ():
            problem = limits.check_key(kv.key) or limits.check_value(kv.value)
            if not problem and not (1 <= kv.create_revision <= kv.mod_revision <= backup.revision and kv.version):
                problem = (
                    f"key {kv.key!r} has revisions create={kv.create_revision} mod={kv.mod_revision} "
                    f"version={kv.version}, impossible in a snapshot at revision {backup.revision}"
                )
            if problem:
                raise invalid(problem)

    def restore_backup(self, state: command_pb2.KvState | None, backup: BackupSource) -> None:
        self.load_state(state)
