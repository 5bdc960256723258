"""Gossip on shaped networks: ``python -m bench.gossip_net [--quick] [--policies saps,random,ring,allreduce]``.

Needs root (network namespaces, veth, ``tc``). Creates N namespaces on a bridge in the root namespace
(``bench/netns.py``), shapes every node's egress with HTB, starts one 3-server cluster in the root
namespace listening on the bridge address, and runs N worker *processes*, one per namespace, each
training its non-IID digits shard (a 64-1024-10 MLP, 614 KB of float64 parameters: the model size
the issue measured) and mixing through the shaped links. Removes everything it created on any exit
(Ctrl-C included); namespaces left by a killed run (``gnb<pid>...``) are removed at the next start.

Topologies (rates per direction):

- ``two_sites``: nodes 0..N/2-1 and N/2..N-1; 50 Mbit/s inside a site, 2 Mbit/s between;
- ``node_caps``: node i sends at most ``caps[i]`` Mbit/s in total (3 .. 100);
- ``pairwise``: every pair its own rate, log-uniform in [2, 100] Mbit/s (seeded).

Policies:

- any ``GroupConfig.policy`` (``saps``, ``random``, ``best_bottleneck``, and whatever the cluster
  accepts later): real ``gossip.Worker``\\ s, rounds planned and committed by the cluster, probe
  cycle included (the first training round waits for it);
- ``ring``: pairwise gossip on the fixed ring 0-1-...-N-1-0, its even edges one round and its odd
  edges the next (the two perfect matchings whose union is the ring), over the same exchange
  protocol (``gossip.exchange``) but scheduled by the workers themselves: no cluster rounds, no probes;
- ``allreduce``: the bandwidth-blind baseline: an exact average every round by a ring all-reduce
  (reduce-scatter then all-gather, 2(N-1) steps of M/N bytes to the successor in index order) over
  plain TCP between the namespaces. No cluster, no probes; every worker holds the average after each
  round (synchronous data-parallel SGD's communication pattern).

Per scenario one JSON line on stdout (logs on stderr), e.g.::

    {"scenario": "gossip_net", "topology": "two_sites", "policy": "saps", "target_accuracy": 0.9,
     "time_to_target_s": 31.2, "rounds_to_target": 14, "probe_s": 22.1, "round_p50_s": 0.41, ...}

- ``time_to_target_s``: from the moment every worker was registered and ready (t0) to the end of
  the first round after which the workers' mean test accuracy is >= the target; probe rounds
  included (they run before the first training round). null when not reached in ``--max-rounds``.
- ``round_p50_s``: median over training rounds 2.. of the time between consecutive rounds' ends
  (local training + gossip + coordination); ``probe_s``: the probe rounds' total duration.
- ``bytes_total``: payload bytes received by all workers, training and probes (``bytes_probe``);
  ``bytes_per_round``: per training round.

After the cluster policies of each topology, one ``gossip_net_bandwidth`` line compares the
estimate the coordinator plans with for every link (both ends' committed views combined by
``gossip.coordinator.bandwidth_matrix``) with the configured rate: ``max_error`` is the largest
|estimate / configured - 1| (goal: <= 0.2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import WORK_DIR, emit, log

DATA = WORK_DIR / "gossip_net"
GOSSIP_PORT = 7300
ALLREDUCE_PORT = 7400
TOPOLOGIES = ("two_sites", "node_caps", "pairwise")
BENCH_POLICIES = ("ring", "allreduce")  # scheduled by the workers; every other name is a cluster policy
DEFAULT_POLICIES = ("saps", "random", "ring", "allreduce")
CAPS_MBIT = (3, 5, 10, 20, 30, 50, 75, 100)

Params = dict[str, npt.NDArray[np.float64]]


# ---------------------------------------------------------------------------------------- topologies


def two_sites(n: int) -> dict[tuple[int, int], float]:
    half = n // 2
    return {(i, j): (50.0 if (i < half) == (j < half) else 2.0) for i in range(n) for j in range(i + 1, n)}


def pairwise(n: int, seed: int) -> dict[tuple[int, int], float]:
    rng = np.random.default_rng([seed, 0xB1])
    return {
        (i, j): float(round(math.exp(rng.uniform(math.log(2), math.log(100))), 1))
        for i in range(n)
        for j in range(i + 1, n)
    }


def caps(n: int) -> list[float]:
    return [float(CAPS_MBIT[i % len(CAPS_MBIT)]) for i in range(n)]


def configured_link_mbit(topology: str, n: int, seed: int) -> dict[tuple[int, int], float]:
    """The rate an exchange between i and j can reach, per pair: both directions run at once and an
    exchange ends when both arrived, so under node caps it is the smaller cap."""
    if topology == "two_sites":
        return two_sites(n)
    if topology == "pairwise":
        return pairwise(n, seed)
    c = caps(n)
    return {(i, j): min(c[i], c[j]) for i in range(n) for j in range(i + 1, n)}


# ---------------------------------------------------------------------------------------- model


def init_mlp(features: int, hidden: int, classes: int, seed: int) -> Params:
    rng = np.random.default_rng([seed, 0x3117])
    return {
        "w1": rng.normal(0.0, math.sqrt(2.0 / features), size=(features, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, math.sqrt(1.0 / hidden), size=(hidden, classes)),
        "b2": np.zeros(classes),
    }


def _forward(p: Params, x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    h = np.maximum(x @ p["w1"] + p["b1"], 0.0)
    return h, h @ p["w2"] + p["b2"]


def mlp_accuracy(p: Params, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(_forward(p, x)[1], axis=1) == y))


def local_sgd(
    p: Params, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64], steps: int, lr: float, rng: np.random.Generator
) -> Params:
    out = {k: v.copy() for k, v in p.items()}
    batch = min(16, len(y))
    for _ in range(steps):
        pick = rng.choice(len(y), size=batch, replace=False)
        xb, yb = x[pick], y[pick]
        h, z = _forward(out, xb)
        z -= z.max(axis=1, keepdims=True)
        g = np.exp(z)
        g /= g.sum(axis=1, keepdims=True)
        g[np.arange(len(yb)), yb] -= 1.0
        g /= len(yb)
        dh = (g @ out["w2"].T) * (h > 0)
        grads = {"w2": h.T @ g, "b2": g.sum(axis=0), "w1": xb.T @ dh, "b1": dh.sum(axis=0)}
        for k in sorted(out):
            out[k] -= lr * (grads[k] + 1e-4 * out[k])
    return out


# ---------------------------------------------------------------------------------------- worker process


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _allreduce_links(spec: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """(reader from the predecessor, writer to the successor) of the index-order ring."""
    i, n, addresses = spec["index"], spec["workers"], spec["addresses"]
    accepted: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not accepted.done():
            accepted.set_result(reader)

    server = await asyncio.start_server(on_connect, addresses[i], ALLREDUCE_PORT)
    successor = addresses[(i + 1) % n]
    deadline = time.monotonic() + 60
    while True:
        try:
            _, writer = await asyncio.open_connection(successor, ALLREDUCE_PORT)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # retry pacing: the successor's process may not listen yet
    reader = await asyncio.wait_for(accepted, 60)
    server.close()
    return reader, writer


async def _ring_allreduce(
    vec: npt.NDArray[np.float64], i: int, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[npt.NDArray[np.float64], int]:
    """The average of every worker's ``vec``; and the payload bytes received."""
    chunks = np.array_split(vec.copy(), n)
    received = 0

    async def step(send: int, recv: int, reduce: bool) -> None:
        nonlocal received
        payload = chunks[send].tobytes()
        writer.write(struct.pack("!I", len(payload)) + payload)
        (size,) = struct.unpack("!I", await reader.readexactly(4))
        data = np.frombuffer(await reader.readexactly(size), dtype=np.float64)
        await writer.drain()
        received += size
        chunks[recv] = chunks[recv] + data if reduce else data.copy()

    for s in range(n - 1):  # reduce-scatter: afterwards chunk (i + 1) % n holds the full sum
        await step((i - s) % n, (i - s - 1) % n, True)
    for s in range(n - 1):  # all-gather
        await step((i + 1 - s) % n, (i - s) % n, False)
    return np.concatenate(chunks) / n, received


