"""One gossip worker in a process of its own, for tests that kill it: ``python gossip_worker_process.py
ENDPOINTS GROUP NODE_ID LEASE_TTL_S``. Credentials come from CP_CACERT/CP_CERT/CP_KEY. Trains (a fixed
update plus a little CPU work) and steps forever, printing ``round N`` after each training round."""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from controlplane.client import AsyncClient, Credentials
from gossip import Worker

PROBE_BYTES = (4 * 1024, 256 * 1024)  # the same as the test's other workers: a probe's two ends must agree


async def main(endpoints: str, group: str, node_id: str, lease_ttl_s: float) -> None:
    client = AsyncClient(endpoints, credentials=Credentials.from_env(), timeout=15)
    worker = Worker(client, group, node_id, round_timeout_s=3.0, lease_ttl_s=lease_ttl_s, probe_bytes=PROBE_BYTES)
    params = {"b": np.full(3, 7.0), "w": np.full((4, 3), 7.0)}
    await worker.start(params)
    print("started", flush=True)
    while True:
        params = {name: value + 0.5 for name, value in params.items()}  # "training"
        params = await worker.step(params)
        assert worker.last_round is not None
        print(f"round {worker.last_round.number}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
