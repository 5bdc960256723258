"""The linearizability checker on histories whose verdict is known by hand."""

from __future__ import annotations

import random

from .wgl import RegisterOp, Verdict, check, prune


def w(value: str, invoke: float, complete: float | None) -> RegisterOp:
    return RegisterOp("write", value, None, invoke, complete)


def r(result: str | None, invoke: float, complete: float | None) -> RegisterOp:
    return RegisterOp("read", None, result, invoke, complete)


def cas(expected: str | None, new: str, succeeded: bool, observed: str | None, invoke: float, complete: float | None):
    return RegisterOp("cas", [expected, new], [succeeded, observed], invoke, complete)


def test_sequential_history_is_linearizable() -> None:
    history = [w("a", 0, 1), r("a", 2, 3), w("b", 4, 5), r("b", 6, 7)]
    assert check(history).verdict is Verdict.LINEARIZABLE


def test_initial_read_of_missing_key() -> None:
    assert check([r(None, 0, 1), w("a", 2, 3), r("a", 4, 5)]).ok
    assert not check([r("a", 0, 1), w("a", 2, 3)]).ok  # read a value before anyone wrote it


def test_stale_read_after_acknowledged_write_is_flagged() -> None:
    """The stale-read shape: a read invoked after b's write was acknowledged returns the older a."""
    history = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    result = check(history)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.culprit is not None and result.culprit.f == "read" and result.culprit.result == "a"


def test_concurrent_read_may_see_either_value() -> None:
    # The read overlaps the write of b: old or new value are both fine.
    assert check([w("a", 0, 1), w("b", 2, 6), r("a", 3, 4)]).ok
    assert check([w("a", 0, 1), w("b", 2, 6), r("b", 3, 4)]).ok


def test_reads_must_not_go_back_in_time() -> None:
    """Two sequential reads during a slow write: new then old is not linearizable."""
    history = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("a", 5, 6)]
    assert check(history).verdict is Verdict.NOT_LINEARIZABLE
    history = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6)]
    assert check(history).ok


def test_unknown_write_may_take_effect_late_or_never() -> None:
    # The write of b timed out: it may apply long after (the read at 10 sees it) ...
    assert check([w("a", 0, 1), w("b", 2, None), r("a", 3, 4), r("b", 10, 11)]).ok
    # ... or never.
    assert check([w("a", 0, 1), w("b", 2, None), r("a", 3, 4), r("a", 10, 11)]).ok
    # But never before it was invoked.
    assert not check([w("a", 0, 1), r("b", 2, 3), w("b", 4, None)]).ok


def test_unknown_write_cannot_undo_itself() -> None:
    # Once b has been seen, reading a again needs another write of a: there is none.
    history = [w("a", 0, 1), w("b", 2, None), r("b", 3, 4), r("a", 5, 6)]
    assert check(history).verdict is Verdict.NOT_LINEARIZABLE


def test_compare_and_swap() -> None:
    assert check([w("a", 0, 1), cas("a", "b", True, None, 2, 3), r("b", 4, 5)]).ok
    # A swap that succeeded against a value that was no longer there.
    assert not check([w("a", 0, 1), w("c", 2, 3), cas("a", "b", True, None, 4, 5)]).ok
    # A lost race must report the current value, and the current value must differ from expected.
    assert check([w("a", 0, 1), w("c", 2, 3), cas("a", "b", False, "c", 4, 5)]).ok
    assert not check([w("a", 0, 1), cas("a", "b", False, "a", 2, 3)]).ok
    # Two successful swaps from the same value: only one can have been first.
    assert not check([w("a", 0, 1), cas("a", "b", True, None, 2, 5), cas("a", "c", True, None, 3, 6)]).ok


def test_unknown_swap_observed_later() -> None:
    history = [w("a", 0, 1), cas("a", "b", True, None, 2, None), r("b", 5, 6)]
    assert check(history).ok
    # An unknown swap from a value that was gone cannot explain the read.
    history = [w("a", 0, 1), w("c", 2, 3), cas("a", "b", True, None, 4, None), r("b", 5, 6)]
    assert not check(history).ok


def test_prune_keeps_what_is_observed() -> None:
    history = [w("a", 0, 1), w("x", 2, None), w("b", 2, None), r("b", 3, 4), r(None, 0, None)]
    kept = prune(history)
    assert [op.value for op in kept if op.f == "write"] == ["a", "b"]
    assert all(op.f != "read" or op.complete is not None for op in kept)


def test_many_unknown_writes_stay_cheap() -> None:
    """Unobserved unknown writes are pruned: 200 of them do not blow up the search."""
    history = [w("a", 0, 1)]
    history += [w(f"lost{i}", 2 + i, None) for i in range(200)]
    history += [r("a", 300 + i, 300.5 + i) for i in range(50)]
    result = check(history)
    assert result.ok and result.ops == 51


def test_search_bound_gives_unknown_not_a_pass() -> None:
    history = [w(f"v{i}", 0, 100) for i in range(12)] + [r("v0", 101, 102), r("v1", 103, 104)]
    result = check(history, max_steps=50)
    assert result.verdict is Verdict.UNKNOWN


def _simulate(seed: int, processes: int = 4, ops: int = 60) -> list[RegisterOp]:
    """A history from an atomic register whose operations take effect as they are invoked."""
    rng = random.Random(seed)
    value: str | None = None
    previous: str | None = None
    history = []
    clock = 0.0
    busy_until = [0.0] * processes
    for i in range(ops):
        p = rng.randrange(processes)
        invoke = max(clock, busy_until[p]) + rng.random()
        complete = invoke + 2 * rng.random()
        clock = invoke
        busy_until[p] = complete
        kind = rng.choice(["read", "write", "cas"])
        if kind == "read":
            history.append(r(value, invoke, complete))
        elif kind == "write":
            previous, value = value, f"w{i}"
            history.append(w(value, invoke, complete))
        else:
            expected = rng.choice([value, previous])
            if expected == value:
                previous, value = value, f"c{i}"
                history.append(cas(expected, value, True, None, invoke, complete))
            else:
                history.append(cas(expected, f"c{i}", False, value, invoke, complete))
    return history


def test_sequentially_simulated_register_histories_are_linearizable() -> None:
    # Each operation took effect at its invocation: the invocation order is a witness.
    for seed in range(30):
        assert check(_simulate(seed)).ok, seed


def test_long_history_is_checked_in_one_pass() -> None:
    """Thousands of operations: memoized on a Zobrist hash, the search stays near-linear."""
    history = _simulate(7, processes=6, ops=5000)
    result = check(history)
    assert result.ok and result.steps < 20 * len(history)