def _flat(p: Params) -> npt.NDArray[np.float64]:
    return np.concatenate([p[k].ravel() for k in sorted(p)])


def _unflat(vec: npt.NDArray[np.float64], like: Params) -> Params:
    out, at = {}, 0
    for k in sorted(like):
        size = like[k].size
        out[k] = vec[at : at + size].reshape(like[k].shape)
        at += size
    return out


async def _worker(spec: dict[str, Any]) -> None:
    from gossip.examples.digits import Config, prepare

    i, n, policy = spec["index"], spec["workers"], spec["policy"]
    config = Config(workers=n, seed=spec["seed"])
    data, shards = prepare(config)
    x, y = data.x_train[shards[i]], data.y_train[shards[i]]
    params = init_mlp(data.x_train.shape[1], spec["hidden"], data.classes, spec["seed"])
    rng = np.random.default_rng([spec["seed"], i, 0x5D])
    # A worker's learning rate scaled by its shard size over the mean (see gossip/examples/digits.py).
    lr_scale = len(y) / (sum(len(s) for s in shards) / n)
    node = f"{spec['group']}-w{i:02d}"
    address = spec["addresses"][i]

    def lr_at(k: int) -> float:
        return spec["lr"] * lr_scale * 0.5 * (1.0 + math.cos(math.pi * min(k, spec["max_rounds"]) / spec["max_rounds"]))

    async def train(k: int) -> Params:
        return await asyncio.to_thread(local_sgd, params, x, y, spec["local_steps"], lr_at(k), rng)

    if policy == "allreduce":
        reader, writer = await _allreduce_links(spec)
        _say(event="started", t=time.time())
        for k in range(spec["max_rounds"]):
            params = await train(k)
            started = time.monotonic()
            vec, got = await _ring_allreduce(_flat(params), i, n, reader, writer)
            params = _unflat(vec, params)
            seconds = time.monotonic() - started
            _say(event="round", round=k + 1, t=time.time(), acc=mlp_accuracy(params, data.x_test, data.y_test),
                 bytes=got, seconds=seconds)  # fmt: skip
        return

    from gossip.exchange import ExchangeServer, exchange_or_keep

    if policy == "ring":
        server = ExchangeServer(node, f"{address}:{GOSSIP_PORT}")
        await server.start()
        try:
            _say(event="started", t=time.time())
            for k in range(spec["max_rounds"]):
                params = await train(k)
                # Round k pairs (j, j + 1) for j of k's parity: the ring's even edges, then its odd ones.
                j = i if i % 2 == k % 2 else i - 1
                partner = (j + 1) % n if j == i else j % n
                peer = f"{spec['group']}-w{partner:02d}"
                started = time.monotonic()
                result = await exchange_or_keep(
                    server,
                    peer,
                    f"{spec['addresses'][partner]}:{GOSSIP_PORT}" if node < peer else "",
                    spec["group"],
                    k + 1,
                    params,
                    seed=k + 1,
                    deadline_s=spec["round_timeout_s"],
                )
                params = result.params
                _say(event="round", round=k + 1, t=time.time(), acc=mlp_accuracy(params, data.x_test, data.y_test),
                     bytes=result.bytes_received, seconds=time.monotonic() - started, ok=result.ok)  # fmt: skip
        finally:
            await server.stop(0)
        return

    from controlplane.client import AsyncClient, Credentials
    from gossip.worker import Worker

    async with AsyncClient(spec["endpoints"], credentials=Credentials()) as client:
        worker = Worker(
            client,
            spec["group"],
            node,
            listen=f"{address}:{GOSSIP_PORT}",
            policy=policy,
            round_timeout_s=spec["round_timeout_s"],
            lease_ttl_s=30.0,
        )
        await worker.start(params)
        try:
            _say(event="started", t=time.time())
            for k in range(spec["max_rounds"]):
                params = await train(k)
                started = time.monotonic()
                params = await worker.step(params)
                last = worker.last_round
                _say(event="round", round=k + 1, t=time.time(), acc=mlp_accuracy(params, data.x_test, data.y_test),
                     bytes=last.bytes if last else 0, seconds=time.monotonic() - started,
                     ok=bool(last and last.ok), number=last.number if last else 0)  # fmt: skip
        finally:
            await worker.close()


