"""The SDK's shared decisions (routing, retry policy, watch cursor, snapshot files), with no network."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from controlplane import errors
from controlplane.client import AsyncClient, Consistency, EventType, KeyValue, Member, RetryPolicy, Role, _base
from controlplane.client._auth import audit_servers, audit_stream_error
from controlplane.v1 import cluster_pb2, common_pb2, kv_pb2, watch_pb2

pytestmark = pytest.mark.timeout(30)


def make_policy(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


# --- endpoints and backoff -----------------------------------------------------------------------


def test_endpoints_from_string_or_sequence() -> None:
    assert _base.parse_endpoints(" a:1, b:2 ,,a:1") == ("a:1", "b:2")
    assert _base.parse_endpoints(["b:2", "a:1"]) == ("b:2", "a:1")
    with pytest.raises(ValueError):
        _base.parse_endpoints(" , ")


def test_backoff_is_full_jitter_doubling_up_to_the_cap() -> None:
    policy = make_policy(initial_backoff=0.025, max_backoff=1.0)
    for retry in range(12):
        ceiling = min(1.0, 0.025 * 2**retry)
        delays = [policy.backoff(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole interval, not just near its top.
        assert min(delays) < ceiling / 4 and max(delays) > ceiling * 3 / 4
    assert policy.backoff(10_000) <= 1.0  # no overflow for a watch that retried forever


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [make_policy().backoff(n) for n in range(5)]
    assert first == [make_policy().backoff(n) for n in range(5)]


# --- routing -------------------------------------------------------------------------------------


def test_router_rotates_reads_away_from_a_failed_endpoint() -> None:
    router = _base.Router(("a:1", "b:2", "c:3"), make_policy())
    assert router.pick(write=False) == "a:1"
    router.failed("a:1")
    assert router.pick(write=False) == "b:2"
    router.failed("a:1")  # a late failure from an endpoint we already left does not skip b
    assert router.pick(write=False) == "b:2"
    router.failed("b:2")
    router.failed("c:3")
    assert router.pick(write=False) == "a:1"


def test_router_sends_writes_to_the_learned_leader_and_distrusts_it_after_a_failure() -> None:
    router = _base.Router(("a:1", "b:2"), make_policy(leader_hold=60.0))
    assert router.pick(write=True) == "a:1"
    router.succeeded("a:1", "leader:9")
    assert router.pick(write=True) == "leader:9"
    assert router.pick(write=False) == "a:1"  # reads stay on the endpoint list
    router.failed("leader:9")
    assert router.pick(write=True) == "a:1"
    # Followers keep naming the dead leader until the election ends: ignored while distrusted.
    router.succeeded("a:1", "leader:9")
    assert router.pick(write=True) == "a:1"
    # A NotLeader answer naming it is authoritative.
    router.learn_leader("leader:9", authoritative=True)
    assert router.pick(write=True) == "leader:9"


def test_router_trusts_a_failed_leader_again_after_the_hold() -> None:
    router = _base.Router(("a:1",), make_policy(leader_hold=0.0))
    router.succeeded("a:1", "leader:9")
    router.failed("leader:9")
    router.succeeded("a:1", "leader:9")
    assert router.pick(write=True) == "leader:9"


# --- one call's attempts -------------------------------------------------------------------------


def attempts(router: _base.Router, timeout: float = 5.0, policy: RetryPolicy | None = None) -> _base.Attempts:
    return _base.Attempts(router, policy or make_policy(), timeout=timeout, write=True)


class HighestDelay(random.Random):
    """Jitter that always draws the top of the interval, to make a deadline test exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_unavailable_is_retried_on_the_next_endpoint() -> None:
    router = _base.Router(("a:1", "b:2"), make_policy())
    call = attempts(router)
    assert call.target() == "a:1"
    delay = call.failed("a:1", errors.UnknownOutcome("lost"))
    assert 0.0 <= delay <= 0.025
    assert call.target() == "b:2"


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidArgument("bad key"),
        errors.NotFound("no such member"),
        errors.FailedPrecondition("a change is in flight"),
        errors.NotLeader("no idea who leads"),
        errors.AlreadyExists("x"),
        errors.Internal("bug"),
    ],
)
def test_answers_that_are_not_transient_are_raised_at_once(error: errors.ControlPlaneError) -> None:
    call = attempts(_base.Router(("a:1",), make_policy()))
    call.target()
    if isinstance(error, errors.NotLeader):
        # NotLeader without an address says nothing about where to go: treated as "no leader yet".
        assert call.failed("a:1", error) >= 0.0
        return
    with pytest.raises(type(error)) as raised:
        call.failed("a:1", error)
    assert raised.value is error


