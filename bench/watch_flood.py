"""One identity floods a server with watches; does another identity notice? (issue 15)

``python -m bench.watch_flood [--attempts 10000] [--reads 2000]`` starts a 3-server LocalCluster
with TLS and its default stream limits, creates user ``reader`` (kv read) with a client certificate
of its own, and measures ``reader``'s linearizable gets on one server, one after another: first on a
quiet cluster, then while the admin identity tries to open ``--attempts`` watches on that same
server over 64 connections (the per-identity limit, 256 by default, refuses the rest with
RESOURCE_EXHAUSTED; the flood runs in a process of its own). One JSON line: the reader's
p50/p99 quiet and under the flood, their ratio, and how many watches were held and refused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench.load import percentile
from controlplane import tls
from controlplane.client import Client, Consistency, Credentials
from controlplane.dev import LocalCluster
from controlplane.v1 import auth_pb2, auth_pb2_grpc, watch_pb2, watch_pb2_grpc

CONNECTIONS = 64


def _reader_credentials(cluster: LocalCluster, address: str) -> Credentials:
    """User ``reader`` with kv read on everything, and a ``client:reader`` certificate."""
    with cluster.credentials.sync_channel_factory()(address) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        auth.AddUser(auth_pb2.AddUserRequest(name="reader"), timeout=10)
        auth.AddRole(auth_pb2.AddRoleRequest(name="kv-reader"), timeout=10)
        permission = auth_pb2.Permission(domain="kv", verb="read")
        auth.GrantPermission(auth_pb2.GrantPermissionRequest(role="kv-reader", permission=permission), timeout=10)
        auth.GrantRole(auth_pb2.GrantRoleRequest(user="reader", role="kv-reader"), timeout=10)
    cert, key = tls.issue(cluster.pki_dir, tls.Identity("client", "reader"))
    return Credentials(ca=cluster.credentials.ca, cert=cert, key=key)


def _timed_reads(client: Client, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        sent = time.perf_counter()
        client.get("flood/key", consistency=Consistency.LINEARIZABLE)
        latencies.append(time.perf_counter() - sent)
    return sorted(latencies)


def flood(address: str, credentials: Credentials, attempts: int) -> None:
    """The flooding identity, in a process of its own (its Python work must not share the reader's
    GIL): open watches on ``address`` over CONNECTIONS connections, ``attempts`` in all, holding every
    one the server accepts; print "held N refused M errors K" after each pass, and run until stdin
    closes (the parent is done measuring)."""
    channels = [credentials.sync_channel_factory()(address) for _ in range(CONNECTIONS)]
    held: list[Any] = []
    refused = errors = tried = 0
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        for channel in channels:
            if tried >= attempts:
                break
            tried += 1
            call = watch_pb2_grpc.WatchStub(channel).Watch(watch_pb2.WatchRequest(), timeout=600)
            try:
                next(call)  # held once its first message (where it starts) arrives
                held.append(call)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused += 1
                else:
                    errors += 1
        print(f"held {len(held)} refused {refused} errors {errors}", flush=True)
        if tried >= attempts:
            done.wait()
    for call in held:
        call.cancel()
    for channel in channels:
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--flood-at", nargs=4, metavar=("ADDRESS", "CA", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_at:
        address, ca, cert, key = args.flood_at
        flood(address, Credentials(ca=Path(ca), cert=Path(cert), key=Path(key)), args.attempts)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), servers=3)
        cluster.start()
        try:
            address = cluster.nodes[cluster.wait_for_leader(60)].client_address
            reader_credentials = _reader_credentials(cluster, address)
            with Client(address, credentials=cluster.credentials, timeout=10) as admin:
                admin.put("flood/key", b"v")
            admin = cluster.credentials
            with Client(address, credentials=reader_credentials, timeout=30) as reader:
                _timed_reads(reader, 100)  # warm
                quiet = _timed_reads(reader, args.reads)
                flooder = subprocess.Popen(
                    [sys.executable, "-m", "bench.watch_flood", "--attempts", str(args.attempts),
                     "--flood-at", address, str(admin.ca), str(admin.cert), str(admin.key)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert flooder.stdout is not None and flooder.stdin is not None
                counts = [0, 0, 0]
                try:
                    while sum(counts[:2]) < min(args.attempts, 1000):  # the flood under way
                        line = flooder.stdout.readline()
                        if not line:
                            raise RuntimeError("the flooding process ended early")
                        counts = [int(word) for word in line.split()[1::2]]
                    flooded = _timed_reads(reader, args.reads)
                finally:
                    flooder.stdin.close()
                    last = [line for line in flooder.stdout.read().splitlines() if line.startswith("held")]
                    flooder.wait(60)
                held, refused, errors = [int(word) for word in last[-1].split()[1::2]] if last else counts
        finally:
            cluster.stop()
    quiet_p99, flood_p99 = percentile(quiet, 0.99), percentile(flooded, 0.99)
    print(
        json.dumps(
            {
                "scenario": "watch_flood_other_identity_reads",
                "attempts": args.attempts,
                "watches_held": held,
                "watches_refused": refused,
                "other_errors": errors,
                "quiet_p50_ms": round(percentile(quiet, 0.5) * 1000, 3),
                "quiet_p99_ms": round(quiet_p99 * 1000, 3),
                "flood_p50_ms": round(percentile(flooded, 0.5) * 1000, 3),
                "flood_p99_ms": round(flood_p99 * 1000, 3),
                "p99_ratio": round(flood_p99 / quiet_p99, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
