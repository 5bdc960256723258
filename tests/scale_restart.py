"""Restart-to-ready at scale: a measurement run by hand, not a test (no ``test_`` prefix; asserts nothing).

    .venv/bin/python -m tests.scale_restart --versions 100000            # about 2-4 minutes
    .venv/bin/python -m tests.scale_restart --versions 100000 --signal KILL --keep /tmp/scale

What it does, and what it reports (one JSON object on stdout):

1. starts a 3-server ``LocalCluster`` (controlplane/dev.py) in a fresh directory and waits for a leader;
2. registers ``--versions`` model versions through the SDK's ``models.bulk_register`` in batches of
   ``--batch`` (one log entry each), shaped like bench/registry.py (``--per-model`` versions per
   model, 5 by default: 100,000 versions = 20,000 models);
3. waits until every server answers a LINEARIZABLE search at or past the last registration's
   revision, and reads each server's resident memory before and after: ``bytes_per_version``;
4. stops one follower (SIGTERM by default, ``--signal KILL`` for kill -9), starts it again and times,
   from the moment its process is spawned:
   ``ready_s`` until ``Cluster.Status`` says ready, ``search_s`` until it answers a LINEARIZABLE
   search (on that server, not forwarded) that finds the last model at or past that revision,
   ``read_s`` until it answers a LINEARIZABLE ``get``, and ``index``: what the restarted server's
   log says about its search index, ``reused`` (caught up from the persisted index) or ``rebuilt``.
   The timing is bench/restart.py's, which `make bench` runs as ``registry_restart``.

Numbers depend on the machine and on what else runs on it: run it on a quiet machine and repeat.
Measured on the 2-core dev machine, quiet (load < 1), 100,000 versions, restarting a follower:

    before (3005c40)  SIGTERM 4.64-4.66 s, kill -9 4.54 s to a linearizable search; index rebuilt;
                      2,300-2,480 bytes of server memory per version (103 -> 323-339 MB)
    after             SIGTERM 3.08-3.57 s, kill -9 3.10 s; index reused (no rebuild);
                      755-940 bytes per version (103 -> 175-193 MB)

Under heavy load from other runs (load average 7-10) the same restart took 7.6-9.6 s before and
5.7-12 s after: most of what remains is the journal replay (applying every registration again,
84% of the samples in py-spy) and the interpreter start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import process_rss_bytes
from bench.restart import PROBE_KEY, poll, restart_and_time, search_finds
from controlplane.client import Client
from controlplane.dev import LocalCluster, NodeProcess

FAMILIES = ["llama", "qwen", "mistral", "phi", "gemma", "whisper", "falcon", "bloom", "café", "deepseek"]
SIZES = ["0.5B", "1B", "3B", "7B", "8B", "13B", "34B", "70B"]
VARIANTS = ["Instruct", "Chat", "Base", "Coder", "Vision", "Math"]


def model_name(index: int) -> str:
    family = FAMILIES[index % len(FAMILIES)]
    variant = VARIANTS[(index // len(FAMILIES)) % len(VARIANTS)]
    size = SIZES[(index // (len(FAMILIES) * len(VARIANTS))) % len(SIZES)]
    return f"{family.capitalize()}-{index % 9}-{size}-{variant}-{index}"


def catalogue(models: int, per_model: int, run: str) -> list[dict[str, Any]]:
    """``models`` x ``per_model`` versions, as mappings of ``Models.register``'s arguments."""
    out = []
    for index in range(models):
        family = FAMILIES[index % len(FAMILIES)]
        name = model_name(index)
        for version in range(per_model):
            out.append(
                {
                    "model": name,
                    "family": family,
                    "tags": ["chat", "code"] if index % 2 else ["vision"],
                    "description": f"{family} model number {index}",
                    "sha256": hashlib.sha256(f"{run}/{name}/{version}".encode()).hexdigest(),
                    "size_bytes": 1_000_000 + version,
                    "format": 1 + (index + version) % 5,
                    "status": "ready" if version % 2 else "pending",
                }
            )
    return out


def rss_bytes(node: NodeProcess) -> int:
    rss = process_rss_bytes(node.pid) if node.pid is not None else None
    if rss is None:
        raise RuntimeError(f"{node.id} is not running")
    return rss


def measure_restart(
    data_dir: Path,
    versions: int = 100_000,
    per_model: int = 5,
    batch: int = 1000,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run the measurement described in the module docstring in ``data_dir``; the figures as a dict."""
    models = max(1, versions // per_model)
    items = catalogue(models, per_model, run=data_dir.name)
    report: dict[str, Any] = {"versions": len(items), "models": models, "batch": batch, "signal": sig.name}
    with LocalCluster(data_dir, servers=3) as cluster:
        leader_id = cluster.wait_for_leader(60)
        before = {node.id: rss_bytes(node) for node in cluster.nodes.values()}
        started = time.monotonic()
        with Client(cluster.client_addresses, timeout=120, credentials=cluster.credentials) as client:
            revision = 0
            for start in range(0, len(items), batch):
                revision = max(revision, client.models.bulk_register(items[start : start + batch]).revision)
            revision = max(revision, client.put(PROBE_KEY, b"x").revision)
        report["register_s"] = round(time.monotonic() - started, 2)
        report["revision"] = revision
        for node in cluster.nodes.values():
            poll(search_finds(node, model_name(models - 1), revision), timeout, f"{node.id} indexed")
        after = {node.id: rss_bytes(node) for node in cluster.nodes.values()}
        report["rss_mb_before"] = {key: round(value / 2**20) for key, value in before.items()}
        report["rss_mb_after"] = {key: round(value / 2**20) for key, value in after.items()}
        report["bytes_per_version"] = {key: round((after[key] - before[key]) / len(items)) for key in after}

        victim = next(node for node in cluster.nodes.values() if node.id != leader_id)
        report["restarted"] = victim.id
        report.update(restart_and_time(cluster, victim.id, sig, model_name(models - 1), revision))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--per-model", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--signal", choices=["TERM", "KILL"], default="TERM")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
    if args.keep is not None:
        report = measure_restart(args.keep, args.versions, args.per_model, args.batch, sig)
    else:
        with tempfile.TemporaryDirectory(prefix="scale-restart-") as directory:
            report = measure_restart(Path(directory), args.versions, args.per_model, args.batch, sig)
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
