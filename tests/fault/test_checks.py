"""The set, ports, leases and watch checkers and the summary on hand-made histories (no cluster)."""

from __future__ import annotations

from typing import Any

from . import checks
from .history import FAIL, INFO, OK, History, Op, completion_type
from .nemesis import Fault


def op(index: int, workload: str, f: str, key: str, type_: str, invoke: float, complete: float, **fields: Any) -> Op:
    extra = fields.pop("extra", {})
    return Op(
        index,
        process=0,
        workload=workload,
        f=f,
        key=key,
        value=fields.pop("value", None),
        invoke_ns=int(invoke * 1e9),
        type=type_,
        complete_ns=int(complete * 1e9),
        result=fields.pop("result", None),
        revision=fields.pop("revision", 0),
        extra=extra,
    )


def test_completion_types_follow_the_error_guarantees() -> None:
    from controlplane import errors

    assert completion_type(errors.NoLeader("x")) == FAIL
    assert completion_type(errors.InvalidArgument("x")) == FAIL
    assert completion_type(errors.ResourceExhausted("x")) == FAIL
    assert completion_type(errors.UnknownOutcome("x")) == INFO
    assert completion_type(errors.DeadlineExceeded("x")) == INFO
    assert completion_type(errors.Unavailable("connection reset")) == INFO
    assert completion_type(RuntimeError("?")) == INFO


def test_set_lost_unexpected_and_failed_present() -> None:
    ops = [
        op(0, "set", "add", "s/a", OK, 0, 1),
        op(1, "set", "add", "s/b", OK, 0, 1),
        op(2, "set", "add", "s/c", INFO, 0, 1),
        op(3, "set", "add", "s/d", FAIL, 0, 1),
    ]
    assert not checks.check_set(ops, {"s/a", "s/b"}).violations
    assert not checks.check_set(ops, {"s/a", "s/b", "s/c"}).violations  # an unknown add may be there
    kinds = sorted(v.kind for v in checks.check_set(ops, {"s/a", "s/x", "s/d"}).violations)
    assert kinds == [checks.LOST, checks.OTHER, checks.OTHER]  # b lost, x never added, d failed yet present


def _allocation(index: int, service: str, port: int, revision: int, at: float) -> Op:
    return op(
        index,
        "ports",
        "allocate",
        service,
        OK,
        at - 0.1,
        at,
        result=port,
        revision=revision,
        extra={"create_revision": revision},
    )


def _release(index: int, service: str, revision: int, at: float, released: bool = True, port: int = 0) -> Op:
    extra = {"port": port, "create_revision": 0} if released else {}
    return op(index, "ports", "release", service, OK, at, at + 0.1, result=released, revision=revision, extra=extra)


def test_ports_reused_after_release_is_fine() -> None:
    ops = [_allocation(0, "a", 40100, 10, 1.0), _release(1, "a", 12, 2.0), _allocation(2, "b", 40100, 13, 3.0)]
    assert not checks.check_ports(ops, {}).violations


def test_port_held_twice_is_flagged() -> None:
    ops = [_allocation(0, "a", 40100, 10, 1.0), _allocation(1, "b", 40100, 11, 1.5), _release(2, "a", 12, 2.0)]
    report = checks.check_ports(ops, {})
    assert report.violations and all(v.kind == checks.DUPLICATED for v in report.violations)


def test_acknowledged_port_gone_at_release_is_flagged() -> None:
    ops = [_allocation(0, "a", 40100, 10, 1.0), _release(1, "a", 12, 2.0, released=False)]
    assert [v.kind for v in checks.check_ports(ops, {}).violations] == [checks.LOST]


def test_unknown_allocation_resolved_from_server_history() -> None:
    unknown = op(0, "ports", "allocate", "a", INFO, 0.9, 5.0)
    ops = [unknown, _allocation(1, "b", 40100, 11, 1.5), _release(2, "b", 14, 2.0)]
    assert checks.needs_server_history(ops) == {"a"}
    # "a" was in fact allocated 40100 at revision 12 while "b" held it: a double allocation.
    history = {"a": [("ALLOCATED", 12, 40100), ("RELEASED", 20, 40100)]}
    assert [v.kind for v in checks.check_ports(ops, history).violations] == [checks.DUPLICATED]
    assert not checks.check_ports(ops, {"a": [("ALLOCATED", 15, 40100)]}).violations


def _cycle(start: int, holder: str, revision: int, grant: float, acquired: float, **steps: Any) -> list[Op]:
    """A lock holder's cycle: grant (invoked at ``grant``), acquire (answered at ``acquired``), then
    ``keepalives`` (invocation, type, error) and a ``revoke`` invoked at that time, if given."""
    ops = [
        op(start, "lease", "grant", holder, OK, grant, grant + 0.05, result=7),
        op(start + 1, "lease", "acquire", holder, OK, acquired - 0.05, acquired, result=40200, revision=revision),
    ]
    for n, (at, type_, error) in enumerate(steps.get("keepalives", ())):
        renewal = op(start + 2 + n, "lease", "keepalive", holder, type_, at, at + 0.05)
        renewal.error = error
        ops.append(renewal)
    if "revoke" in steps:
        released = steps.get("released", 1)
        ops.append(
            op(start + 9, "lease", "revoke", holder, OK, steps["revoke"], steps["revoke"] + 0.05, result=released)
        )
    return ops


