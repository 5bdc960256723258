"""The gossip layer: peer selection, averaging arithmetic, bandwidth estimation, and the exchange.

- ``gossip.matching``: who exchanges with whom each round (SAPS, random, exact best bottleneck).
- ``gossip.mixing``: what an exchange does to the parameters, and the checksummed byte layout.
- ``gossip.bandwidth``: per-link throughput/latency estimates and the probe schedule.
- ``gossip.simulate``: a CPU simulation comparing the selection policies (``python -m bench.gossip_sim``).
- ``gossip.exchange``: one round's exchange between two matched peers over gRPC streaming on the
  gossip port (chunked, checksummed, optionally sparsified), the only module that opens sockets.

The rest opens no socket, reads no clock and touches no global random state; see DESIGN.md.
"""
