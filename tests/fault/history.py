"""Operations as the clients saw them: invoke, then ok / fail / info, with monotonic timestamps.

An operation's completion type follows what the SDK's error *guarantees* (controlplane/errors.py):

* ``ok``: the call returned.
* ``fail``: the cluster answered and the operation was certainly not applied: an application
  answer (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, ...), or an
  Unavailable the *server* named NoLeader or Shutdown (raised before the command reached Raft).
* ``info``: the outcome is unknown, the operation may apply at any time after its invocation or
  never: DeadlineExceeded (the SDK gives up with it after retrying UnknownOutcome, a hung
  attempt or a broken connection), UnknownOutcome, and a bare Unavailable (a transport failure:
  a connection reset after the request was sent says nothing about whether it was applied).

Jepsen's convention is kept: a process whose operation ended ``info`` never invokes again (its
operation may still be in flight); the client continues as a new process id.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import errors

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"


def completion_type(exc: BaseException) -> str:
    """``fail`` when ``exc`` guarantees that nothing was applied, else ``info``."""
    if isinstance(exc, errors.UnknownOutcome | errors.DeadlineExceeded):
        return INFO
    if isinstance(exc, errors.NoLeader | errors.Shutdown):
        return FAIL
    if isinstance(exc, errors.Unavailable):
        return INFO  # no server-named kind: a transport error, the request may have been received
    if isinstance(exc, errors.ControlPlaneError):
        return FAIL  # the state machine's (or the server's validation) answer: not applied
    return INFO  # anything else (a client bug, cancellation): assume the worst


@dataclass
class Op:
    """One operation from invocation to completion. ``value`` is what was sent, ``result`` what came back."""

    index: int
    process: int
    workload: str
    f: str
    key: str
    value: Any
    invoke_ns: int
    type: str = INVOKE  # becomes ok / fail / info
    complete_ns: int | None = None
    result: Any = None
    revision: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.type != INVOKE

    @property
    def invoke_s(self) -> float:
        return self.invoke_ns / 1e9

    @property
    def complete_s(self) -> float:
        return (self.complete_ns if self.complete_ns is not None else self.invoke_ns) / 1e9

    def lines(self) -> list[dict[str, Any]]:
        """The Jepsen-shaped history lines of this operation: the invoke, then its completion."""
        base = {"process": self.process, "workload": self.workload, "f": self.f, "key": self.key}
        out = [{"index": self.index, "type": INVOKE, "time_ns": self.invoke_ns, **base, "value": self.value}]
        if self.done:
            out.append(
                {
                    "index": self.index,
                    "type": self.type,
                    "time_ns": self.complete_ns,
                    **base,
                    "value": self.value,
                    "result": self.result,
                    "revision": self.revision,
                    "error": self.error,
                    **({"extra": self.extra} if self.extra else {}),
                }
            )
        return out


class History:
    """Every operation of a run, in invocation order. Times are ``time.monotonic_ns()`` minus the
    run's start, so a history file reads from 0."""

    def __init__(self) -> None:
        self.origin_ns = time.monotonic_ns()
        #: The wall-clock time of run time 0, to find a moment of the run in the servers' logs.
        self.wall_origin = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self.ops: list[Op] = []
        self.events: list[dict[str, Any]] = []  # nemesis and run events, for the history file
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self.origin_ns

    def now(self) -> float:
        return self.now_ns() / 1e9

    def invoke(self, process: int, workload: str, f: str, key: str, value: Any = None) -> Op:
        with self._lock:  # the nemesis thread's probe records operations too
            op = Op(len(self.ops), process, workload, f, key, value, self.now_ns())
            self.ops.append(op)
        return op

    def complete(
        self, op: Op, type_: str, result: Any = None, *, revision: int = 0, error: str = "", **extra: Any
    ) -> Op:
        op.type, op.result, op.revision, op.error = type_, result, revision, error
        op.complete_ns = self.now_ns()
        op.extra.update(extra)
        return op

    def note(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": "event", "event": kind, "time_ns": self.now_ns(), **fields})

    def of(self, workload: str) -> list[Op]:
        return [op for op in self.ops if op.workload == workload]

    def write_jsonl(self, path: Path) -> Path:
        """The history as JSON lines, ordered by time: invokes, completions and nemesis events."""
        lines: list[dict[str, Any]] = [*self.events]
        for op in self.ops:
            lines.extend(op.lines())
        lines.sort(key=lambda line: line["time_ns"] if line["time_ns"] is not None else 1 << 62)
        with path.open("w") as out:
            for line in lines:
                out.write(json.dumps(line, default=str) + "\n")
        return path
