"""The alert rules and the dashboard in deploy/observability/ are valid and use only metric names
the code exports (a renamed metric must not leave an alert that can never fire)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import controlplane.server.metrics
import gateway.metrics

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)

# Series Prometheus records itself for every scrape target.
PROMETHEUS_SERIES = {"up"}
# What else an identifier in PromQL can be once strings, label matchers, ranges and groupings are gone.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "histogram_quantile",
    "abs", "absent", "ceil", "floor", "round", "clamp_min", "clamp_max", "time", "vector", "scalar",
    "label_replace", "label_join", "sort", "sort_desc", "changes", "resets",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "e", "inf", "nan",
}  # fmt: skip


def exported_series() -> set[str]:
    """Every series name the server and gateway modules register (imported above), with the
    suffixes Prometheus exposition gives counters and histograms."""
    assert controlplane.server.metrics.RAFT_TERM and gateway.metrics.REQUESTS  # registered on import
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: its identifiers, less PromQL's own words, label
    names (in matchers and groupings), strings, ranges and numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    identifiers = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", expr))
    return identifiers - PROMQL_WORDS


def test_metric_names_ignores_what_is_not_a_metric() -> None:
    expr = 'sum by (instance, le) (rate(a_seconds_bucket{job=~"$job", x="y z"}[5m])) / on() b > 0.5e3 and c'
    assert metric_names(expr) == {"a_seconds_bucket", "b", "c"}


def alert_expressions() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            assert found, f"variable {variable['name']}: expected label_values(SERIES, LABEL)"
            yield f"variable {variable['name']}", found.group(1)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_one_the_code_exports(source: str) -> None:
    exported = exported_series() | PROMETHEUS_SERIES
    expressions = list(alert_expressions() if source == "alerts" else dashboard_expressions())
    assert expressions
    unknown = {(where, name) for where, expr in expressions for name in metric_names(expr) if name not in exported}
    assert not unknown, f"metrics used in {source} that no code exports: {sorted(unknown)}"


def test_the_alerts_cover_what_an_operator_is_paged_for() -> None:
    alerts = dict(alert_expressions())
    for metric in (
        "controlplane_has_leader",  # no leader
        "controlplane_raft_commit_latency_seconds_bucket",  # high commit latency
        "controlplane_raft_peer_connected",  # a member down
        "controlplane_data_dir_available_bytes",  # disk almost full
        "controlplane_leases_expired_total",  # leases expiring in bulk
    ):
        assert any(metric in metric_names(expr) for expr in alerts.values()), metric
    assert any("up" in metric_names(expr) for expr in alerts.values())


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_alerts_fire_on_the_unit_test_series() -> None:
    """deploy/observability/alerts_test.yml: input series for which each alert must (not) fire."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