def test_lease_handed_on_after_revoke_or_expiry_is_fine() -> None:
    revoked = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (1.2, OK, "")], revoke=1.5)
    after_revoke = _cycle(10, "b", 12, 1.4, 1.6)  # b's lease then lapses: last renewal 1.4 + TTL 2
    after_expiry = _cycle(20, "c", 14, 3.0, 3.5)  # acquired after 3.4: b's lease had run out
    report = checks.check_leases(revoked + after_revoke + after_expiry, ttl_s=2.0)
    assert not report.violations, report.violations
    assert "3 acquisitions acknowledged" in report.notes[0]


def test_lease_held_twice_is_flagged() -> None:
    holder = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (1.2, OK, "")])  # alive until 3.18 s
    # b is told it holds the port at 3.0 s: a's lease, renewed at 1.2 s with a 2 s TTL, was still alive.
    report = checks.check_leases(holder + _cycle(10, "b", 12, 2.5, 3.0), ttl_s=2.0)
    assert [v.kind for v in report.violations] == [checks.DUPLICATED]
    assert "b was told" in report.violations[0].message and report.violations[0].at == 3.0
    # Unknown and failed renewals extend nothing: a's lease is only sure until 0.7 + 2 = 2.7 s.
    unsure = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (1.2, INFO, ""), (1.7, FAIL, "NoLeader: x")])
    assert not checks.check_leases(unsure + _cycle(10, "b", 12, 2.5, 3.0), ttl_s=2.0).violations


def test_revoke_of_a_live_lease_that_frees_nothing_is_flagged() -> None:
    # The port was attached and the lease certainly alive: a revoke that released nothing means
    # the port had gone from it unnoticed.
    lost = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, "")], revoke=1.0, released=0)
    assert [v.kind for v in checks.check_leases(lost, ttl_s=2.0).violations] == [checks.OTHER]
    # After its TTL ran out (no renewal answered since 0.7 s), nothing may be left to release.
    late = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (1.2, INFO, "")], revoke=2.9, released=0)
    assert not checks.check_leases(late, ttl_s=2.0).violations


def test_lease_expired_before_its_ttl_is_flagged() -> None:
    lost_early = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (1.2, FAIL, "NotFound: lease 7 has expired")])
    assert [v.kind for v in checks.check_leases(lost_early, ttl_s=2.0).violations] == [checks.OTHER]
    lost_late = _cycle(0, "a", 10, 0.0, 0.2, keepalives=[(0.7, OK, ""), (2.8, FAIL, "NotFound: lease 7 has expired")])
    assert not checks.check_leases(lost_late, ttl_s=2.0).violations
    # An acquisition answered NotFound right after the grant: the lease was gone early too.
    grant = op(0, "lease", "grant", "b", OK, 0.0, 0.05, result=8)
    refused = op(1, "lease", "acquire", "b", FAIL, 0.1, 0.15)
    refused.error = "NotFound: lease 8 does not exist (expired or revoked?); grant a new one"
    assert [v.kind for v in checks.check_leases([grant, refused], ttl_s=2.0).violations] == [checks.OTHER]


def test_watch_once_in_order_without_gaps() -> None:
    expected = [(5, "k/a"), (6, "k/b"), (8, "k/a")]
    good = (0, [(5, "k/a", "PUT", 1.0), (6, "k/b", "PUT", 1.1), (8, "k/a", "PUT", 1.2)], "")
    assert not checks.check_watch([good], expected, {6: "k/b"}).violations
    duplicate = (
        1,
        [(5, "k/a", "PUT", 1.0), (6, "k/b", "PUT", 1.1), (6, "k/b", "PUT", 1.1), (8, "k/a", "PUT", 1.2)],
        "",
    )
    reordered = (2, [(6, "k/b", "PUT", 1.0), (5, "k/a", "PUT", 1.1), (8, "k/a", "PUT", 1.2)], "")
    gap = (3, [(5, "k/a", "PUT", 1.0), (8, "k/a", "PUT", 1.2)], "")
    for delivery, kind in ((duplicate, checks.DUPLICATED), (reordered, checks.OTHER), (gap, checks.LOST)):
        kinds = [v.kind for v in checks.check_watch([delivery], expected, {}).violations]
        assert kinds == [kind], (delivery, kinds)
    # An acknowledged write missing from the replayed history is lost, whatever the watchers say.
    assert [v.kind for v in checks.check_watch([good], expected, {7: "k/c"}).violations] == [checks.LOST]


def test_summary_attributes_ops_and_windows_to_faults() -> None:
    history = History()
    history.ops = [
        op(0, "set", "add", "s/0", OK, 0.0, 0.5),
        op(1, "set", "add", "s/1", OK, 0.6, 1.0),
        op(2, "set", "add", "s/2", OK, 1.1, 4.0),  # invoked before the fault, answered after failover
        op(3, "set", "add", "s/3", INFO, 2.5, 9.0),
        op(4, "set", "add", "s/4", OK, 4.1, 4.2),
    ]
    fault = Fault("kill-leader", "n1", True, injected=2.0, healed=3.0, whole=5.0, duration=1.0)
    (figures,) = checks.fault_figures(history, [fault])
    assert round(figures.longest_gap, 6) == 3.0 and figures.gap_at == (1.0, 4.0)
    assert figures.failover is not None and round(figures.failover, 6) == 2.2  # op 4, the first invoked after
    rows = {row[0]: row for row in checks.summary_rows(history, [fault], [])}
    assert rows["kill-leader"][2] == "2" and rows["(before faults)"][2] == "3" and rows["total"][4] == "1"
    assert "kill-leader" in checks.render_table(list(rows.values()))
