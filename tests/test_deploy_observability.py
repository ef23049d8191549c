"""The Grafana dashboard and the Prometheus scrape configuration: every query parses as PromQL, names only metrics
the service exposes, uses rate() on counters only and histogram_quantile() on buckets with `le` kept, filters and
groups by labels those metrics have; the scrape targets are the API's port and Service in deploy/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser as pp
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/sdpo-dashboard.json"

# What the API's /metrics exposes (service/metrics.py): name as scraped -> (type, {label: allowed values}).
SERVICE_METRICS: dict[str, tuple[str, dict[str, set[str]]]] = {
    "sdpo_jobs": ("gauge", {"status": {"queued", "running", "succeeded", "exhausted", "failed", "cancelled"}}),
    "sdpo_jobs_finished_total": ("counter", {"status": {"succeeded", "exhausted", "failed", "cancelled"}}),
    "sdpo_attempts_total": ("counter", {}),
    "sdpo_attempts_per_second": ("gauge", {}),
    "sdpo_verifier_outcomes_total": ("counter", {"outcome": {"solved", "rejected", "error", "timeout", "not_run"}}),
    "sdpo_step_seconds": ("histogram", {}),
    "sdpo_queue_depth": ("gauge", {}),
    "sdpo_queue_pending": ("gauge", {}),
    "sdpo_workers": ("gauge", {}),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance", "pod"}


def series() -> dict[str, tuple[str, str, dict[str, set[str]]]]:
    """Every series name a query may select -> (family, kind of series, labels)."""
    names = {}
    for family, (kind, labels) in SERVICE_METRICS.items():
        if kind == "histogram":
            names[f"{family}_bucket"] = (family, "counter", {**labels, "le": set()})
            names[f"{family}_sum"] = (family, "counter", labels)
            names[f"{family}_count"] = (family, "counter", labels)
        else:
            names[family] = (family, kind, labels)
    return names


# ---- PromQL analysis ----------------------------------------------------------------------------------------------
def selectors(expr) -> list:
    found = []

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            found.append(node)

    pp.walk(expr, visit)
    return found


def problems(query: str) -> list[str]:
    """What is wrong with one dashboard query (an empty list when nothing is)."""
    try:
        expr = pp.parse(query)
    except ValueError as exc:
        return [f"not PromQL: {exc}"]
    known, issues = series(), []

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            if node.name not in known:
                issues.append(f"{node.name}: not a metric the service exposes")
                return
            labels = known[node.name][2]
            for matcher in node.matchers.matchers:
                if matcher.name not in labels and matcher.name not in TARGET_LABELS:
                    issues.append(f"{node.name} has no label {matcher.name}")
                elif matcher.op == pp.MatchOp.Equal and labels.get(matcher.name) and \
                        matcher.value not in labels[matcher.name]:
                    issues.append(f"{node.name}{{{matcher.name}}} is never {matcher.value!r}")
        elif isinstance(node, pp.Call) and node.func.name in ("rate", "irate", "increase"):
            for vs in selectors(node):
                if vs.name in known and known[vs.name][1] != "counter":
                    issues.append(f"{node.func.name}() over {vs.name}, a {known[vs.name][1]}")
        elif isinstance(node, pp.Call) and node.func.name == "histogram_quantile":
            inner = selectors(node.args[1])
            if not inner or not all(vs.name.endswith("_bucket") for vs in inner):
                issues.append("histogram_quantile() needs _bucket series")
            modifier = getattr(node.args[1], "modifier", None)
            if modifier is not None and modifier.type == pp.AggModifierType.By and "le" not in modifier.labels:
                issues.append("histogram_quantile() over an aggregation that drops `le`")
        elif isinstance(node, pp.AggregateExpr) and node.modifier is not None \
                and node.modifier.type == pp.AggModifierType.By:
            available = set().union(*(known[vs.name][2] for vs in selectors(node.expr) if vs.name in known))
            for label in set(node.modifier.labels) - available - TARGET_LABELS:
                issues.append(f"grouped by {label}, which its series do not have")

    pp.walk(expr, visit)
    return issues


@pytest.mark.parametrize(("query", "expected"), [
    ("max(rate(sdpo_attempts_total[5m]))", []),
    ("max(rate(sdpo_attempts_total[5m])", ["not PromQL"]),
    ("sdpo_attempts", ["sdpo_attempts: not a metric"]),
    ("rate(sdpo_queue_depth[5m])", ["rate() over sdpo_queue_depth, a gauge"]),
    ("histogram_quantile(0.9, max by (job) (rate(sdpo_step_seconds_bucket[5m])))", ["drops `le`"]),
    ('sdpo_verifier_outcomes_total{outcome="crashed"}', ["is never 'crashed'"]),
    ("max by (outcome) (sdpo_jobs)", ["grouped by outcome"]),
])
def test_the_query_checker_finds_each_kind_of_mistake(query, expected):
    found = problems(query)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found)), found


# ---- the dashboard ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_is_importable_grafana_json(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], f"{panel['title']}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_every_dashboard_query_is_valid_for_the_service_metrics(dashboard):
    failures = {f"{title}: {query}": problems(query) for title, query in queries(dashboard)}
    assert {k: v for k, v in failures.items() if v} == {}


def test_dashboard_covers_queue_attempts_latency_jobs_and_verifier_outcomes(dashboard):
    used = {vs.name for _, query in queries(dashboard) for vs in selectors(pp.parse(query))}
    families = {series()[name][0] for name in used}
    assert families == set(SERVICE_METRICS), f"metrics with no panel: {set(SERVICE_METRICS) - families}"
    by_title = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"]}
    assert "sdpo_queue_depth" in by_title["Queue depth"]
    assert "rate(sdpo_attempts_total" in by_title["Attempts per second"]
    assert "histogram_quantile" in by_title["Step latency"]
    assert "by (status) (sdpo_jobs)" in by_title["Jobs by status"]
    assert "by (outcome)" in by_title["Verifier outcomes"]


def test_replicas_reporting_the_same_numbers_are_not_added_up(dashboard):
    """Every API replica serves the service-wide numbers from Redis: summing across replicas would multiply them."""
    for title, query in queries(dashboard):
        assert not re.search(r"\bsum\s*(\(|by)", query), f"{title}: {query}"


def test_metric_list_matches_the_service_when_its_metrics_module_is_here():
    source = ROOT / "service/metrics.py"
    declared = re.findall(r'(Gauge|Counter|Histogram)MetricFamily\(\s*"(\w+)"', source.read_text()) \
        if source.is_file() else []
    if not declared:
        pytest.skip("service/metrics.py (the service branch) is not in this tree yet")
    exposed = {}
    for kind, name in declared:
        if kind == "Counter" and not name.endswith("_total"):
            name += "_total"  # prometheus_client appends it
        exposed[name] = kind.lower()
    assert exposed == {name: kind for name, (kind, _) in SERVICE_METRICS.items()}


# ---- Prometheus ----------------------------------------------------------------------------------------------------
def test_prometheus_scrapes_the_api_in_compose_and_kubernetes():
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    api_port = compose["services"]["api"]["ports"][0].rsplit(":", 1)[1]
    assert jobs["sdpo-compose"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    kubernetes = jobs["sdpo-kubernetes"]
    namespace = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())["namespace"]
    assert kubernetes["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    keep = {r["source_labels"][0]: r["regex"] for r in kubernetes["relabel_configs"] if r.get("action") == "keep"}
    service = next(d for d in yaml.safe_load_all((ROOT / "deploy/k8s/base/api.yaml").read_text())
                   if d["kind"] == "Service")
    assert keep["__meta_kubernetes_service_name"] == service["metadata"]["name"]
    assert keep["__meta_kubernetes_endpoint_port_name"] == service["spec"]["ports"][0]["name"]
