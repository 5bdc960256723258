"""``Calls.Carry`` against real servers: unary calls as the messages of one stream, each answered as
the same call made on its own would be (its status, message and trailing metadata; its permission
check per call), the stream living on past any one call's error; a call's own deadline and
cancellation; a stopping server answers what it has and ends the stream with ``Shutdown``; and the
asyncio SDK carries its calls that way, sends them alone past its identity's stream limit, and
retries elsewhere the calls a stopping server left unanswered."""

from __future__ import annotations

import asyncio
import queue
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from controlplane import tls
from controlplane.client import AsyncClient, Client, Consistency, Credentials, DeadlineExceeded, PermissionDenied
from controlplane.dev import LocalCluster
from controlplane.server.interceptor import MAX_CARRY_STREAMS_PER_IDENTITY
from controlplane.v1 import calls_pb2, common_pb2, kv_pb2, kv_pb2_grpc, models_pb2, models_pb2_grpc

from .conftest import READY_TIMEOUT_S, channel, followers

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

CARRY = "/controlplane.v1.Calls/Carry"
PUT, GET = "/controlplane.v1.KV/Put", "/controlplane.v1.KV/Get"
GET_MODEL = "/controlplane.v1.Models/GetModel"
HEALTH_LIST = "/grpc.health.v1.Health/List"