def test_not_leader_redirects_the_next_attempt_at_once() -> None:
    router = _base.Router(("a:1",), make_policy())
    call = attempts(router)
    assert call.target() == "a:1"
    assert call.failed("a:1", errors.NotLeader("no", "n2", "leader:9")) == 0.0
    assert call.target() == "leader:9"
    assert router.leader == "leader:9"
    # A second redirect in the same call backs off (two confused nodes cannot make us spin).
    assert call.failed("leader:9", errors.NotLeader("no", "n1", "a:1")) >= 0.0
    assert call.target() == "a:1"


def test_an_unknown_outcome_naming_a_new_leader_is_retried_there_at_once() -> None:
    """A follower whose forward went to a leader that was then deposed (frozen, cut off) answers
    with the new leader's address: the retry goes there, with no backoff and without rotating
    through the other endpoints (one of which may be the frozen leader)."""
    router = _base.Router(("follower:1", "frozen:2", "other:3"), make_policy())
    call = attempts(router)
    assert call.target() == "follower:1"
    assert call.failed("follower:1", errors.UnknownOutcome("the leader lost the leadership", "new:3")) == 0.0
    assert call.target() == "new:3"
    assert router.leader == "new:3"


def test_an_unknown_outcome_crosses_the_wire_with_its_leader_hint() -> None:
    sent = errors.UnknownOutcome("the leader lost the leadership", leader_address="10.0.0.3:7100")
    received = errors.error_from_status(sent.code, sent.message, dict(sent.metadata()))
    assert type(received) is errors.UnknownOutcome
    assert (received.message, received.leader_address) == (sent.message, "10.0.0.3:7100")
    # Without a hint nothing extra is sent, and nothing is made up on arrival.
    bare = errors.NoLeader("election running")
    assert dict(bare.metadata()) == {errors.ERROR_KIND_KEY: "NoLeader"}
    assert errors.error_from_status(bare.code, bare.message, dict(bare.metadata())).leader_address == ""  # type: ignore[attr-defined]


def test_only_a_write_asks_who_leads_and_only_if_someone_else_can_answer() -> None:
    router = _base.Router(("a:1", "b:2"), make_policy())
    router.learn_leader("a:1")
    write = attempts(router)
    assert write.leader_check_after("a:1") == 1.0
    assert write.leader_check_after("b:2") == 1.0  # a new client's first endpoint may be the frozen one
    read = _base.Attempts(router, make_policy(), timeout=5, write=False)
    assert read.leader_check_after("a:1") == 0.0
    alone = _base.Router(("a:1",), make_policy())
    alone.learn_leader("a:1")
    assert attempts(alone).leader_check_after("a:1") == 0.0  # nobody else to ask
    never = make_policy(leader_check_after=0.0)
    assert attempts(router, policy=never).leader_check_after("a:1") == 0.0
    # A call that must not be retried (transfer_leadership) is not cut short to be retried elsewhere.
    once = _base.Attempts(router, make_policy(), timeout=5, write=True, retry_unknown=False)
    assert once.leader_check_after("a:1") == 0.0
    with pytest.raises(ValueError, match="leader_recheck > 0"):
        make_policy(leader_recheck=0.0)


