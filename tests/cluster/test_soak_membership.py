"""Membership at scale (`make soak`, about 3 minutes): 1,000 agents in this process, each with its own
client and lease, kept alive against a real 3-server cluster, then 50 joins and 50 leaves per second
for a minute. Afterwards no steady agent may have lost its lease or died, no election may have run,
and every server must list the same nodes.

Run it on a quiet machine: it measures whether the cluster keeps up, and a CPU-starved run can lose
leases for the same reason a real overloaded cluster would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.membership import bench_membership

from .conftest import started_cluster

pytestmark = [pytest.mark.soak, pytest.mark.cluster, pytest.mark.timeout(600)]


def test_a_thousand_agents_and_a_minute_of_churn(tmp_path: Path) -> None:
    with started_cluster(tmp_path / "cluster") as cluster:
        agents, churn = asyncio.run(bench_membership(cluster, agents=1000, hold_s=30, churn_s=60, churn_rate=50))
    assert agents["agents_active"] == 1000
    assert (agents["leases_lost"], agents["heartbeat_failures"], agents["elections"]) == (0, 0, 0)
    assert churn["errors"] == 0 and churn["consistent_across_servers"] and churn["live_set_as_expected"]
    assert (churn["steady_leases_lost"], churn["steady_agents_died"], churn["elections"]) == (0, 0, 0)
