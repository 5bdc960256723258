"""Entry point of `make bench`: ``python -m bench.run [--quick]``.

Runs, one after the other so that they never share the CPUs:
  1. etcd 3.4, 3 members, default (fsync)    -> write_1_client, write_64_clients
  2. etcd 3.4, 3 members, --unsafe-no-fsync  -> write_1_client, write_64_clients
  3. our cluster, durability = "none"        -> write_1_client, write_64_clients as `ours-nofsync`
                                                 (ratios against etcd-nofsync are the like-for-like)
  4. our cluster, durability = "fsync" (the default, `ours`; client ports plaintext like etcd's)
                                             -> write_1_client, write_64_clients, allocate_64_clients
                                                 (Ports.Allocate; ratios against etcd's write_64_clients),
                                                 registry_bulk_register, registry_register_64_clients,
                                                 registry_search (100,000 versions), registry_restart
                                                 (a follower restarted on them), membership_agents
                                                 (1,000 agents), membership_churn, leader_failover
                                                 (10 kill -9s of the leader)
  4b. our cluster with TLS client ports and authorization (`ours-tls`, the default deployment)
                                             -> write_1_client, write_64_clients with ratio_to_plaintext
  5. search quality, in-process (CPU only) -> search_quality per engine (recall@10, MRR on the labelled
                                                 queries; latency, rebuild time, size at ~100,000 versions)
  5b. the gossip simulation (CPU only)        -> gossip_sim per N and policy, gossip_sim_targets
  6. live gossip: 3 servers + 8 gossip.Workers training digits -> gossip_live (round time, bytes, accuracy)
One JSON line per scenario on stdout (ours carry ratios to etcd from this same run), and nothing else:
progress goes to stderr, the logs of libraries running in this process to bench/.work/bench-process.log.
Every write line carries server_cpu_ms_per_write (utime + stime of the 3 server processes over the
measured window, from /proc, per acknowledged write).
Every process the bench started is stopped on exit, including Ctrl-C, SIGTERM and exceptions.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import signal
import sys
from typing import Any

from bench.common import WORK_DIR, emit, kill_all_children, log, route_output
from bench.load import Scenario, System, run_scenario

# Our cluster without the journal's fdatasync: the like-for-like of etcd --unsafe-no-fsync.
NOFSYNC = {"durability": "none"}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [
        Scenario("write_1_client", 1, args.duration, args.warmup, leader_only=True),
        # 64 clients warm up twice as long: 64 connections' worth of streams and batching to settle.
        Scenario("write_64_clients", 64, args.duration, 2 * args.warmup, leader_only=False),
    ]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def add_ratios(
    ours: dict[str, Any], etcd: dict[tuple[str, str], dict[str, Any]], reference: str | None = None
) -> dict[str, Any]:
    """ratio_to_etcd* = ours / etcd for the same scenario (or ``reference``) in this run (ops/s and latencies)."""
    if reference:
        ours["etcd_reference"] = reference
    for system, suffix in (("etcd", ""), ("etcd-nofsync", "_nofsync")):
        ref = etcd.get((system, reference or ours["scenario"]))
        ours[f"ratio_to_etcd{suffix}"] = _ratio(ours["ops_per_s"], ref["ops_per_s"]) if ref else None
        ours[f"p50_ratio_to_etcd{suffix}"] = _ratio(ours["p50_ms"], ref["p50_ms"]) if ref else None
        ours[f"p99_ratio_to_etcd{suffix}"] = _ratio(ours["p99_ms"], ref["p99_ms"]) if ref else None
    return ours


async def bench_etcd(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]) -> bool:
    from bench.etcd import (
        EtcdCluster,
        EtcdUnavailable,
        ensure_etcd,
        etcd_put_fn,
        etcd_version,
        supports_no_fsync,
    )
    from bench.gen import generate_etcd

    try:
        pb2, pb2_grpc = generate_etcd()
        binary = ensure_etcd()
    except (EtcdUnavailable, RuntimeError) as e:
        log(f"etcd side skipped: {e}")
        return False
    version = etcd_version(binary)
    variants = [False]
    if supports_no_fsync(binary):
        variants.append(True)
    else:
        log(f"etcd {version} does not accept --unsafe-no-fsync: no etcd-nofsync lines")
    ok = True
    for no_fsync in variants:
        cluster = EtcdCluster(binary, no_fsync=no_fsync)
        try:
            cluster.start()
            for sc in scenarios(args):
                leader = await cluster.wait_healthy(pb2, pb2_grpc)
                system = System(
                    cluster.label,
                    cluster.client_addresses,
                    leader,
                    pb2_grpc.KVStub,
                    etcd_put_fn(pb2),
                    server_pids=cluster.pids,
                )
                line = await run_scenario(system, sc)
                line["version"] = version
                results[(cluster.label, sc.name)] = line
                emit(line)
        except EtcdUnavailable as e:
            log(f"{cluster.label} failed: {e}")
            ok = False
        finally:
            cluster.stop()
            log(f"{cluster.label}: stopped")
    return ok


async def bench_ours(
    args: argparse.Namespace,
    etcd: dict[tuple[str, str], dict[str, Any]],
    name: str = "ours",
    extra_config: dict[str, Any] | None = None,
    failover: bool = True,
    client_tls: bool = False,
    plaintext: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """Our cluster's scenarios. ``plaintext``: lines by scenario, filled by the plaintext run and read
    by the ``client_tls`` run for its ``ratio_to_plaintext`` (what TLS and authorization cost)."""
    from bench import ours

    try:
        LocalCluster, cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc = ours.import_ours()
    except ours.OursUnavailable as e:
        log(f"our side skipped: {e}")
        return False
    cluster = ours.start_cluster(LocalCluster, extra_config=extra_config, client_tls=client_tls)
    stopped = False

    def stop_cluster() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            try:
                cluster.stop()
            except Exception as e:
                log(f"our cluster stop failed: {e!r}")

    atexit.register(stop_cluster)  # last resort if the process dies past the finally below
    try:
        cluster.start()
        leader_id = cluster.wait_for_leader(timeout=30.0)
        log(f"{name}: started {len(cluster.client_addresses)} servers, leader {leader_id}")
        for sc in scenarios(args):
            leader = await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
            system = ours.ours_system(cluster, leader, kv_pb2, kv_pb2_grpc, name=name, calls=args.ours_calls)
            line = add_ratios(await run_scenario(system, sc), etcd)
            if plaintext is not None and not client_tls:
                plaintext[sc.name] = line
            elif plaintext is not None and sc.name in plaintext:
                line["ratio_to_plaintext"] = _ratio(line["ops_per_s"], plaintext[sc.name]["ops_per_s"])
                line["p50_ratio_to_plaintext"] = _ratio(line["p50_ms"], plaintext[sc.name]["p50_ms"])
                cpu, cpu_plain = line.get("server_cpu_ms_per_write"), plaintext[sc.name].get("server_cpu_ms_per_write")
                line["cpu_ratio_to_plaintext"] = _ratio(cpu, cpu_plain) if cpu and cpu_plain else None
            emit(line)
        if name == "ours":
            # Port allocations with 64 clients, next to etcd's 64-client puts from this run.
            leader = await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
            allocate = Scenario("allocate_64_clients", 64, args.duration, 2 * args.warmup, leader_only=False)
            line = await run_scenario(ours.ours_allocate_system(cluster, leader, args.ours_calls), allocate)
            emit(add_ratios(line, etcd, reference="write_64_clients"))
            if args.registry_versions:
                from bench.registry import bench_registry

                leader = await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
                for line in await bench_registry(cluster, leader, args.registry_versions, args.duration, args.warmup):
                    if line["scenario"] == "registry_register_64_clients":
                        line = add_ratios(line, etcd, reference="write_64_clients")
                    emit(line)
            if args.agents:
                from bench.membership import bench_membership

                await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
                for line in await bench_membership(
                    cluster, args.agents, args.agents_hold, args.churn_seconds, args.churn_rate
                ):
                    emit(line)
        if failover and args.failover_reps > 0:
            await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
            samples = []
            for i in range(args.failover_reps):
                log(f"ours failover: repetition {i + 1}/{args.failover_reps}")
                samples.append(
                    await ours.measure_failover(
                        cluster,
                        cluster_pb2,
                        cluster_pb2_grpc,
                        kv_pb2,
                        kv_pb2_grpc,
                        op_timeout=args.op_timeout,
                    )
                )
            emit(ours.summarize_failover(samples, args.op_timeout))
    finally:
        stop_cluster()
        log(f"{name}: stopped")
    return True


async def amain(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so every finally (cluster stops) runs.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    load1, load5, _ = os.getloadavg()
    log(f"load average {load1:.2f} (1 min) {load5:.2f} (5 min) on {os.cpu_count()} cores")
    if load1 > 1.0:
        log("warning: the machine is not idle; absolute numbers will be low and noisy, read the ratios")
    etcd: dict[tuple[str, str], dict[str, Any]] = {}
    ok = True
    if args.only in (None, "etcd"):
        ok = await bench_etcd(args, etcd) and ok
    if args.only in (None, "ours"):
        if args.nofsync:
            ok = await bench_ours(args, etcd, name="ours-nofsync", extra_config=NOFSYNC, failover=False) and ok
        plaintext: dict[str, dict[str, Any]] = {}
        ok = await bench_ours(args, etcd, plaintext=plaintext) and ok
        if args.tls:
            # The default deployment: client ports on TLS, every call authenticated and authorized.
            ok = (
                await bench_ours(args, etcd, name="ours-tls", failover=False, client_tls=True, plaintext=plaintext)
                and ok
            )
        if args.search_models:
            from bench.search_quality import bench_search_quality

            # In-process, no cluster: the labelled queries' recall@10 and MRR, and the index's
            # latency, rebuild time and size at ~100,000 versions, on both engines.
            # The LIKE fallback scans every model per query: one latency pass keeps it to ~2 minutes.
            for engine, passes in (("fts5", 3), ("like", 1)):
                for line in await bench_search_quality(args.search_models, [engine], passes):
                    emit(line)
        if args.gossip_sim:
            from bench import gossip_sim

            # CPU-only simulation (no cluster): SAPS against random and best-bottleneck matchings.
            # Its target verdict is reported in its own line, not turned into the exit status.
            await asyncio.to_thread(gossip_sim.main, [])
        if args.gossip_live:
            from bench import gossip_live

            # Its own cluster; the exit status says whether the accuracy target held.
            ok = await asyncio.to_thread(gossip_live.main, ["--rounds", "10" if args.quick else "30"]) == 0 and ok
        if args.ablation:
            from bench.ours import ABLATIONS

            for name, extra_config in ABLATIONS.items():
                ok = await bench_ours(args, etcd, name=name, extra_config=extra_config, failover=False) and ok
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short smoke run (2 s per scenario, 2 failovers)")
    p.add_argument("--only", choices=["etcd", "ours"], help="run one side only (no ratios without etcd)")
    p.add_argument("--duration", type=float, help="measured seconds per scenario (default 8, quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds (default 1, 2 for 64 clients; quick 0.5)")
    p.add_argument("--failover-reps", type=int, help="leader failover repetitions (default 10, quick 2)")
    p.add_argument(
        "--no-nofsync", dest="nofsync", action="store_false", help='skip our cluster with durability = "none"'
    )
    p.add_argument(
        "--no-tls", dest="tls", action="store_false", help="skip our cluster with TLS client ports (`ours-tls`)"
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also run our cluster with group commit off, and with pysyncobj's default periods",
    )
    p.add_argument(
        "--ours-calls",
        choices=["carried", "unary"],
        default="carried",
        help="how the generator calls our servers: on one Calls.Carry stream per server, as the asyncio "
        "SDK does (default), or a gRPC call each, as generated stubs and the blocking SDK do",
    )
    p.add_argument("--op-timeout", type=float, default=1.0, help="per-write deadline in the failover writer")
    p.add_argument(
        "--registry-versions",
        type=int,
        help="model versions registered before the search scenario (default 100000, quick 10000; 0 skips)",
    )
    p.add_argument(
        "--search-models",
        type=int,
        help="models in the search_quality catalogue (default 22222, ~100,000 versions; quick 2000; 0 skips)",
    )
    p.add_argument("--no-gossip-sim", dest="gossip_sim", action="store_false", help="skip the gossip simulation")
    p.add_argument(
        "--no-gossip-live", dest="gossip_live", action="store_false", help="skip the live 8-worker gossip run"
    )
    p.add_argument(
        "--agents", type=int, help="agents kept alive in the membership scenario (default 1000, quick 200; 0 skips)"
    )
    p.add_argument("--agents-hold", type=float, help="seconds the agents are measured (default 30, quick 10)")
    p.add_argument("--churn-seconds", type=float, help="seconds of join/leave churn (default 60, quick 10; 0 skips)")
    p.add_argument("--churn-rate", type=int, default=50, help="joins per second and leaves per second during churn")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.failover_reps is None:
        args.failover_reps = 2 if args.quick else 10
    if args.registry_versions is None:
        args.registry_versions = 10_000 if args.quick else 100_000
    if args.search_models is None:
        args.search_models = 2_000 if args.quick else 22_222
    if args.agents is None:
        args.agents = 200 if args.quick else 1000
    if args.agents_hold is None:
        args.agents_hold = 10.0 if args.quick else 30.0
    if args.churn_seconds is None:
        args.churn_seconds = 10.0 if args.quick else 60.0
    library_log = WORK_DIR / "bench-process.log"
    route_output(library_log)
    log(f"stdout: JSON lines only; in-process library logs (agents, workers): {library_log}")
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    finally:
        kill_all_children()


if __name__ == "__main__":
    sys.exit(main())