def test_only_a_read_checks_its_server_is_alive_and_only_if_it_could_go_elsewhere() -> None:
    router = _base.Router(("a:1", "b:2"), make_policy())
    read = _base.Attempts(router, make_policy(), timeout=5, write=False)
    assert read.liveness_check_after("a:1") == 1.0
    assert attempts(router).liveness_check_after("a:1") == 0.0  # a write asks who leads instead
    alone = _base.Attempts(_base.Router(("a:1",), make_policy()), make_policy(), timeout=5, write=False)
    assert alone.liveness_check_after("a:1") == 0.0
    bulk = _base.Attempts(router, make_policy(), timeout=5, write=False, capped=False)  # a snapshot download
    assert bulk.liveness_check_after("a:1") == 0.0
    never = _base.Attempts(router, make_policy(leader_check_after=0.0), timeout=5, write=False)
    assert never.liveness_check_after("a:1") == 0.0
    # An unresponsive server is left like an unavailable one: the next attempt goes elsewhere, and
    # waits there without checking (once per call: a read too heavy to let its server answer is not
    # moved around every server).
    assert read.target() == "a:1"
    read.failed("a:1", _base.Unresponsive("a:1", 1.0))
    assert read.target() == "b:2"
    assert read.liveness_check_after("b:2") == 0.0


@pytest.mark.parametrize(
    ("status_error", "moved"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),  # no answer: frozen or cut off
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),  # an answer (a rate limit): alive, keep waiting
        (grpc.StatusCode.UNAUTHENTICATED, False),
        (None, False),  # the status check answered
    ],
)
async def test_a_read_leaves_its_server_only_when_it_answers_nothing(
    status_error: grpc.StatusCode | None, moved: bool
) -> None:
    client = AsyncClient(["a:1", "b:2"], retry_policy=make_policy(leader_check_after=0.05, leader_recheck=0.05))

    def method(address: str, rpc: object, kind: str) -> Callable[..., Awaitable[object]]:
        async def status(request: object, timeout: float) -> object:
            if status_error is None:
                return cluster_pb2.StatusResponse()
            raise grpc.aio.AioRpcError(status_error, grpc.aio.Metadata(), grpc.aio.Metadata(), "from the fake")

        return status

    client._method = method  # type: ignore[method-assign]  # the transport, not the decision under test
    read: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.3, read.set_result, "the read's answer")
    attempts = _base.Attempts(client._core.router, client._core.policy, timeout=5, write=False)
    try:
        if moved:
            with pytest.raises(_base.Unresponsive, match="a:1 answered neither"):
                await client._unless_unresponsive(read, "a:1", 0.05, attempts)
        else:
            assert await client._unless_unresponsive(read, "a:1", 0.05, attempts) == "the read's answer"
    finally:
        read.cancel()
        await client.close()


def test_a_leader_named_elsewhere_moves_the_write_there_and_distrusts_the_old_one() -> None:
    router = _base.Router(("a:1", "b:2", "c:3"), make_policy())
    router.learn_leader("a:1")
    call = attempts(router)
    assert call.target() == "a:1"

    def status(leader: str, has_quorum: bool = True) -> cluster_pb2.StatusResponse:
        return cluster_pb2.StatusResponse(leader_address=leader, has_quorum=has_quorum)

    assert call.leader_moved("a:1", "b:2", status("a:1")) is None  # the same leader: only slow, keep waiting
    assert call.leader_moved("a:1", "b:2", status("")) is None  # nobody knows yet: keep waiting, ask again
    # Cut off from the others, a server may still name the leader it last heard: not believed.
    assert call.leader_moved("a:1", "b:2", status("c:3", has_quorum=False)) is None
    moved = call.leader_moved("a:1", "b:2", status("c:3"))
    assert moved is not None and moved.leader_address == "c:3"
    assert call.failed("a:1", moved) == 0.0
    assert call.target() == "c:3"
    router.learn_leader("a:1")  # a lagging server's header still names the deposed leader
    assert router.leader == "c:3"


def test_unknown_outcome_can_be_declared_not_retryable() -> None:
    call = _base.Attempts(
        _base.Router(("a:1",), make_policy()), make_policy(), timeout=5, write=True, retry_unknown=False
    )
    call.target()
    with pytest.raises(errors.UnknownOutcome):
        call.failed("a:1", errors.UnknownOutcome("maybe"))
    with pytest.raises(errors.UnknownOutcome):  # a leader hint does not make it retryable
        call.failed("a:1", errors.UnknownOutcome("maybe", "leader:9"))
    assert call.failed("a:1", errors.NoLeader("election")) >= 0.0


