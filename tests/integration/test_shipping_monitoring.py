"""Prometheus' config and alert rules (promtool) and the Grafana dashboard and provisioning, the dashboard
against a live /metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer
from tests.integration.shipping_tools import (
    COMPOSE,
    DASHBOARD,
    DOCKER,
    run,
    tool,
)

# ------------------------------------------------------------------------------------- Prometheus, Grafana


def test_prometheus_config_passes_promtool() -> None:
    done = run([tool("promtool"), "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 rules found" in done.stdout + done.stderr  # rule_files resolved and the rules parsed
    job = next(j for j in yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
               if j["job_name"] == "tsm-api")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "10s"}]


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="tsm-api", instance="10.0.0.1:8000"}}'
        values: '0x12'
      - series: 'up{{job="tsm-api", instance="10.0.0.2:8000"}}'
        values: '1x12'
      - series: 'up{{job="tsm-api", instance="10.0.0.3:8000"}}'
        values: '1x12'
      - series: 'tsm_model_info{{job="tsm-api", instance="10.0.0.3:8000", model="m", version="1",
          backend="paddle", device="cpu", precision="fp32"}}'
        values: '1x12'
    alert_rule_test:
      - eval_time: 5m
        alertname: TsmReplicaDown
        exp_alerts: []
      - eval_time: 11m
        alertname: TsmReplicaDown
        exp_alerts:
          - exp_labels: {{severity: ticket, job: tsm-api, instance: "10.0.0.1:8000"}}
            exp_annotations: {{summary: "TSM replica 10.0.0.1:8000 has not answered /metrics for 10 minutes"}}
      - eval_time: 11m
        alertname: TsmNoReplicaUp
        exp_alerts: []
      - eval_time: 3m
        alertname: TsmNoModelLoaded
        exp_alerts: []
      - eval_time: 5m
        alertname: TsmNoModelLoaded
        exp_alerts:
          - exp_labels: {{severity: page, job: tsm-api, instance: "10.0.0.2:8000"}}
            exp_annotations:
              summary: "Replica 10.0.0.2:8000 serves no model version (its /readyz answers 503)"
  - interval: 1m
    input_series:  # every replica down
      - series: 'up{{job="tsm-api", instance="10.0.0.1:8000"}}'
        values: '0x6'
    alert_rule_test:
      - eval_time: 4m
        alertname: TsmNoReplicaUp
        exp_alerts:
          - exp_labels: {{severity: page}}
            exp_annotations: {{summary: "No TSM API replica answers /metrics: the service is down"}}
  - interval: 1m
    input_series:  # no replica at all: compose's DNS lists none, so no `up` series exists
      - series: 'up{{job="prometheus", instance="localhost:9090"}}'
        values: '1x6'
    alert_rule_test:
      - eval_time: 4m
        alertname: TsmNoReplicaUp
        exp_alerts:
          - exp_labels: {{severity: page, job: tsm-api}}
            exp_annotations: {{summary: "No TSM API replica answers /metrics: the service is down"}}
"""


def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    """promtool's rule unit tests: a replica down for 10 minutes is a ticket, none up (or none at all) pages, a
    replica without a model pages; a serving one raises nothing."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(DOCKER / "prometheus" / "alerts.yml"))))
    done = run([tool("promtool"), "test", "rules", str(tests)])
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics exposition can carry, from its families (labelled ones included)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("_count", "_sum", "_created", "")}
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_dashboard_queries_only_exported_metrics(server: LiveServer) -> None:
    with server.client() as http:
        live = http.get("/metrics")
    assert live.status_code == 200
    exported = exported_names(live.text)
    used = {m for expr in dashboard_exprs() for m in re.findall(r"\btsm_[a-z0-9_]+", expr)}
    assert used and used <= exported, f"dashboard queries metrics the service does not export: {used - exported}"
    for required in ("tsm_requests_total", "tsm_request_duration_seconds_bucket", "tsm_stage_duration_seconds_bucket",
                     "tsm_batch_size_bucket", "tsm_queue_depth", "tsm_model_info"):
        assert required in used, f"the dashboard has no panel on {required}"
    exprs = " ".join(dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(tsm_request_duration_seconds_bucket" in exprs


def test_grafana_provisioning_is_consistent() -> None:
    prov = DOCKER / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["url"] for s in sources] == ["http://prometheus:9090"]
    uid = sources[0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    refs = [p["datasource"] for p in dash["panels"] if "datasource" in p]
    refs += [t["datasource"] for p in dash["panels"] for t in p.get("targets", [])]
    assert refs and all(r == {"type": "prometheus", "uid": uid} for r in refs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]) and dash["uid"]
    provider = yaml.safe_load((prov / "dashboards" / "tsm.yml").read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
