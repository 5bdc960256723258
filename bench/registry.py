"""Model-registry scenarios of `make bench`, run against our cluster after the KV scenarios.

- ``registry_bulk_register``: N versions (default 100,000: 20,000 models x 5 versions) registered
  through Models.BulkRegister in batches of 1,000 (one log entry each); versions per second. Also
  each server's resident memory before and after (once a follower's search index answers at the
  last revision, after ``registry_search``): ``rss_mib_after`` per server, in the cluster's node
  order, and ``rss_bytes_per_version``, their mean growth divided by the versions registered (the
  bulk's, and those the 64-client scenario acknowledged in its measured window; its warm-up's
  few hundred are not counted, so the figure is about 1% high). None when a server is gone.
- ``registry_register_64_clients``: 64 concurrent clients each registering single versions through
  Models.RegisterVersion (the common path: one version per call); versions per second.
- ``registry_search``: a mix of queries (name fragments, hyphenated names, diacritics, multi-term,
  filters, pagination, no-match) against ONE server, sequentially, STALE reads so the number is the
  index and the RPC, not a Raft barrier; client-side p50/p99 and the server's own query_ms p50/p99.
  The issue's target is p99 under 5 ms. Also what the SDK's conversion of each answer into its
  result types (``search_result``) costs per hit, ``sdk_convert_us_per_hit`` (target 20 µs),
  timed apart from the RPC: every answer's conversion (the empty ones' and the first, which works
  out the readers, included) over the hits they held. ``server_query_p99_ms_slowest``: the three
  queries of the mix with the highest p99 in the server, where the tail comes from (each query
  runs rounds/14 times, ~143 at the default 2,000: its p99 is about its second slowest).
- ``registry_restart`` (bench/restart.py): a follower stopped (SIGTERM, then kill -9) and started
  again on that registry: seconds to ready, to a linearizable read and to a linearizable search.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from typing import Any

import grpc

from bench.common import log, process_rss_bytes
from bench.load import CHANNEL_OPTIONS, Scenario, System, percentile, run_scenario

FAMILIES = ["llama", "qwen", "mistral", "phi", "gemma", "whisper", "falcon", "bloom", "café", "deepseek"]
SIZES = ["0.5B", "1B", "3B", "7B", "8B", "13B", "34B", "70B"]
VARIANTS = ["Instruct", "Chat", "Base", "Coder", "Vision", "Math"]
TAGS = ["chat", "code", "vision", "audio", "math", "multilingual", "quantized", "research"]
FORMATS = [1, 2, 3, 4, 5]
QUERIES = [
    {"query": "llama"},
    {"query": "qwen inst"},
    {"query": "llama-3"},
    {"query": "cafe"},
    {"query": "mistral 7b"},
    {"query": "gemma chat"},
    {"query": "deepseek coder 34"},
    {"query": "phi", "format": 2},
    {"query": "falcon", "status": 2},
    {"query": "bloom", "tag": "multilingual"},
    {"query": "llama", "offset": 20},
    {"query": "vision", "family": "qwen"},
    {"query": "nothing-matches-this"},
    {"query": "m"},
]


def catalogue(models: int, versions_per_model: int, run: str) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for index in range(models):
        family = FAMILIES[index % len(FAMILIES)]
        # Size and variant vary independently of the family, so every family has every kind.
        variant = VARIANTS[(index // len(FAMILIES)) % len(VARIANTS)]
        size = SIZES[(index // (len(FAMILIES) * len(VARIANTS))) % len(SIZES)]
        name = f"{family.capitalize()}-{index % 9}-{size}-{variant}-{index}"
        tags = rng.sample(TAGS, 2)
        for version in range(versions_per_model):
            out.append(
                {
                    "model": name,
                    "draft": {"family": family, "tags": tags, "description": f"{family} {variant} model"},
                    "sha256": hashlib.sha256(f"{run}/{name}/{version}".encode()).hexdigest(),
                    "size_bytes": 1_000_000 + version,
                    "format": FORMATS[(index + version) % len(FORMATS)],
                    "status": 2 if version % 2 else 1,
                }
            )
    return out


async def bulk_register(address: str, versions: list[dict[str, Any]], batch: int = 1000) -> dict[str, Any]:
    from controlplane.v1 import models_pb2, models_pb2_grpc

    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        started = time.perf_counter()
        for start in range(0, len(versions), batch):
            request = models_pb2.BulkRegisterRequest(request_id=f"bulk-{start}-{versions[0]['sha256'][:8]}")
            for item in versions[start : start + batch]:
                request.versions.append(
                    models_pb2.RegisterVersionRequest(
                        model=item["model"],
                        draft=models_pb2.ModelDraft(**item["draft"]),
                        sha256=item["sha256"],
                        size_bytes=item["size_bytes"],
                        format=item["format"],
                        status=item["status"],
                    )
                )
            await stub.BulkRegister(request, timeout=60.0)
        elapsed = time.perf_counter() - started
    return {
        "scenario": "registry_bulk_register",
        "system": "ours",
        "versions": len(versions),
        "batch": batch,
        "seconds": round(elapsed, 2),
        "versions_per_s": round(len(versions) / elapsed, 1),
    }


def register_system(cluster: Any, leader: str) -> System:
    """One fresh single-version registration per op (64-client load through the generic generator)."""
    from controlplane.v1 import models_pb2, models_pb2_grpc

    async def register(stub: Any, key: str, value: bytes) -> None:
        _, run, _, client, _ = key.split("/")
        request = models_pb2.RegisterVersionRequest(
            model=f"load-{run}-{client}",
            sha256=hashlib.sha256(key.encode()).hexdigest(),
            size_bytes=len(value),
            format=models_pb2.MODEL_FORMAT_GGUF,
            request_id=key,
        )
        await stub.RegisterVersion(request, timeout=10.0)

    return System(
        name="ours",
        endpoints=list(cluster.client_addresses),
        leader=leader,
        stub_factory=models_pb2_grpc.ModelsStub,
        put=register,
        server_pids=[n.pid for n in cluster.nodes.values() if n.pid is not None],
    )


async def search_latency(address: str, rounds: int, revision: int) -> dict[str, Any]:
    from controlplane.client._models import search_result
    from controlplane.v1 import common_pb2, models_pb2, models_pb2_grpc

    read = common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_STALE, min_revision=revision)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        # The first search waits for the index to reach the registered revision.
        await stub.Search(models_pb2.SearchRequest(read=read, query="llama"), timeout=60.0)
        client_ms: list[float] = []
        server_ms_by_query: dict[str, list[float]] = {}
        hits = 0
        convert_s = 0.0
        for query in itertools.islice(itertools.cycle(QUERIES), rounds):
            started = time.perf_counter()
            response = await stub.Search(models_pb2.SearchRequest(read=read, limit=20, **query), timeout=10.0)
            client_ms.append((time.perf_counter() - started) * 1e3)
            server_ms_by_query.setdefault(_label(query), []).append(response.query_ms)
            hits += len(response.hits)
            engine = response.engine
            started = time.perf_counter()
            search_result(response)
            convert_s += time.perf_counter() - started
    client_ms.sort()
    server_ms = sorted(itertools.chain.from_iterable(server_ms_by_query.values()))
    by_query = {label: percentile(sorted(times), 0.99) for label, times in server_ms_by_query.items()}
    slowest = sorted(by_query.items(), key=lambda item: -item[1])[:3]
    return {
        "scenario": "registry_search",
        "system": "ours",
        "queries": rounds,
        "query_mix": len(QUERIES),
        "engine": engine,
        "client_p50_ms": round(percentile(client_ms, 0.5), 3),
        "client_p99_ms": round(percentile(client_ms, 0.99), 3),
        "server_query_p50_ms": round(percentile(server_ms, 0.5), 3),
        "server_query_p99_ms": round(percentile(server_ms, 0.99), 3),
        "mean_hits": round(hits / rounds, 1),
        "target_p99_ms": 5.0,
        "sdk_convert_us_per_hit": round(convert_s * 1e6 / hits, 2) if hits else None,
        # Where the tail comes from: the three queries of the mix with the highest p99 in the server.
        "server_query_p99_ms_slowest": {label: round(ms, 3) for label, ms in slowest},
    }


def _label(query: dict[str, Any]) -> str:
    """One query of the mix as text: its words, then its other fields ("phi format=2")."""
    return " ".join([query["query"], *(f"{key}={value}" for key, value in query.items() if key != "query")])


async def bench_registry(
    cluster: Any, leader: str, versions: int, duration: float, warmup: float
) -> list[dict[str, Any]]:
    run = hashlib.sha256(str(time.time()).encode()).hexdigest()[:8]
    items = catalogue(max(1, versions // 5), 5, run)[:versions]
    pids = [n.pid for n in cluster.nodes.values() if n.pid is not None]
    rss_before = [process_rss_bytes(pid) for pid in pids]
    log(f"registry: bulk-registering {len(items)} versions")
    bulk = await bulk_register(leader, items)
    lines = [bulk]
    log(f"registry: {bulk['versions_per_s']} versions/s in bulk")
    register = Scenario("registry_register_64_clients", 64, duration, 2 * warmup, leader_only=False)
    lines.append(await run_scenario(register_system(cluster, leader), register))
    registered = len(items) + lines[-1]["ops"]
    await asyncio.sleep(0)
    from controlplane.v1 import cluster_pb2, cluster_pb2_grpc

    async with grpc.aio.insecure_channel(leader, options=CHANNEL_OPTIONS) as channel:
        status = await cluster_pb2_grpc.ClusterStub(channel).Status(cluster_pb2.StatusRequest(), timeout=5.0)
    follower = next(a for a in cluster.client_addresses if a != leader)
    line = await search_latency(follower, 2000, status.applied_revision)
    line["models"] = len({item["model"] for item in items})
    line["versions"] = len(items)
    lines.append(line)
    rss_after = [process_rss_bytes(pid) for pid in pids]
    bulk["rss_mib_before"] = [None if rss is None else round(rss / 2**20, 1) for rss in rss_before]
    bulk["rss_mib_after"] = [None if rss is None else round(rss / 2**20, 1) for rss in rss_after]
    growth = [after - before for before, after in zip(rss_before, rss_after, strict=True) if before and after]
    measured_all = len(growth) == len(pids) > 0
    bulk["rss_bytes_per_version"] = round(sum(growth) / len(growth) / registered) if measured_all else None
    log(f"registry: servers' memory {bulk['rss_mib_after']} MiB, {bulk['rss_bytes_per_version']} bytes per version")
    log(
        f"registry search on a follower: client p50 {line['client_p50_ms']} ms p99 {line['client_p99_ms']} ms; "
        f"index p50 {line['server_query_p50_ms']} ms p99 {line['server_query_p99_ms']} ms ({line['engine']})"
    )
    from bench.restart import bench_restart

    # Last, as it stops a server: the same follower restarted twice on the registry just measured.
    lines += await asyncio.to_thread(bench_restart, cluster, items[-1]["model"], registered)
    return lines
