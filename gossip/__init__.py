"""The gossip layer: peer selection, averaging arithmetic, bandwidth estimation, the exchange, and the
coordination of rounds through the cluster.

- ``gossip.matching``: who exchanges with whom each round (SAPS, random, exact best bottleneck).
- ``gossip.mixing``: what an exchange does to the parameters, and the checksummed byte layout.
- ``gossip.bandwidth``: per-link throughput/latency estimates and the probe schedule.
- ``gossip.simulate``: a CPU simulation comparing the selection policies (``python -m bench.gossip_sim``).
- ``gossip.exchange``: one round's exchange between two matched peers over gRPC streaming on the
  gossip port (chunked, checksummed, optionally sparsified).
- ``gossip.artifacts``: model artifact replication on the gossip port: a node's verified store, the
  chunk server, and the parallel, resumable fetch from the fastest holders (``docs/artifacts.md``).
- ``gossip.coordinator``: the leader's pure planning of each group's next round.
- ``gossip.worker``: :class:`Worker`, one node's side of a group for a training loop (``gossip.Worker``).
- ``gossip.sync``: :class:`SyncWorker` and :func:`connect`, the same Worker on an event loop of its own
  (a background thread), with a blocking ``step``, for synchronous training loops.
- ``gossip.torch``: PyTorch ``state_dict`` in and out (float tensors averaged, integer buffers kept);
  imports torch only when used, and nothing else in the package imports it.

``exchange``, ``artifacts``, ``worker`` and ``sync`` open sockets; the rest opens no socket, reads no clock and
touches no global random state; see DESIGN.md.
``gossip.Worker``, ``gossip.SyncWorker`` and ``gossip.connect`` are imported on first use, so the pure
modules stay free of the client's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossip.sync import SyncWorker, connect
    from gossip.worker import RoundStats, Worker

__all__ = ["RoundStats", "SyncWorker", "Worker", "connect"]


def __getattr__(name: str) -> Any:
    if name in ("SyncWorker", "connect"):
        from gossip import sync

        return getattr(sync, name)
    if name in __all__:
        from gossip import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'gossip' has no attribute {name!r}")
