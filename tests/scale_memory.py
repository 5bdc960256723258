"""Bytes per model version held by the state machine, in-process: a measurement run by hand, not a test.

    .venv/bin/python -m tests.scale_memory                        # 100,000 versions, bulk batches of 1,000
    .venv/bin/python -m tests.scale_memory --versions 20000
    .venv/bin/python -m tests.scale_memory --single               # one RegisterVersion per command

Registers ``--versions`` versions (``--per-model`` per model, shaped like bench/registry.py) into a
fresh ``StateMachine``, one log entry per batch, each command with a request id (as the servers
apply them: the dedupe table remembers every result), and reports the growth of the process's
resident memory per version, after a garbage collection and ``malloc_trim`` (so freed memory is not
counted). Then the same for a machine restored from that machine's snapshot (how a restarted
server holds it). Also the apply, snapshot and restore times. tracemalloc would miss most of it:
protobuf messages live in upb's arenas, outside Python's allocator.

Each invocation measures once, in its own fresh process. Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import sys
import time
from typing import Any

from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import command_pb2, models_pb2

FAMILIES = ["llama", "qwen", "mistral", "phi", "gemma", "whisper", "falcon", "bloom", "café", "deepseek"]


def rss_bytes() -> int:
    """Resident memory after a full collection and giving freed heap back to the system."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def registration(index: int, per_model: int) -> models_pb2.RegisterVersionRequest:
    model, version = divmod(index, per_model)
    family = FAMILIES[model % len(FAMILIES)]
    return models_pb2.RegisterVersionRequest(
        model=f"{family.capitalize()}-{model % 9}-7B-Instruct-{model}",
        draft=models_pb2.ModelDraft(family=family, tags=["chat", "code"], description=f"{family} instruct model"),
        sha256=hashlib.sha256(f"{model}/{version}".encode()).hexdigest(),
        size_bytes=1_000_000 + version,
        format=1 + (model + version) % 5,  # type: ignore[arg-type]
        status=2 if version % 2 else 1,  # type: ignore[arg-type]
    )


def entry(start: int, count: int, per_model: int, single: bool) -> bytes:
    """One log entry: ``count`` registrations from ``start``, as one bulk command or one command each."""
    if single:
        commands = [
            command_pb2.Command(request_id=f"r-{i}", model_register=registration(i, per_model))
            for i in range(start, start + count)
        ]
    else:
        bulk = models_pb2.BulkRegisterRequest(
            versions=[registration(i, per_model) for i in range(start, start + count)]
        )
        commands = [command_pb2.Command(request_id=f"bulk-{start}", model_bulk_register=bulk)]
    return batch_entry(1_700_000_000_000 + start, "n1", commands)


def measure(versions: int, per_model: int = 5, batch: int = 1000, single: bool = False) -> dict[str, Any]:
    """The figures for one configuration, measured in this process (start from a fresh one)."""
    before = rss_bytes()
    machine = StateMachine()
    started = time.perf_counter()
    for start in range(0, versions, batch):
        # Entries are made one at a time, so only the machine's state stays behind.
        results = machine.apply_entry(entry(start, min(batch, versions - start), per_model, single))
        assert not results[0].HasField("error"), results[0].error
        del results
    apply_s = time.perf_counter() - started
    applied = rss_bytes() - before
    started = time.perf_counter()
    snapshot = machine.snapshot()
    snapshot_s = time.perf_counter() - started
    del machine
    before = rss_bytes()
    restored = StateMachine()
    started = time.perf_counter()
    restored.restore(snapshot)
    restore_s = time.perf_counter() - started
    del snapshot
    held = rss_bytes() - before
    return {
        "versions": versions,
        "per_model": per_model,
        "commands": "single" if single else f"bulk of {batch}",
        "bytes_per_version": round(applied / versions),
        "bytes_per_version_restored": round(held / versions),
        "apply_us_per_version": round(apply_s / versions * 1e6, 1),
        "snapshot_s": round(snapshot_s, 2),
        "restore_s": round(restore_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--per-model", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", action="store_true", help="one RegisterVersion command per version")
    args = parser.parse_args(argv)
    batch = 100 if args.single and args.batch == 1000 else args.batch
    json.dump(measure(args.versions, args.per_model, batch, args.single), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
