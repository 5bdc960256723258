"""Bad input is refused with INVALID_ARGUMENT and a message naming the problem; nothing is written."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from controlplane.client import Client, InvalidArgument
from controlplane.dev import LocalCluster, free_port
from controlplane.state import limits
from controlplane.v1 import cluster_pb2, common_pb2, kv_pb2

from .conftest import channel, cluster_stub, kv_stub, node_client, status

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

UNKNOWN_CONSISTENCY = 7  # not a value of controlplane.v1.Consistency


def _sdk_cases() -> list[tuple[str, Callable[[Client], object], tuple[str, ...]]]:
    """(case id, call, words the error message must contain)."""
    free = f"127.0.0.1:{free_port()}"
    too_big = b"x" * (limits.MAX_VALUE_BYTES + 1)
    return [
        ("put-empty-key", lambda c: c.put("", b"v"), ("key", "empty")),
        ("get-empty-key", lambda c: c.get(""), ("key", "empty")),
        ("delete-empty-key", lambda c: c.delete(""), ("key", "empty")),
        ("cas-empty-key", lambda c: c.compare_and_swap("", b"v", 0), ("key", "empty")),
        ("put-oversized-key", lambda c: c.put("k" * (limits.MAX_KEY_BYTES + 1), b"v"), ("key", "limit")),
        ("put-oversized-value", lambda c: c.put("bad/big", too_big), ("value", str(limits.MAX_VALUE_BYTES))),
        ("cas-oversized-value", lambda c: c.compare_and_swap("bad/big", too_big, 0), ("value", "limit")),
        ("put-long-request-id", lambda c: c.put("bad/rid", b"v", request_id="r" * 200), ("request_id",)),
        ("list-limit-too-high", lambda c: c.list("bad/", limit=limits.MAX_LIST_LIMIT + 1), ("limit",)),
        ("member-bad-raft-address", lambda c: c.add_member("n9", "not-an-address", free), ("raft_address",)),
        ("member-raft-port-zero", lambda c: c.add_member("n9", "127.0.0.1:0", free), ("raft_address", "1-65535")),
        ("member-bad-client-address", lambda c: c.add_member("n9", free, "localhost"), ("client_address",)),
        ("member-bad-id", lambda c: c.add_member("-n9 x", free, free), ("member id",)),
        ("member-empty-id", lambda c: c.add_member("", free, free), ("member id", "empty")),
        ("remove-member-empty-id", lambda c: c.remove_member(""), ("member id", "empty")),
    ]


def test_bad_input_is_invalid_argument_on_every_server(cluster: LocalCluster) -> None:
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        revision_before = client.put("bad/fence", b"before").revision
    problems = []
    for node in cluster.nodes.values():
        with node_client(node) as client:
            for case, call, words in _sdk_cases():
                try:
                    call(client)
                except InvalidArgument as exc:
                    missing = [w for w in words if w.lower() not in exc.message.lower()]
                    if missing:
                        problems.append(f"{node.id} {case}: message {exc.message!r} does not mention {missing}")
                except Exception as exc:
                    problems.append(f"{node.id} {case}: {type(exc).__name__}: {exc}")
                else:
                    problems.append(f"{node.id} {case}: accepted")
    assert not problems, "\n".join(problems)

    # Nothing reached the log: the next write is the very next revision, and the cluster works.
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        after = client.put("bad/fence", b"after")
        assert after.revision == revision_before + 1
        kv = client.get("bad/fence")
        assert kv is not None and kv.value == b"after" and kv.version == 2
        assert client.get("bad/big") is None and client.get("bad/rid") is None
    for node in cluster.nodes.values():
        assert {m.id for m in status(node).members} == set(cluster.nodes), node.id


@pytest.mark.parametrize("method", ["Get", "List"])
def test_unknown_consistency_is_invalid_argument(cluster: LocalCluster, method: str) -> None:
    """The SDK cannot send an unknown enum value (its Consistency type forbids it); raw clients can."""
    read = common_pb2.ReadOptions(consistency=UNKNOWN_CONSISTENCY)
    request = kv_pb2.GetRequest(key="bad/k", read=read) if method == "Get" else kv_pb2.ListRequest(read=read)
    for node in cluster.nodes.values():
        with channel(node.client_address) as ch:
            with pytest.raises(grpc.RpcError) as caught:
                getattr(kv_stub(ch), method)(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, node.id
            assert "consistency" in caught.value.details().lower(), caught.value.details()
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put("bad/k", b"ok")
        assert client.get("bad/k") is not None


def test_empty_add_member_request_names_the_problem(cluster: LocalCluster) -> None:
    with channel(cluster.client_addresses[0]) as ch, pytest.raises(grpc.RpcError) as caught:
        cluster_stub(ch).AddMember(cluster_pb2.AddMemberRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "member id" in caught.value.details()