def test_the_deadline_raises_deadline_exceeded_caused_by_the_last_error() -> None:
    policy = RetryPolicy(initial_backoff=10.0, max_backoff=10.0, rng=HighestDelay())
    call = attempts(_base.Router(("a:1",), policy), timeout=5.0, policy=policy)
    call.target()
    last = errors.NoLeader("election running")
    # A 10 s backoff cannot fit in a 5 s deadline: sleeping into it would only delay the failure.
    with pytest.raises(errors.DeadlineExceeded) as raised:
        call.failed("a:1", last)
    assert raised.value.__cause__ is last
    assert "NoLeader" in str(raised.value)


def test_remaining_time_shrinks_and_expires() -> None:
    call = attempts(_base.Router(("a:1",), make_policy()), timeout=0.2)
    first = call.remaining()
    assert 0 < first <= 0.2
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:  # busy-wait on the clock itself, the condition under test
        pass
    with pytest.raises(errors.DeadlineExceeded):
        call.remaining()


def test_an_attempt_that_times_out_with_time_left_moves_to_another_server() -> None:
    """A hung server (SIGSTOP, a partition) answers nothing: after attempt_timeout the call moves on."""
    router = _base.Router(("a:1", "b:2"), make_policy())
    call = _base.Attempts(router, make_policy(), timeout=30, write=True)
    assert call.attempt_timeout() <= make_policy().attempt_timeout
    assert call.target() == "a:1"
    delay = call.failed("a:1", errors.DeadlineExceeded("Deadline Exceeded"))
    assert 0 <= delay < 30
    assert call.target() == "b:2"


def test_a_grpc_deadline_is_reported_with_the_call_deadline() -> None:
    """Uncapped calls (bulk transfers) use the whole deadline; running out of it ends the call."""
    router = _base.Router(("a:1",), make_policy())
    call = _base.Attempts(router, make_policy(), timeout=1, write=False, capped=False)
    assert call.attempt_timeout() > make_policy().attempt_timeout / 10
    call.target()
    call.failed("a:1", errors.Unavailable("down"))
    call.target()
    with pytest.raises(errors.DeadlineExceeded) as raised:
        call.failed("a:1", errors.DeadlineExceeded("Deadline Exceeded"))
    assert isinstance(raised.value.__cause__, errors.Unavailable)
    assert "2 attempt(s)" in str(raised.value)


# --- requests and responses ----------------------------------------------------------------------


def test_mutations_get_a_request_id_unless_given_one() -> None:
    generated = _base.put_request("k", "v", prev_kv=False, request_id=None)
    assert len(generated.request_id) == 32 and generated.value == b"v"
    assert _base.delete_request("k", "mine").request_id == "mine"
    assert _base.compare_and_swap_request("k", b"v", 3, delete=True, request_id=None).request_id
    with pytest.raises(TypeError):
        _base.put_request("k", 3, prev_kv=False, request_id=None)  # type: ignore[arg-type]


def test_reads_carry_their_consistency() -> None:
    request = _base.get_request("k", Consistency.STALE, 12)
    assert request.read.consistency == Consistency.STALE.value and request.read.min_revision == 12
    with pytest.raises(errors.InvalidArgument, match="get: consistency must be a Consistency"):
        _base.get_request("k", "stale", 0)  # type: ignore[arg-type]


def test_responses_become_dataclasses() -> None:
    pb = kv_pb2.KeyValue(key="k", value=b"v", create_revision=1, mod_revision=2, version=2)
    put = kv_pb2.PutResponse(kv=pb)
    put.header.revision = 2
    request = kv_pb2.PutRequest(key="k", value=b"v")
    assert _base.put_result(request, put).prev_kv is None
    assert _base.put_result(request, put).kv == KeyValue("k", b"v", 1, 2, 2)
    assert _base.get_result(kv_pb2.GetResponse(found=False)) is None
    cas = kv_pb2.CompareAndSwapRequest(key="k", value=b"new", delete=True)
    assert _base.cas_result(cas, kv_pb2.CompareAndSwapResponse(succeeded=True, found=False)).kv is None