class CarryStream:
    """A raw ``Carry`` stream on a blocking channel: send requests, read answers by id."""

    def __init__(self, ch: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._requests: queue.Queue[calls_pb2.CallBatch | None] = queue.Queue()
        carry = ch.stream_stream(
            CARRY,
            request_serializer=calls_pb2.CallBatch.SerializeToString,
            response_deserializer=calls_pb2.AnswerBatch.FromString,
        )
        self.batches: Iterator[calls_pb2.AnswerBatch] = carry(
            iter(self._requests.get, None), metadata=metadata, timeout=120
        )

    def send(self, *calls: tuple[int, str, Any]) -> None:
        """One batch of calls: (id, method, request message or bytes)."""
        batch = calls_pb2.CallBatch()
        for call_id, method, request in calls:
            payload = request if isinstance(request, bytes) else request.SerializeToString()
            batch.calls.add(id=call_id, method=method, request=payload, timeout_ms=30_000)
        self._requests.put(batch)

    def send_raw(self, *requests: calls_pb2.CallRequest) -> None:
        self._requests.put(calls_pb2.CallBatch(calls=requests))

    def read(self, count: int) -> dict[int, calls_pb2.CallResponse]:
        answers: dict[int, calls_pb2.CallResponse] = {}
        while len(answers) < count:
            answers.update((answer.id, answer) for answer in next(self.batches).answers)
        assert len(answers) == count, answers
        return answers

    def close(self) -> None:
        self._requests.put(None)


def test_each_carried_call_is_answered_as_the_call_alone_would_be(cluster: LocalCluster) -> None:
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    key = f"carry/{uuid.uuid4().hex[:8]}"
    with channel(address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        missing = models_pb2.GetModelRequest(model=f"carry-missing-{uuid.uuid4().hex[:8]}")
        with pytest.raises(grpc.RpcError) as alone_missing:
            models_pb2_grpc.ModelsStub(ch).GetModel(missing, timeout=30)
        with pytest.raises(grpc.RpcError) as alone_bad:
            kv.Put(kv_pb2.PutRequest(key=""), timeout=30)
        list_health = ch.unary_unary(
            HEALTH_LIST,
            request_serializer=health_pb2.HealthListRequest.SerializeToString,
            response_deserializer=health_pb2.HealthListResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as alone_unwritten:  # grpcio's generated default: not implemented
            list_health(health_pb2.HealthListRequest(), timeout=30)

        stream = CarryStream(ch)
        stream.send(
            (1, PUT, kv_pb2.PutRequest(key=key, value=b"v1", request_id=uuid.uuid4().hex)),
            (2, GET_MODEL, missing),
            (3, PUT, kv_pb2.PutRequest(key="")),
        )
        stream.send(
            (4, "/controlplane.v1.Watch/Watch", b""),  # a stream: not carried
            (5, CARRY, b""),
            (6, "/controlplane.v1.Nope/Nothing", b""),
            (7, PUT, b"\xff\xff\xff"),  # does not decode
            (8, HEALTH_LIST, health_pb2.HealthListRequest()),
        )
        answers = stream.read(8)

        assert answers[1].code == 0 and kv_pb2.PutResponse.FromString(answers[1].response).header.revision > 0
        for answer, alone in (
            (answers[2], alone_missing.value),
            (answers[3], alone_bad.value),
            (answers[8], alone_unwritten.value),
        ):
            assert (answer.code, answer.message) == (alone.code().value[0], alone.details())
            carried_trailing = [(m.key, m.value) for m in answer.trailing_metadata]
            assert carried_trailing == [(k, v) for k, v in alone.trailing_metadata() if k.startswith("cp-")]
            assert carried_trailing  # the error's kind at least: what the SDK maps it by
        for call_id in (4, 5, 6):
            assert answers[call_id].code == grpc.StatusCode.UNIMPLEMENTED.value[0], answers[call_id]
            assert "not a unary method of this server" in answers[call_id].message
        assert answers[7].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "does not decode as /controlplane.v1.KV/Put's" in answers[7].message

        # The stream lives on past every error above.
        stream.send((9, GET, kv_pb2.GetRequest(key=key)))
        (answer,) = stream.read(1).values()
        assert kv_pb2.GetResponse.FromString(answer.response).kv.value == b"v1"
        stream.close()


def test_each_carried_call_is_authorized_on_its_own(cluster: LocalCluster) -> None:
    """A reader's token on the stream: its reads are answered, its writes refused, on one stream."""
    suffix = uuid.uuid4().hex[:6]
    user, role, key = f"carry-u-{suffix}", f"carry-r-{suffix}", f"carry/{suffix}"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin:
        admin.put(key, b"seen")
        admin.auth.add_role(role)
        admin.auth.grant_permission(role, ("kv", "read"))
        admin.auth.add_user(user)
        admin.auth.grant_role(user, role)
        token = admin.auth.create_token(user).token
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    with channel(address) as ch:
        stream = CarryStream(ch, metadata=(("authorization", f"Bearer {token}"),))
        stream.send(
            (1, PUT, kv_pb2.PutRequest(key=key, value=b"no", request_id=uuid.uuid4().hex)),
            (2, GET, kv_pb2.GetRequest(key=key)),
        )
        answers = stream.read(2)
        assert answers[1].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert "kv:write" in answers[1].message and f"user:{user}" in answers[1].message
        assert kv_pb2.GetResponse.FromString(answers[2].response).kv.value == b"seen"
        stream.close()

    # The same through the SDK, whose calls travel this way.
    cert, key_file = tls.issue(cluster.pki_dir, tls.Identity("client", f"carry-cert-{suffix}"))
    as_reader = Credentials(ca=cluster.credentials.ca, cert=cert, key=key_file, token=token)

    async def through_the_sdk() -> None:
        async with AsyncClient([address], credentials=as_reader, timeout=30) as reader:
            assert (await reader.get(key)).value == b"seen"
            assert await reader.get(key + "/missing") is None
            with pytest.raises(PermissionDenied, match="kv:write"):
                await reader.put(key, b"no")

    asyncio.run(through_the_sdk())


def test_the_asyncio_sdk_carries_concurrent_calls_on_one_stream_per_server(cluster: LocalCluster) -> None:
    prefix = f"carry-sdk/{uuid.uuid4().hex[:8]}/"

    async def many() -> None:
        async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
            await asyncio.gather(*(client.put(f"{prefix}{i}", str(i).encode()) for i in range(200)))
            values = await asyncio.gather(*(client.get(f"{prefix}{i}") for i in range(200)))
            assert [kv.value for kv in values] == [str(i).encode() for i in range(200)]
            carriers = client._carriers  # white-box: the calls above went on the streams, not alone
            assert carriers and not any(carrier.refused for carrier in carriers.values())

    asyncio.run(many())


def test_a_carried_call_has_its_own_deadline_and_can_be_cancelled_alone(cluster: LocalCluster) -> None:
    """A read waiting for a revision far ahead: with a short deadline it is answered
    DEADLINE_EXCEEDED; with a long one, cancelled, it is never answered, while the stream's other
    calls are, and the stream ends cleanly."""
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    far_ahead = kv_pb2.GetRequest(
        key="carry/later", read=common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_STALE, min_revision=10**12)
    ).SerializeToString()
    with channel(address) as ch:
        stream = CarryStream(ch)
        stream.send_raw(calls_pb2.CallRequest(id=1, method=GET, request=far_ahead, timeout_ms=300))
        assert stream.read(1)[1].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]

        stream.send_raw(calls_pb2.CallRequest(id=2, method=GET, request=far_ahead, timeout_ms=120_000))
        stream.send_raw(calls_pb2.CallRequest(id=2, cancel=True))
        stream.send((3, GET, kv_pb2.GetRequest(key="carry/now")))
        assert stream.read(1)[3].code == 0
        stream.close()  # the server answers what it has, then ends the stream: call 2 is gone
        rest = [answer.id for batch in stream.batches for answer in batch.answers]
        assert rest == []

    async def through_the_sdk() -> None:
        async with AsyncClient([address], credentials=cluster.credentials, timeout=1.0) as client:
            with pytest.raises(DeadlineExceeded):
                await client.get("carry/later", consistency=Consistency.STALE, min_revision=10**12)
            assert await client.get("carry/now", timeout=30) is None  # the stream still serves

    asyncio.run(through_the_sdk())


def test_a_stopping_server_answers_its_carried_calls_and_ends_the_stream_with_unavailable(
    cluster: LocalCluster,
) -> None:
    """SIGTERM: the server reads no more calls, answers the one still running (a read waiting for
    a revision, until its deadline) and ends the stream with UNAVAILABLE saying it is shutting
    down (``Shutdown``: the calls it did not read never ran), rather than holding the client
    listener's grace to its end."""
    node = followers(cluster, cluster.wait_for_leader())[0]
    far_ahead = kv_pb2.GetRequest(
        key="carry/later", read=common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_STALE, min_revision=10**12)
    ).SerializeToString()
    try:
        with channel(node.client_address) as ch:
            stream = CarryStream(ch)
            # One batch: once the quick call is answered, the server has read the waiting one too.
            stream.send_raw(
                calls_pb2.CallRequest(id=1, method=GET, request=far_ahead, timeout_ms=1000),
                calls_pb2.CallRequest(id=2, method=GET, request=kv_pb2.GetRequest(key="x").SerializeToString()),
            )
            assert stream.read(1)[2].code == 0
            cluster.kill(node.id, signal.SIGTERM)
            answered = []
            with pytest.raises(grpc.RpcError) as caught:
                for batch in stream.batches:
                    answered += [(answer.id, answer.code) for answer in batch.answers]
        assert answered == [(1, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])]
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        assert "shutting down" in (caught.value.details() or "")
        assert ("cp-error", "Shutdown") in tuple(caught.value.trailing_metadata() or ())
    finally:
        cluster.restart(node.id)
        cluster.wait_for_leader(READY_TIMEOUT_S)


