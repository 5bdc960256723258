"""A linearizability checker for registers: Wing & Gong's search with Lowe's memoization (WGL).

Given one key's operations, each with an invocation time and a completion time (or none, for an
operation whose outcome is unknown), it looks for a total order that respects real time (an
operation that completed before another was invoked comes first) and that a sequential register
would produce. The search (Lowe, "Testing for linearizability", 2017; the shape of porcupine's
``checkSingle``) walks a linked list of call and return entries: at a call it tries to linearize
that operation now; at a return of an operation not yet linearized it backtracks. Each visited
(set of linearized operations, register state) pair is cached, so a branch is never explored
twice. The cache and the step count are bounded: past either bound the verdict is ``UNKNOWN``,
never a pass. The set of linearized operations is cached as a Zobrist hash (the XOR of one random
64-bit word per operation, updated in O(1)), not as a bitset: a bitset of a long history costs
kilobytes per cache entry. Two different sets colliding (about n^2 / 2^65 for n entries, 3e-8 at
a million) could only prune a branch, so a collision can cause a false "not linearizable", never
a false pass; the seed is fixed, so a verdict is reproducible.

Operations whose outcome is unknown (``info``) may take effect at any point after their
invocation, or never: their return entries go after every other entry, and the search succeeds
once only such returns remain. Before searching, an unknown write whose value no operation ever
observed is dropped: whether it took effect cannot change what anyone saw, and keeping it doubles
the search for every such write.

Linearizability is compositional (Herlihy & Wing): a history is linearizable iff each key's
sub-history is, so registers are checked one key at a time.

The register model. Values are unique per write, so a value names the write that produced it;
``None`` is "the key does not exist". Operations (``f``, ``value``, ``result``):

* ``read``: ``result`` is the value read (or None).
* ``write``: ``value`` is written.
* ``cas``: ``value`` is ``[expected, new]`` (the SDK compares ``mod_revision``; the client maps the
  revision it passes to the value it last saw at that revision, which is unique); ``result`` is
  ``[succeeded, observed]`` where ``observed`` is the current value a lost race returns.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

INFINITY = float("inf")

DEFAULT_MAX_STEPS = 2_000_000
DEFAULT_MAX_CACHE = 1_000_000


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown (search bound reached)"


@dataclass(frozen=True)
class RegisterOp:
    """One operation on one register. ``complete`` is None when the outcome is unknown."""

    f: str
    value: Any
    result: Any
    invoke: float
    complete: float | None
    id: Any = None  # the caller's reference (the history index), reported on failure


@dataclass
class Result:
    verdict: Verdict
    ops: int
    steps: int
    cache: int
    #: On NOT_LINEARIZABLE: the operation whose return the deepest search branch could not pass
    #: (no order of what came before lets it take effect), and the longest linearized prefix.
    culprit: RegisterOp | None = None
    prefix: list[RegisterOp] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


def step(state: Hashable, op: RegisterOp) -> tuple[bool, Hashable]:
    """The sequential register: may ``op`` take effect in ``state``, and the state after it."""
    if op.f == "read":
        return state == op.result, state
    if op.f == "write":
        return True, op.value
    if op.f == "cas":
        expected, new = op.value
        if op.complete is None:  # unknown: if it took effect, it was a successful swap
            return state == expected, new
        succeeded, observed = op.result
        if succeeded:
            return state == expected, new
        return state != expected and state == observed, state
    raise ValueError(f"unknown register operation {op.f!r}")


def prune(ops: Sequence[RegisterOp]) -> list[RegisterOp]:
    """Drop unknown-outcome writes and swaps whose value nobody observed (see the module docstring)."""
    kept = [op for op in ops if not (op.complete is None and op.f == "read")]  # constrains nothing
    while True:  # dropping an unknown swap may free the value it expected: repeat until stable
        observed: set[Any] = set()
        for op in kept:
            if op.f == "read":
                observed.add(op.result)
            elif op.f == "cas":
                observed.add(op.value[0])
                if op.complete is not None and not op.result[0]:
                    observed.add(op.result[1])
        smaller = [
            op for op in kept if op.complete is not None or (op.value if op.f == "write" else op.value[1]) in observed
        ]
        if len(smaller) == len(kept):
            return kept
        kept = smaller


class _Entry:
    __slots__ = ("id", "is_call", "match", "next", "op", "prev", "time", "unknown")

    def __init__(self, id: int, op: RegisterOp | None, time: float, is_call: bool, unknown: bool) -> None:
        self.id = id
        self.op = op
        self.time = time
        self.is_call = is_call
        self.unknown = unknown
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build(ops: Sequence[RegisterOp]) -> _Entry:
    entries: list[tuple[float, int, _Entry]] = []
    for i, op in enumerate(ops):
        unknown = op.complete is None
        call = _Entry(i, op, op.invoke, True, unknown)
        ret = _Entry(i, op, INFINITY if unknown else op.complete, False, unknown)  # type: ignore[arg-type]
        call.match = ret
        # At equal times calls sort before returns: the two operations count as concurrent,
        # which can only make the checker more lenient, never report a false violation.
        entries.append((call.time, 0, call))
        entries.append((ret.time, 1, ret))
    entries.sort(key=lambda item: (item[0], item[1], item[2].id))
    head = _Entry(-1, None, -INFINITY, False, False)
    previous = head
    for _, _, entry in entries:
        previous.next, entry.prev = entry, previous
        previous = entry
    return head


def _lift(entry: _Entry) -> None:
    assert entry.prev is not None and entry.match is not None
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev
    match = entry.match
    assert match.prev is not None
    match.prev.next = match.next
    if match.next is not None:
        match.next.prev = match.prev


def _unlift(entry: _Entry) -> None:
    assert entry.prev is not None and entry.match is not None
    match = entry.match
    assert match.prev is not None
    match.prev.next = match
    if match.next is not None:
        match.next.prev = match
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def check(
    ops: Sequence[RegisterOp],
    initial: Hashable = None,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    max_cache: int = DEFAULT_MAX_CACHE,
) -> Result:
    """Is this one register's history linearizable from ``initial``?"""
    ops = prune(ops)
    head = _build(ops)
    zobrist = random.Random(0x5EED).getrandbits
    words = [zobrist(64) for _ in ops]
    state: Hashable = initial
    linearized = 0  # the Zobrist hash of the set of linearized operations
    calls: list[tuple[_Entry, Hashable]] = []
    cache: set[tuple[int, Hashable]] = set()
    steps = 0
    deepest: tuple[int, _Entry | None, list[RegisterOp]] = (-1, None, [])
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps or len(cache) > max_cache:
            return Result(Verdict.UNKNOWN, len(ops), steps, len(cache))
        assert entry is not None  # every call is followed by its return
        if entry.is_call:
            assert entry.op is not None
            possible, new_state = step(state, entry.op)
            if possible:
                new_linearized = linearized ^ words[entry.id]
                memo = (new_linearized, new_state)
                if memo not in cache:
                    cache.add(memo)
                    calls.append((entry, state))
                    state, linearized = new_state, new_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        elif entry.unknown:
            # Only returns of unknown operations are left (they sort last): every operation that
            # completed has been placed; the unknown ones left out simply never took effect.
            return Result(Verdict.LINEARIZABLE, len(ops), steps, len(cache))
        else:
            if len(calls) > deepest[0]:
                deepest = (len(calls), entry, [e.op for e, _ in calls if e.op is not None])
            if not calls:
                break
            top, state = calls.pop()
            linearized ^= words[top.id]
            _unlift(top)
            entry = top.next
    if head.next is None:
        return Result(Verdict.LINEARIZABLE, len(ops), steps, len(cache))
    culprit = deepest[1].op if deepest[1] is not None else None
    return Result(Verdict.NOT_LINEARIZABLE, len(ops), steps, len(cache), culprit, deepest[2])