def test_write_results_carry_the_value_written() -> None:
    # Servers answer writes with the key's metadata only; the client knows the value it sent.
    meta = kv_pb2.KeyValue(key="k", create_revision=1, mod_revision=3, version=2)
    assert _base.put_result(kv_pb2.PutRequest(key="k", value=b"v"), kv_pb2.PutResponse(kv=meta)).kv.value == b"v"
    request = kv_pb2.CompareAndSwapRequest(key="k", value=b"new", expected_mod_revision=1)
    won = _base.cas_result(request, kv_pb2.CompareAndSwapResponse(succeeded=True, found=True, kv=meta))
    assert won.kv is not None and won.kv.value == b"new"
    holder = kv_pb2.KeyValue(key="k", value=b"theirs", mod_revision=3)
    lost = _base.cas_result(request, kv_pb2.CompareAndSwapResponse(succeeded=False, found=True, kv=holder))
    assert lost.kv is not None and lost.kv.value == b"theirs"
    unknown_role = cluster_pb2.Member(id="n1", role=7)  # type: ignore[arg-type]  # a newer server's role
    status = _base.cluster_status(
        cluster_pb2.StatusResponse(node_id="n1", role=cluster_pb2.ROLE_LEADER, members=[unknown_role])
    )
    assert status.role is Role.LEADER and status.members[0].role is Role.UNKNOWN


def test_convert_follows_every_field_shape_of_a_result() -> None:
    """Enums (a newer server's value becomes the first member), maps (sorted), repeated fields,
    optional sub-messages (None when unset) and nested results in a tuple."""
    from controlplane.client._models import ModelFormat, ModelVersion, SearchResult, VersionStatus, search_result
    from controlplane.client._ports import convert
    from controlplane.v1 import models_pb2

    message = models_pb2.ModelVersion(
        model="m",
        version=2,
        format=models_pb2.MODEL_FORMAT_GGUF,
        status=99,
        replicas=["n2", "n1"],  # type: ignore[arg-type]
    )
    message.metadata.update({"b": "2", "a": "1"})
    version = convert(ModelVersion, message)
    assert version.format is ModelFormat.GGUF and version.status is VersionStatus.UNSPECIFIED
    assert list(version.metadata) == ["a", "b"] and version.replicas == ("n2", "n1")
    assert version.parent is None
    message.parent.model, message.parent.version = "base", 1
    parent = convert(ModelVersion, message).parent
    assert parent is not None and (parent.model, parent.version) == ("base", 1)

    from controlplane.client._gossip import TrainingMetrics
    from controlplane.v1 import gossip_pb2

    measured = convert(TrainingMetrics, gossip_pb2.TrainingMetrics(loss=0.0, examples=5))
    assert (measured.loss, measured.accuracy, measured.examples) == (0.0, None, 5)  # set to 0 is not unset
    assert convert(ModelVersion, message, version=7).version == 7  # extra wins over the message

    response = models_pb2.SearchResponse(total=2, engine="fts5", suggestions=["x"])
    response.header.revision = 9
    response.hits.add(score=-2.0).model.name = "a"
    response.hits.add(score=-1.0).model.tags.extend(["chat"])
    result = search_result(response)
    assert isinstance(result, SearchResult) and result.revision == 9 and result.suggestions == ("x",)
    assert [(hit.model.name, hit.model.tags, hit.score) for hit in result.hits] == [
        ("a", (), -2.0),
        ("", ("chat",), -1.0),
    ]


# --- watch cursor --------------------------------------------------------------------------------


def ev(revision: int, key: str = "k", kind: int = watch_pb2.EVENT_TYPE_PUT) -> watch_pb2.Event:
    return watch_pb2.Event(revision=revision, type=kind, domain="kv", key=key)  # type: ignore[arg-type]


def test_cursor_from_now_learns_its_start_from_the_first_message() -> None:
    cursor = _base.WatchCursor("", 0, (), ())
    assert cursor.request().from_revision == 0
    assert cursor.accept(watch_pb2.WatchResponse(revision=41)) == []
    assert cursor.request().from_revision == 42


def test_cursor_resumes_after_the_last_delivered_revision_and_drops_repeats() -> None:
    cursor = _base.WatchCursor("a/", 5, ("kv",), (EventType.PUT,))
    request = cursor.request()
    assert request.from_revision == 5
    assert request.filter.key_prefix == "a/" and list(request.filter.types) == [watch_pb2.EVENT_TYPE_PUT]
    events = cursor.accept(watch_pb2.WatchResponse(events=[ev(5), ev(6)], revision=6))
    assert [e.revision for e in events] == [5, 6]
    # A progress message moves the resume point past filtered-out history.
    cursor.accept(watch_pb2.WatchResponse(revision=9))
    assert cursor.request().from_revision == 10
    # A server that sends delivered events again (at-least-once) does not cause duplicates.
    again = cursor.accept(watch_pb2.WatchResponse(events=[ev(6), ev(9), ev(10)], revision=10))
    assert [e.revision for e in again] == [10]