def worker_main(spec_json: str) -> int:
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    spec = json.loads(spec_json)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await _worker(spec)

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------------------------------- the parent


@dataclass
class Scenario:
    topology: str
    policy: str
    workers: int
    group: str
    rounds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    started: list[float] = field(default_factory=list)
    reached: int | None = None
    failed: str | None = None


def _free_cluster_dir() -> Path:
    if DATA.exists():
        shutil.rmtree(DATA)
    DATA.mkdir(parents=True)
    return DATA


def bridge_cluster(host: str, root: Path) -> Any:
    """A LocalCluster whose client ports listen on ``host`` (the bridge), plaintext: the workers in
    the namespaces reach it there; the peer plane stays on loopback with its mutual TLS."""
    from dataclasses import replace

    from controlplane.dev import LocalCluster

    class BridgeCluster(LocalCluster):
        def _new_node(self, node_id: str, index: int, base_port: int | None) -> Any:
            node = super()._new_node(node_id, index, base_port)
            return replace(node, client_address=node.client_address.replace("127.0.0.1", host))

    # die_with_parent: a bench killed by SIGKILL takes its servers along (its namespaces go at the next start).
    return BridgeCluster(root, servers=3, log_level="warning", client_tls=False, die_with_parent=True)


async def run_scenario(net: Any, args: argparse.Namespace, topology: str, policy: str, endpoints: str) -> Scenario:
    n = args.workers
    group = f"{topology.replace('_', '')}-{policy.replace('_', '')}-{secrets.token_hex(2)}"
    scenario = Scenario(topology, policy, n, group)
    base = {
        "workers": n,
        "policy": policy,
        "group": group,
        "seed": args.seed,
        "hidden": args.hidden,
        "lr": args.lr,
        "local_steps": args.local_steps,
        "max_rounds": args.max_rounds,
        "round_timeout_s": args.round_timeout,
        "endpoints": endpoints,
        "addresses": [net.address(i) for i in range(n)],
    }
    logdir = DATA / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = asyncio.Event()

    async def follow(i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("event") == "started":
                scenario.started.append(msg["t"])
                if len(scenario.started) == n:
                    all_started.set()
            elif msg.get("event") == "round":
                records = scenario.rounds.setdefault(msg["round"], [])
                records.append(msg)
                if len(records) == n:
                    mean = statistics.fmean(r["acc"] for r in records)
                    log(f"{topology}/{policy} round {msg['round']:3d}: mean acc {mean:.4f}")
                    if scenario.reached is None and mean >= args.target:
                        scenario.reached = msg["round"]
                    if scenario.reached is not None or msg["round"] >= args.max_rounds:
                        done.set()
        code = await proc.wait()
        if code != 0 and not done.is_set():
            scenario.failed = f"worker {i} exited with {code} (log: {logdir / f'{group}-w{i}.log'})"
            done.set()

    all_started = asyncio.Event()
    cluster_policy = policy not in BENCH_POLICIES
    if cluster_policy:
        await create_paused_group(endpoints, group, policy, args)

    followers = []
    try:
        for i in range(n):
            stderr = open(logdir / f"{group}-w{i}.log", "w")  # noqa: SIM115 - closed with the process
            proc = await asyncio.create_subprocess_exec(
                *net.exec_prefix(i), sys.executable, "-m", "bench.gossip_net", "--worker",
                json.dumps({**base, "index": i}),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
            )  # fmt: skip
            stderr.close()
            procs.append(proc)
            followers.append(asyncio.create_task(follow(i, proc)))
        budget = args.round_timeout * (args.max_rounds + 20) + 120
        finished = asyncio.ensure_future(asyncio.gather(*followers, return_exceptions=True))
        signalled = asyncio.ensure_future(done.wait())
        if cluster_policy:
            # Round 1 waits for every worker: the group runs once all have started (or one has died).
            started = asyncio.ensure_future(all_started.wait())
            startup = 120 + 5 * n  # a worker's start: its imports, its data, its registration
            try:
                await asyncio.wait((started, finished, signalled), timeout=startup, return_when=asyncio.FIRST_COMPLETED)
            finally:
                started.cancel()
            if not all_started.is_set() and not done.is_set():
                scenario.failed = f"{n - len(scenario.started)} of {n} workers did not start within {startup} s"
                done.set()
            try:
                await unpause_group(endpoints, group, n)
            except Exception as exc:  # the cluster's answer, kept in the line rather than raised
                scenario.failed = scenario.failed or f"unpausing the group failed: {exc}"
                done.set()
        try:
            await asyncio.wait_for(asyncio.wait((finished, signalled), return_when=asyncio.FIRST_COMPLETED), budget)
        except TimeoutError:
            scenario.failed = f"no result within {budget:.0f} s"
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in (*followers, signalled):
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return scenario


async def create_paused_group(endpoints: str, group: str, policy: str, args: argparse.Namespace) -> None:
    """The scenario's group, created paused with the floor of 2 participants (the tolerant setting:
    a worker that crashes costs a round, and the others train on), before any worker starts; the
    workers' own settings then leave it as it is. Its spec is the workers' model's."""
    from controlplane.client import AsyncClient, Credentials
    from gossip.examples.digits import Config, prepare

    data, _shards = prepare(Config(workers=args.workers, seed=args.seed))
    params = init_mlp(data.x_train.shape[1], args.hidden, data.classes, args.seed)
    tensors = [(name, value.dtype.name, value.shape) for name, value in sorted(params.items())]
    async with AsyncClient(endpoints, credentials=Credentials()) as client:
        await client.gossip.configure_group(
            group,
            tensors,
            policy=policy,
            round_timeout_s=args.round_timeout,
            min_participants=2,
            seed=args.seed,
            paused=True,
        )


async def unpause_group(endpoints: str, group: str, workers: int) -> None:
    """Run the group once every worker beats (ACTIVE, not only started): round 1 has them all."""
    from controlplane.client import AsyncClient, Credentials
    from gossip.worker import wait_for_members

    async with AsyncClient(endpoints, credentials=Credentials()) as client:
        active = await wait_for_members(client, group, workers)
        if active < workers:
            log(f"gossip_net: only {active} of {workers} workers active in {group}; unpausing anyway")
        await client.gossip.update_group(group, paused=False)


async def cluster_rounds(endpoints: str, group: str) -> list[Any]:
    from controlplane.client import AsyncClient, Credentials

    async with AsyncClient(endpoints, credentials=Credentials()) as client:
        out: list[Any] = []
        after = 0
        while True:
            batch = await client.gossip.rounds(group, after=after, limit=100)
            out.extend(batch)
            if len(batch) < 100:
                return out
            after = batch[-1].number


def summarise(scenario: Scenario, args: argparse.Namespace, committed: Sequence[Any]) -> dict[str, Any]:
    n = scenario.workers
    complete = [k for k in sorted(scenario.rounds) if len(scenario.rounds[k]) == n]
    ends = {k: max(r["t"] for r in scenario.rounds[k]) for k in complete}
    t0 = max(scenario.started) if len(scenario.started) == n else None
    gaps = sorted(ends[k] - ends[k - 1] for k in complete if k - 1 in ends)
    probes = [r for r in committed if r.probe]
    probe_s = sum(r.duration_s or 0.0 for r in probes)
    bytes_train = sum(r["bytes"] for k in complete for r in scenario.rounds[k])
    bytes_probe = sum(r.bytes_total for r in probes)
    reached = scenario.reached
    line: dict[str, Any] = {
        "scenario": "gossip_net",
        "topology": scenario.topology,
        "policy": scenario.policy,
        "workers": n,
        "target_accuracy": args.target,
        "time_to_target_s": round(ends[reached] - t0, 2) if reached is not None and t0 is not None else None,
        "rounds_to_target": reached,
        "rounds": len(complete),
        "round_p50_s": round(statistics.median(gaps), 3) if gaps else None,
        "first_round_s": round(ends[complete[0]] - t0, 2) if complete and t0 is not None else None,
        "probe_s": round(probe_s, 2),
        "probe_rounds": len(probes),
        "bytes_total": bytes_train + bytes_probe,
        "bytes_probe": bytes_probe,
        "bytes_per_round": round(bytes_train / len(complete)) if complete else 0,
        "final_mean_accuracy": round(statistics.fmean(r["acc"] for r in scenario.rounds[complete[-1]]), 4)
        if complete
        else None,
        "failed_exchanges": sum(1 for k in complete for r in scenario.rounds[k] if r.get("ok") is False),
        "model_bytes": args.hidden * 64 * 8 + args.hidden * 8 + args.hidden * 10 * 8 + 10 * 8,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if scenario.failed:
        line["error"] = scenario.failed
    return line


async def bandwidth_line(
    endpoints: str, topology: str, groups: Sequence[str], configured: dict[tuple[int, int], float]
) -> dict[str, Any]:
    """The ``gossip_net_bandwidth`` line: per link of ``groups``, the configured rate (Mbit/s per pair
    of worker indices) next to the estimate the coordinator plans with."""
    from controlplane.client import AsyncClient, Credentials
    from controlplane.v1 import gossip_pb2
    from gossip.coordinator import bandwidth_matrix

    links = []
    async with AsyncClient(endpoints, credentials=Credentials()) as client:
        matrix = await client.gossip.bandwidth()
    for group in groups:
        for link in matrix.links:
            if not (link.a.startswith(group + "-w") and link.b.startswith(group + "-w")):
                continue
            i, j = sorted((int(link.a[-2:]), int(link.b[-2:])))
            want = configured[(i, j)] * 1e6 / 8
            fields = ("a", "b", "bandwidth_bps", "bandwidth_a_bps", "bandwidth_b_bps", "failures")
            committed = gossip_pb2.Link(**{f: getattr(link, f) for f in fields})
            # What the coordinator plans with; a link never measured (failed) has no estimate.
            planned = float(bandwidth_matrix([link.a, link.b], [committed])[0, 1]) if link.bandwidth_bps > 0 else 0.0
            links.append(
                {
                    "group": group,
                    "link": [i, j],
                    "configured_mbit": configured[(i, j)],
                    "estimate_mbit": round(planned * 8 / 1e6, 2),
                    "views_mbit": [round(link.bandwidth_a_bps * 8 / 1e6, 2), round(link.bandwidth_b_bps * 8 / 1e6, 2)],
                    "error": round(planned / want - 1, 3),
                }
            )
    errors = [abs(x["error"]) for x in links]
    return {
        "scenario": "gossip_net_bandwidth",
        "topology": topology,
        "links": len(links),
        "max_error": round(max(errors), 3) if errors else None,
        "mean_abs_error": round(statistics.fmean(errors), 3) if errors else None,
        "within_20pct": sum(1 for e in errors if e <= 0.2),
        "per_link": links,
    }


async def run_all(args: argparse.Namespace) -> int:
    from bench.netns import ShapedNet

    # SIGTERM (and SIGINT, below) cancel the run: the finally blocks stop the workers and the
    # cluster and remove the namespaces. Restored defaults: a shell's background job inherits SIGINT ignored.
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    status = 0
    with ShapedNet(args.workers) as net:
        log(f"gossip_net: {args.workers} namespaces {net.prefix}-w*, bridge {net.bridge} ({net.host_address})")
        cluster = bridge_cluster(net.host_address, _free_cluster_dir() / "cluster")
        try:
            cluster.start()
            cluster.wait_for_leader(60)
            endpoints = cluster.endpoints
            log(f"gossip_net: cluster up at {endpoints}")
            for topology in args.topologies:
                if topology == "two_sites":
                    net.shape_pairs(two_sites(args.workers))
                elif topology == "pairwise":
                    net.shape_pairs(pairwise(args.workers, args.seed))
                else:
                    net.shape_caps(caps(args.workers))
                groups = []
                for policy in args.policies:
                    log(f"gossip_net: {topology} / {policy}")
                    scenario = await run_scenario(net, args, topology, policy, endpoints)
                    group = scenario.group
                    committed = await cluster_rounds(endpoints, group) if policy not in BENCH_POLICIES else []
                    if policy not in BENCH_POLICIES:
                        groups.append(group)
                    line = summarise(scenario, args, committed)
                    emit(line)
                    status |= 1 if scenario.failed else 0
                if groups:
                    configured = configured_link_mbit(topology, args.workers, args.seed)
                    emit(await bandwidth_line(endpoints, topology, groups, configured))
        finally:
            cluster.stop()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_net", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one worker process's spec (JSON)
    parser.add_argument("--quick", action="store_true", help="one topology (two_sites), fewer rounds, lower target")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--topologies", default=",".join(TOPOLOGIES), help=f"comma-separated of {', '.join(TOPOLOGIES)}"
    )
    parser.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help="comma-separated: ring, allreduce, or any GroupConfig.policy the cluster accepts (saps, random, ...)",
    )
    parser.add_argument("--target", type=float, default=None, help="mean test accuracy (default 0.95; --quick 0.9)")
    parser.add_argument("--max-rounds", type=int, default=None, help="rounds per scenario (default 30; --quick 15)")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP hidden units (1024: 614 KB of parameters)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--round-timeout", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.quick:
        args.topologies = "two_sites" if args.topologies == ",".join(TOPOLOGIES) else args.topologies
    args.target = args.target if args.target is not None else (0.9 if args.quick else 0.95)
    args.max_rounds = args.max_rounds if args.max_rounds is not None else (15 if args.quick else 30)
    args.topologies = [t for t in args.topologies.split(",") if t]
    args.policies = [p for p in args.policies.split(",") if p]
    unknown = [t for t in args.topologies if t not in TOPOLOGIES]
    if unknown:
        parser.error(f"unknown topology {unknown[0]!r}: choose from {', '.join(TOPOLOGIES)}")
    if args.workers < 2 or args.workers > 50:
        parser.error("--workers must be in 2..50")
    from bench.netns import netns_unavailable

    problem = netns_unavailable()
    if problem:
        print(f"gossip_net: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_all(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("gossip_net: interrupted; workers and cluster stopped, namespaces removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
