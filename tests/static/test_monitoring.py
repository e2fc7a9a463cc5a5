"""The monitoring profile: Prometheus scrapes the API and every worker; Grafana shows the key metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.static.shipping import DEPLOY, argv, parse_conveyor, service
from tests.support.infra import Infra

pytestmark = pytest.mark.static

PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "conveyor.json"

# What the dashboard must show (the counters, the histogram, the HTTP and ledger metrics).
KEY_METRICS = {
    "conveyor_jobs_accepted_total",
    "conveyor_worker_jobs_started_total",
    "conveyor_worker_jobs_succeeded_total",
    "conveyor_worker_jobs_retried_total",
    "conveyor_worker_jobs_dead_total",
    "conveyor_worker_job_duration_seconds_bucket",
    "conveyor_http_requests_total",
    "conveyor_http_request_duration_seconds_bucket",
    "conveyor_jobs",
    "conveyor_outbox_backlog",
    "conveyor_queue_depth",
    "conveyor_dead_letter_depth",
}
METRIC_NAME = re.compile(r"\bconveyor_[a-z0-9_]+")


def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return loaded


KEY_FILE = "/etc/prometheus/secrets/conveyor.key"


def scrape(job_suffix: str) -> dict[str, Any]:
    (job,) = [job for job in prometheus()["scrape_configs"] if job["job_name"].endswith(job_suffix)]
    found: dict[str, Any] = job
    return found


def test_prometheus_scrapes_the_api_where_compose_serves_it() -> None:
    api = scrape("api")
    assert api.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for config in api["static_configs"] for t in config["targets"]]
    port = parse_conveyor(argv(service("api")["command"]))["port"]
    assert targets == [f"api:{port}"]


def test_prometheus_scrapes_every_worker_replica_on_the_exporter_port() -> None:
    worker = scrape("worker")
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = worker["dns_sd_configs"]
    assert discovery["names"] == ["worker"], "the compose service name resolves to every replica"
    assert discovery["type"] == "A"
    assert discovery["port"] == Settings.model_fields["worker_metrics_port"].default == 9191


def test_prometheus_scrapes_every_relay_replica_on_its_exporter_port() -> None:
    relay = scrape("relay")
    (discovery,) = relay["dns_sd_configs"]
    assert discovery["names"] == ["relay"]
    assert discovery["port"] == Settings.model_fields["relay_metrics_port"].default == 9192
    assert "9192" in service("relay")["expose"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # promtool opens the key file the API job names; here it is a stand-in in a temporary place.
    key = tmp_path / "conveyor.key"
    key.write_text("cvk_stand-in\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.read_text().replace(KEY_FILE, str(key)))
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_the_api_with_a_bearer_key_from_the_mounted_secrets() -> None:
    api = scrape("api")
    assert api["authorization"] == {"type": "Bearer", "credentials_file": KEY_FILE}
    mounts = [str(volume) for volume in service("prometheus")["volumes"]]
    assert "./deploy/prometheus/secrets:/etc/prometheus/secrets:ro" in mounts


def test_grafana_reads_prometheus_through_the_datasource_the_dashboard_names() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    uids = {
        target["datasource"]["uid"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {source["uid"]}


def test_grafana_loads_dashboards_from_where_compose_mounts_them() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "conveyor.yml").read_text())
    (provider,) = provisioned["providers"]
    mounts = {
        str(v).split(":")[1]: str(v).split(":")[0] for v in service("grafana")["volumes"] if ":" in str(v)
    }
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_charts_every_key_metric() -> None:
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used >= KEY_METRICS, KEY_METRICS - used


def test_every_dashboard_panel_has_a_unique_id_and_a_title() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert all(panel["title"] for panel in panels)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"conveyor:dashboard_query_{n}", "expr": expr}
                    for n, expr in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.mark.integration
def test_every_metric_the_dashboard_queries_is_one_conveyor_exports(infra: Infra) -> None:
    from prometheus_client import REGISTRY

    import app.api.metrics
    import app.execution.metrics  # the worker's exporter serves these

    families = [*REGISTRY.collect(), *app.api.metrics.STATE.collect()]
    exported = {
        family.name + suffix for family in families for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))
    }
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used <= exported, used - exported