def test_a_delete_event_has_no_kv_even_with_a_tombstone() -> None:
    tombstone = ev(4, kind=watch_pb2.EVENT_TYPE_DELETE)
    tombstone.kv.CopyFrom(kv_pb2.KeyValue(key="k", mod_revision=4))
    tombstone.prev_kv.CopyFrom(kv_pb2.KeyValue(key="k", value=b"old"))
    (event,) = _base.WatchCursor("", 4, (), ()).accept(watch_pb2.WatchResponse(events=[tombstone], revision=4))
    assert event.type is EventType.DELETE and event.kv is None and event.prev_kv is not None


def test_cursor_skips_event_types_it_does_not_know() -> None:
    cursor = _base.WatchCursor("", 1, (), ())
    events = cursor.accept(watch_pb2.WatchResponse(events=[ev(1, kind=9), ev(2)], revision=2))
    assert [e.revision for e in events] == [2]
    assert cursor.request().from_revision == 3


# --- snapshot files ------------------------------------------------------------------------------


def chunks_of(data: bytes, sha: str, size: int | None = None) -> list[cluster_pb2.SnapshotChunk]:
    parts = [data[i : i + 4] for i in range(0, len(data), 4)] or [b""]
    first = cluster_pb2.SnapshotChunk(
        data=parts[0], revision=9, total_bytes=len(data) if size is None else size, sha256=sha
    )
    return [first, *(cluster_pb2.SnapshotChunk(data=p) for p in parts[1:])]


def test_snapshot_sink_verifies_then_renames(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = b"replicated state bytes"
    sink = _base.SnapshotSink(tmp_path / "backup", "a:1")
    for chunk in chunks_of(data, hashlib.sha256(data).hexdigest()):
        sink.write(chunk)
    info = sink.commit()
    assert (tmp_path / "backup").read_bytes() == data
    assert info.revision == 9 and info.size == len(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]


@pytest.mark.parametrize(("sha", "size"), [("0" * 64, None), (hashlib.sha256(b"abcdefgh").hexdigest(), 100)])
def test_snapshot_sink_rejects_a_damaged_stream_and_leaves_the_old_file(tmp_path, sha, size) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "backup").write_bytes(b"old")
    sink = _base.SnapshotSink(tmp_path / "backup", "a:1")
    for chunk in chunks_of(b"abcdefgh", sha, size):
        sink.write(chunk)
    with pytest.raises(errors.Internal):
        sink.commit()
    sink.abort()
    assert (tmp_path / "backup").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]


def test_restore_chunks_announce_size_sha_and_the_call_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = bytes(range(256)) * (4096 * 2 + 100)  # a little over 2 MiB
    path = tmp_path / "backup"
    path.write_bytes(data)
    size, sha = _base.file_digest(path)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    header = _base.restore_header(path, include_auth=True)
    chunks = list(_base.restore_chunks(path, header))
    assert [len(c.data) for c in chunks] == [1 << 20, 1 << 20, len(data) - (2 << 20)]
    assert (chunks[0].total_bytes, chunks[0].sha256, chunks[0].include_auth) == (size, sha, True)
    assert all(not c.sha256 and not c.total_bytes and not c.request_id for c in chunks[1:])
    assert b"".join(c.data for c in chunks) == data
    # Every attempt of one call carries the same request id; another call has its own.
    retry = list(_base.restore_chunks(path, header))
    assert retry[0].request_id == chunks[0].request_id != ""
    assert _base.restore_header(path, include_auth=True).request_id != header.request_id
    (tmp_path / "empty").write_bytes(b"")
    empty = list(_base.restore_chunks(tmp_path / "empty", _base.restore_header(tmp_path / "empty", False)))
    assert len(empty) == 1 and empty[0].sha256 == hashlib.sha256(b"").hexdigest() and not empty[0].include_auth


