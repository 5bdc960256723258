"""What a domain table is to the state machine: its commands, its state in a snapshot, and what a
restore from a backup does to it.

The machine keeps its tables in one list (``StateMachine.tables``) and does everything that
concerns them all by walking it: dispatching commands, resetting, writing and loading snapshots,
checking and restoring backups. A new domain is a new table in that list; nothing else in the
machine names it.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Protocol, TypeVar

from google.protobuf.message import Message

from controlplane.state.refusal import Handler

State = TypeVar("State", bound=Message)


class BackupSource(NamedTuple):
    """What a restore knows of the backup it loads, besides a table's own state."""

    #: The revision the backup was taken at.
    revision: int
    #: The cluster level the backup's cluster held (levels.stored_level).
    cluster_level: int
    #: Whether the restore also takes the backup's users, roles and tokens.
    include_auth: bool


class DomainTable(Protocol[State]):
    """One domain's replicated state. Like the machine, it never raises from a handler (a
    ``Refused`` becomes an error result), is deterministic, and records every change through the
    machine's journal (one revision, one watch event)."""

    #: The table's entry in a snapshot (``TableState.name``); never renamed or reused once released.
    name: ClassVar[str]
    #: What a bad backup holds, for the restore's error ("backup holds a bad port map: ...").
    backup_noun: ClassVar[str]

    @property
    def state_type(self) -> type[State]:
        """The message ``to_state`` returns and ``load_state`` takes (a class attribute)."""
        ...

    def handlers(self) -> dict[str, Handler]:
        """The command bodies (``Command.body`` names) this table applies."""
        ...

    def reset(self) -> None:
        """Back to a fresh cluster's state."""
        ...

    def to_state(self) -> State:
        """The whole state, for a snapshot: deterministic (equal tables give equal bytes)."""
        ...

    def load_state(self, state: State | None) -> None:
        """Replace the whole state with a snapshot's (this cluster's own, trusted); None when the
        snapshot holds no entry for the table: the defaults."""
        ...

    def check_backup(self, state: State | None, backup: BackupSource) -> None:
        """Raise ``Refused`` unless a backup's state is one this table could have written. It may
        bring ``state`` to this cluster's level in place (``restore_backup`` gets the same object)."""
        ...

    def restore_backup(self, state: State | None, backup: BackupSource) -> None:
        """Take a checked backup's state, as the table's domain wants a restore to: most replace
        theirs, the member directory keeps this cluster's, leases restart their TTLs."""
        ...