def test_a_client_over_its_stream_limit_sends_its_calls_alone(cluster: LocalCluster) -> None:
    """An identity holding ``MAX_CARRY_STREAMS_PER_IDENTITY`` streams on a server: the next one is
    refused before it carries anything, and that client's calls go alone and are answered."""
    address = cluster.nodes[cluster.wait_for_leader(60)].client_address
    suffix = uuid.uuid4().hex[:8]
    key = f"carry-limit/{suffix}"
    # An identity of its own: no other test's stream takes one of its places.
    cert, key_file = tls.issue(cluster.pki_dir, tls.Identity("client", f"carry-limit-{suffix}"))
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin:
        admin.auth.add_role(f"carry-limit-r-{suffix}")
        admin.auth.grant_permission(f"carry-limit-r-{suffix}", ("kv", "read"))
        admin.auth.grant_permission(f"carry-limit-r-{suffix}", ("kv", "write"))
        admin.auth.add_user(f"carry-limit-{suffix}")
        admin.auth.grant_role(f"carry-limit-{suffix}", f"carry-limit-r-{suffix}")
    own = Credentials(ca=cluster.credentials.ca, cert=cert, key=key_file)
    with own.sync_channel_factory()(address) as ch:
        held = [CarryStream(ch) for _ in range(MAX_CARRY_STREAMS_PER_IDENTITY)]
        for stream in held:  # each open and answering: every place taken
            stream.send((1, GET, kv_pb2.GetRequest(key=key)))
            stream.read(1)

        async def over_the_limit() -> None:
            async with AsyncClient([address], credentials=own, timeout=30) as client:
                await client.put(key, b"alone")
                assert (await client.get(key)).value == b"alone"
                (carrier,) = client._carriers.values()  # white-box: the calls above went alone
                assert carrier.refused

        asyncio.run(over_the_limit())
        for stream in held:
            stream.close()


def test_sdk_calls_carried_to_a_server_that_stops_are_retried_elsewhere(cluster: LocalCluster) -> None:
    """A rolling restart under load: 16 callers read from a follower (and write to the leader) while
    the follower is sent SIGTERM; every call is answered (the unanswered ones retried elsewhere),
    none raises."""
    leader_id = cluster.wait_for_leader()
    node = followers(cluster, leader_id)[0]
    others = [n.client_address for n in cluster.nodes.values() if n.id != node.id]
    prefix = f"carry-stop/{uuid.uuid4().hex[:8]}/"
    try:

        async def under_load() -> int:
            done = 0
            stop = asyncio.Event()

            async def caller(client: AsyncClient, i: int) -> None:
                nonlocal done
                n = 0
                while not stop.is_set():
                    key = f"{prefix}{i}/{n}"
                    written = await client.put(key, b"v")
                    read = await client.get(key, consistency=Consistency.STALE, min_revision=written.revision)
                    assert read is not None and read.value == b"v"
                    n += 1
                    done += 1

            async def until_done(count: int) -> None:
                while done < count:
                    await asyncio.sleep(0.05)

            # Reads stick to the first endpoint: the follower that stops; writes go to the leader.
            async with AsyncClient([node.client_address, *others], credentials=cluster.credentials, timeout=30) as c:
                callers = [asyncio.ensure_future(caller(c, i)) for i in range(16)]
                await asyncio.wait_for(until_done(200), 120)
                carrier = c._carriers[node.client_address]  # white-box: the reads are carried
                assert not carrier.refused
                cluster.kill(node.id, signal.SIGTERM)
                await asyncio.wait_for(until_done(done + 200), 120)
                stop.set()
                await asyncio.gather(*callers)  # any call that raised fails the test here
            return done

        assert asyncio.run(under_load()) >= 400
    finally:
        cluster.restart(node.id)
        cluster.wait_for_leader(READY_TIMEOUT_S)