def test_a_search_answer_that_ignored_sort_or_page_token_is_refused() -> None:
    """A server from before sorts and page tokens drops them (unknown fields) and answers page one in
    relevance order: the SDK tells from what the answer says it applied."""
    from controlplane.client import _models
    from controlplane.v1 import models_pb2

    old = models_pb2.SearchResponse(total=5)
    new = models_pb2.SearchResponse(total=5, offset=20, sort=models_pb2.SEARCH_SORT_UPDATED)
    assert _models.search_result(old).total == 5  # nothing new asked: fine
    with pytest.raises(errors.FailedPrecondition, match="older than sort and page_token"):
        _models.search_result(old, "updated")
    with pytest.raises(errors.FailedPrecondition, match="older than sort and page_token"):
        _models.search_result(old, "relevance", "p1.token")
    assert _models.search_result(new, "updated", "p1.token").total == 5


class _FakeCall:
    """A grpc.aio unary call stand-in: awaitable, cancellable, answered after ``delay`` (None: never)."""

    def __init__(self, answer: object, delay: float | None) -> None:
        self._answer, self._delay = answer, delay

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._wait().__await__()

    async def _wait(self) -> object:
        if self._delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self._delay or 0.0)
        return self._answer

    def cancel(self) -> bool:
        return True


async def test_a_write_waits_for_a_leader_the_others_still_follow() -> None:
    """The write waits at a:1 past leader_check_after; b:2, asked who leads, names a:1 (with
    quorum): a:1 is only slow, so the write keeps waiting and gets a:1's answer, sent once."""
    policy = make_policy(leader_check_after=0.05, leader_recheck=0.1)
    client = AsyncClient(["a:1", "b:2"], retry_policy=policy)
    client._core.router.learn_leader("a:1")
    written: list[str] = []

    def method(address: str, rpc: Any, kind: str) -> Callable[..., Any]:
        def call(request: object, timeout: float) -> Any:
            if rpc is _base.STATUS:
                return _FakeCall(cluster_pb2.StatusResponse(leader_address="a:1", has_quorum=True), 0.0)
            written.append(address)
            return _FakeCall(kv_pb2.PutResponse(header=common_pb2.ResponseHeader(revision=7)), 0.4)

        return call

    client._method = method  # type: ignore[method-assign]  # the transport, not the decision under test
    try:
        put = await client.put("k", b"v", timeout=5)
    finally:
        await client.close()
    assert (written, put.revision) == (["a:1"], 7)


def test_an_audit_watch_follows_the_members_or_else_the_endpoints() -> None:
    members = [
        Member("n1", "127.0.0.1:9", "127.0.0.1:7101", Role.LEADER, healthy=True, voter=True),
        # No client address yet: nothing to follow there.
        Member("n2", "127.0.0.1:8", "", Role.FOLLOWER, healthy=True, voter=True),
    ]
    assert audit_servers(members, ("127.0.0.1:7102",)) == {"n1": "127.0.0.1:7101"}
    assert audit_servers([], ("a:1", "b:2")) == {"a:1": "a:1", "b:2": "b:2"}


@pytest.mark.parametrize(
    ("code", "ends"),
    [
        (grpc.StatusCode.UNAVAILABLE, None),  # restarting or cut off: follow it again
        (grpc.StatusCode.CANCELLED, None),  # a stopping server ends its streams so
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None),  # a rate limit: later
        (grpc.StatusCode.FAILED_PRECONDITION, None),  # that server keeps no audit log (the others may)
        (grpc.StatusCode.INTERNAL, None),  # that server's bug
    ],
)
def test_an_audit_stream_error_ends_the_watch_only_when_it_is_an_answer(
    code: grpc.StatusCode, ends: type[errors.ControlPlaneError] | None
) -> None:
    error = audit_stream_error(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why"))
    assert (None if error is None else type(error)) is ends


def test_a_method_the_server_lacks_is_unimplemented_and_still_internal() -> None:
    """gRPC's UNIMPLEMENTED (a server of an older release) has its own class; code catching
    Internal, as before it had one, still catches it."""
    received = errors.error_from_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    assert type(received) is errors.Unimplemented
    assert isinstance(received, errors.Internal)
    assert received.message == "Method not found!"
