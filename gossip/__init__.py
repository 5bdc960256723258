"""The gossip layer's pure core: peer selection, averaging arithmetic, bandwidth estimation.

- ``gossip.matching``: who exchanges with whom each round (SAPS, random, exact best bottleneck).
- ``gossip.mixing``: what an exchange does to the parameters, and the checksummed byte layout.
- ``gossip.bandwidth``: per-link throughput/latency estimates and the probe schedule.
- ``gossip.simulate``: a CPU simulation comparing the selection policies (``python -m bench.gossip_sim``).

Nothing here opens a socket, reads a clock or touches global random state; see DESIGN.md.
"""
