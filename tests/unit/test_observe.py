"""The --observe stack's configuration: Prometheus's scrape jobs from the stack's
processes, and the standard variables that send every service's spans to Zipkin."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.zipkin.json import ZipkinExporter

from deploy.local.observe import Prometheus, Zipkin
from shared.observability.telemetry import OtelSettings, _exporter


def test_prometheus_scrapes_each_role_with_its_replicas_as_instances(tmp_path: Path) -> None:
    prometheus = Prometheus(
        tmp_path,
        {
            "ner-worker": ["http://127.0.0.1:9001/metrics", "http://127.0.0.1:9002/metrics"],
            "gateway": ["http://127.0.0.1:9000/metrics"],
        },
    )
    jobs = prometheus.config()["scrape_configs"]
    assert jobs == [
        {
            "job_name": "gateway",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["127.0.0.1:9000"]}],
        },
        {
            "job_name": "ner-worker",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["127.0.0.1:9001", "127.0.0.1:9002"]}],
        },
    ]
    assert prometheus.url == f"http://127.0.0.1:{prometheus.port}"


def test_services_export_to_zipkin_by_the_standard_variables(tmp_path: Path) -> None:
    zipkin = Zipkin(tmp_path)
    env = zipkin.exporter_env
    assert env == {
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"http://127.0.0.1:{zipkin.port}/api/v2/spans",
    }
    settings = OtelSettings(otel_traces_exporter=env["OTEL_TRACES_EXPORTER"])
    assert settings.exporter == "zipkin"  # no OTLP endpoint needed
    assert isinstance(_exporter(settings), ZipkinExporter)
