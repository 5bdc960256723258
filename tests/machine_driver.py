"""One way to drive the replicated state machine in a test, without a network.

Commands are applied one log entry at a time, stamped with a leader time the test moves, to one
machine or to several replicas that must give the same result (the determinism every server
relies on). Each domain's tests subclass ``MachineDriver`` with the few helpers that build its
requests; what applying, checking a result and checking that a refusal changed nothing mean is
written here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.state import levels
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import command_pb2, common_pb2

Command = command_pb2.Command
CommandResult = command_pb2.CommandResult


def command(request_id: str = "", **body: Any) -> Command:
    """A command from its body: ``command(kv_put=KvPut(...))``."""
    return Command(request_id=request_id, **body)


def expect_ok(result: CommandResult) -> CommandResult:
    assert not result.HasField("error"), result.error.message
    return result


def expect_error(result: CommandResult, code: common_pb2.ErrorCode, *fragments: str) -> None:
    """``result`` is an error with ``code`` whose message names every fragment, and has no body.
    (Returns nothing: hypothesis rules end with it, and a rule without a bundle must return None.)"""
    assert result.HasField("error") and result.error.code == code, result
    assert result.WhichOneof("body") is None, result
    for fragment in fragments:
        assert fragment in result.error.message, result.error.message


def error_code(result: CommandResult) -> int:
    """The result's error code; 0 for success."""
    return result.error.code if result.HasField("error") else 0


def state_bytes(machine: StateMachine) -> bytes:
    """The snapshot without the entry time and the dedupe table: what a refused command must leave alone."""
    snapshot = command_pb2.StateSnapshot.FromString(machine.snapshot())
    snapshot.ClearField("time_unix_ms")
    snapshot.ClearField("dedupe")
    return snapshot.SerializeToString(deterministic=True)


class MachineDriver:
    """Machines fed the same entries, at a leader time that moves ``tick_ms`` per entry unless an
    entry is given its time (``at``). With ``level`` above the base, an entry at ``now`` raises the
    cluster level to it first, as the leader does once every server applies it."""

    def __init__(
        self,
        level: int = levels.BASE_LEVEL,
        replicas: int = 1,
        now: int = 1_000,
        tick_ms: int = 10,
        leader_id: str = "n1",
        make_machine: Callable[[], StateMachine] = StateMachine,
    ) -> None:
        self.machines = tuple(make_machine() for _ in range(replicas))
        self.now = now
        self.tick_ms = tick_ms
        self.leader_id = leader_id
        if level > levels.BASE_LEVEL:
            self.ok(set_cluster_level=command_pb2.SetClusterLevel(level=level), at=now)

    @property
    def machine(self) -> StateMachine:
        return self.machines[0]

    def apply(self, *commands: Command, at: int | None = None) -> list[CommandResult]:
        """Apply ``commands`` as one log entry on every replica; their results, which must agree."""
        self.now = self.now + self.tick_ms if at is None else at
        entry = batch_entry(self.now, self.leader_id, commands)
        results = [machine.apply_entry(entry) for machine in self.machines]
        assert all(other == results[0] for other in results[1:]), "the replicas' results differ"
        return results[0]

    def run(
        self, cmd: Command | None = None, *, at: int | None = None, request_id: str = "", **body: Any
    ) -> CommandResult:
        """Apply one command, given whole or by its body, in an entry of its own."""
        (result,) = self.apply(cmd if cmd is not None else command(request_id, **body), at=at)
        return result

    def ok(
        self, cmd: Command | None = None, *, at: int | None = None, request_id: str = "", **body: Any
    ) -> CommandResult:
        """``run``, which must succeed."""
        return expect_ok(self.run(cmd, at=at, request_id=request_id, **body))

    def refused(
        self, cmd: Command, code: common_pb2.ErrorCode, *fragments: str, at: int | None = None
    ) -> CommandResult:
        """The command fails with ``code`` naming ``fragments``, and changes nothing."""
        before, revision = state_bytes(self.machine), self.machine.revision
        result = self.run(cmd, at=at)
        expect_error(result, code, *fragments)
        assert result.revision == revision == self.machine.revision
        assert state_bytes(self.machine) == before
        return result
