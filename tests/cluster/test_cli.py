"""`cpctl` as a user runs it: real subprocesses against a real cluster, exit codes and JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.client import Client, ControlPlaneWarning
from controlplane.dev import LocalCluster

from .conftest import cpctl, cpctl_json

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_kv_round_trip_and_exit_codes(cluster: LocalCluster) -> None:
    put = cpctl_json(cluster, "kv", "put", "cli/greeting", "hello")
    got = cpctl_json(cluster, "kv", "get", "cli/greeting")
    assert got["found"] and got["kv"]["value"] == "hello" and got["kv"]["mod_revision"] == put["revision"]
    assert cpctl(cluster, "kv", "get", "cli/greeting").stdout == "hello\n"

    missing = cpctl(cluster, "kv", "get", "cli/missing")
    assert missing.returncode == 1 and "not found" in missing.stderr

    lost = cpctl(cluster, "kv", "cas", "cli/greeting", "bye", "--expected-revision", str(put["revision"] - 1))
    assert lost.returncode == 1 and "not swapped" in lost.stderr
    won = cpctl_json(cluster, "kv", "cas", "cli/greeting", "bye", "--expected-revision", str(put["revision"]))
    assert won["succeeded"]

    listed = cpctl_json(cluster, "kv", "list", "cli/")
    assert [kv["key"] for kv in listed["kvs"]] == ["cli/greeting"] and listed["kvs"][0]["value"] == "bye"

    bad = cpctl(cluster, "kv", "put", "", "x")
    assert bad.returncode == 2 and "key must not be empty" in bad.stderr and "Traceback" not in bad.stderr

    deleted = cpctl_json(cluster, "kv", "delete", "cli/greeting")
    assert deleted["deleted"]


@pytest.mark.parametrize(
    "args",
    [
        ("models", "search", "x", "--limit", "-1"),
        ("models", "replica", "cli-no-model", "99999999999", "n1"),
        ("networks", "create", "cli-net", "--model", "m", "--max-clients", "-1"),
        ("ports", "allocate", "cli-svc", "-H", "h1", "--preferred", "-5"),
        ("ports", "history", "cli-svc", "--after-revision", "-3"),
        ("kv", "list", "cli/", "--limit", "-1"),
        ("models", "register", "cli-m", "--sha256", "a" * 64, "--size", "-1", "--format", "gguf"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_number_out_of_its_range_is_a_usage_error(cluster: LocalCluster, args: tuple[str, ...]) -> None:
    """Negative or oversized numbers for unsigned fields: exit 2 and a message, never a traceback."""
    bad = cpctl(cluster, *args)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr and ("0 or more" in bad.stderr or "must fit" in bad.stderr), bad.stderr


def test_watch_prints_changes_as_json_lines(cluster: LocalCluster) -> None:
    first = cpctl_json(cluster, "kv", "put", "cli-watch/a", "1")
    cpctl_json(cluster, "kv", "put", "cli-watch/b", "2")
    done = cpctl(cluster, "kv", "watch", "cli-watch/", "--from-revision", str(first["revision"]), "--count", "2",
                 "--output", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["key"], line["type"], line["kv"]["value"]) for line in lines] == [
        ("cli-watch/a", "PUT", "1"),
        ("cli-watch/b", "PUT", "2"),
    ]


def test_cluster_status_members_and_snapshot(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    # Its own cluster: a restore resets the watch history, which other tests on the shared one use.
    cluster = make_cluster()
    current = cpctl_json(cluster, "cluster", "status")
    assert current["leader_id"] in cluster.nodes and current["has_quorum"]
    members = cpctl_json(cluster, "cluster", "members", "list")
    assert sorted(member["id"] for member in members) == sorted(cluster.nodes)
    assert all(member["healthy"] for member in members)

    cpctl_json(cluster, "kv", "put", "cli-backup/k", "before")
    backup = tmp_path / "backup.snap"
    saved = cpctl_json(cluster, "cluster", "snapshot", "save", str(backup))
    assert backup.stat().st_size == saved["size"]
    cpctl_json(cluster, "kv", "put", "cli-backup/k", "after")
    # Destructive commands need --yes when nobody is at a terminal to ask; refused, they change nothing.
    unconfirmed = cpctl(cluster, "cluster", "snapshot", "restore", str(backup))
    assert unconfirmed.returncode == 2 and "without --yes" in unconfirmed.stderr, unconfirmed.stderr
    assert cpctl_json(cluster, "kv", "get", "cli-backup/k")["kv"]["value"] == "after"
    unconfirmed = cpctl(cluster, "cluster", "members", "remove", current["leader_id"])
    assert unconfirmed.returncode == 2 and "without --yes" in unconfirmed.stderr, unconfirmed.stderr
    assert len(cpctl_json(cluster, "cluster", "members", "list")) == len(cluster.nodes)
    restored = cpctl_json(cluster, "cluster", "snapshot", "restore", str(backup), "--yes")
    assert restored["revision"] > saved["revision"]
    assert cpctl_json(cluster, "kv", "get", "cli-backup/k")["kv"]["value"] == "before"


def test_a_network_for_a_model_not_registered_is_created_with_a_warning(cluster: LocalCluster) -> None:
    with Client(cluster.client_addresses, credentials=cluster.credentials) as admin:
        admin.membership.set_flag("multi_network", True)  # the shared cluster holds other tests' networks
        with pytest.warns(ControlPlaneWarning, match="model 'cli-unregistered' is not registered"):
            admin.membership.create_network("cli-warned-sdk", "cli-unregistered", 2)
    created = cpctl(cluster, "networks", "create", "cli-warned", "--model", "cli-unregistered", "--max-clients", "2")
    assert created.returncode == 0, created.stderr
    assert "warning: model 'cli-unregistered' is not registered (yet)" in created.stderr
    assert "Traceback" not in created.stderr and "UserWarning" not in created.stderr
