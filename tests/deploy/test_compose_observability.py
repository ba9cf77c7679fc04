"""Observability wiring of the compose stack, checked by parsing the files (no Docker needed).

docker-compose.yml, deploy/observability/otel-collector.yaml and prometheus.yml must agree:
every project process exports traces to the collector and is scraped by Prometheus, the
collector's pipeline only names components it defines, and every image is pinned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.deployment import compose_environment

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR_CONFIG = ROOT / "deploy" / "observability" / "otel-collector.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "observability" / "prometheus.yml"
PROJECT_IMAGE_PREFIX = "nlp-platform/"
COLLECTOR_IMAGE_PREFIX = "otel/opentelemetry-collector"
PROMETHEUS_IMAGE_PREFIX = "prom/prometheus"

Services = dict[str, dict[str, Any]]


def load_mapping(path: Path) -> dict[str, Any]:
    # safe_load resolves anchors and `<<` merge keys.
    data: object = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return {str(key): value for key, value in data.items()}


def mapping(value: object, where: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{where}: not a mapping"
    return {str(key): item for key, item in value.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition; the list form means service_started."""
    raw: object = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(name): "service_started" for name in raw}
    return {
        name: str(mapping(spec or {}, name).get("condition", "service_started"))
        for name, spec in mapping(raw, "depends_on").items()
    }


def image_of(service: dict[str, Any]) -> str:
    return str(service.get("image", ""))


def host_port(address: str) -> tuple[str, int]:
    """`host:port` or `scheme://host:port[/path]` -> (host, port)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname is not None, f"no host in {address!r}"
    assert parts.port is not None, f"no port in {address!r}"
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def services() -> Services:
    raw = load_mapping(COMPOSE).get("services")
    return {name: mapping(spec, name) for name, spec in mapping(raw, "services").items()}


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_mapping(COLLECTOR_CONFIG)


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_mapping(PROMETHEUS_CONFIG)


def project_services(services: Services) -> Services:
    """Services running this project's code: built here or tagged with the project's name."""
    return {
        name: spec
        for name, spec in services.items()
        if "build" in spec or image_of(spec).startswith(PROJECT_IMAGE_PREFIX)
    }


def one_shot(services: Services) -> set[str]:
    """Services another one waits on to exit successfully (jobs, not servers)."""
    return {
        dep
        for spec in services.values()
        for dep, condition in depends_on(spec).items()
        if condition == "service_completed_successfully"
    }


def long_running(services: Services) -> Services:
    jobs = one_shot(services)
    return {name: spec for name, spec in project_services(services).items() if name not in jobs}


def service_with_image(services: Services, prefix: str) -> str:
    names = [name for name, spec in services.items() if image_of(spec).startswith(prefix)]
    assert len(names) == 1, f"expected one service with image {prefix}*, got {names}"
    return names[0]


def mounted_source(service: dict[str, Any], target_file: Path) -> str:
    """The container path where a service mounts target_file (short or long volume syntax)."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume.get("target", ""))
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.partition(":")[0]
        if source.startswith(".") and (ROOT / source).resolve() == target_file.resolve():
            return target
    raise AssertionError(f"{target_file.relative_to(ROOT)} is not mounted")


def collector_grpc_port(collector: dict[str, Any]) -> int:
    receivers = mapping(collector.get("receivers"), "receivers")
    protocols = mapping(mapping(receivers.get("otlp"), "otlp").get("protocols"), "protocols")
    endpoint = str(mapping(protocols.get("grpc"), "otlp grpc").get("endpoint", ""))
    host, port = host_port(endpoint)
    # The receivers' default host is localhost: other containers could not reach it.
    assert host not in {"localhost", "127.0.0.1", "::1"}, f"OTLP gRPC bound to {host}"
    return port


def scrape_targets(prometheus: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) of every static and DNS-discovered target whose path is /metrics."""
    targets: set[tuple[str, int]] = set()
    for job in prometheus.get("scrape_configs") or []:
        config = mapping(job, "scrape_configs entry")
        if config.get("metrics_path", "/metrics") != "/metrics":
            continue
        for static in config.get("static_configs") or []:
            for target in mapping(static, "static_configs").get("targets") or []:
                targets.add(host_port(str(target)))
        for dns in config.get("dns_sd_configs") or []:
            dns_config = mapping(dns, "dns_sd_configs")
            if dns_config.get("type", "SRV") == "A":
                port = int(dns_config["port"])
                targets.update((str(name), port) for name in dns_config.get("names") or [])
    return targets


def test_the_stack_has_project_services_and_a_one_shot_job(services: Services) -> None:
    # Guards the selection the other tests rely on.
    assert {"gateway", "classification-intake", "classification-worker"} <= set(
        long_running(services)
    )
    assert "topics" in one_shot(services)
    assert "topics" in project_services(services)


def test_service_names_are_set_and_unique(services: Services) -> None:
    names = {
        name: compose_environment(spec).get("OTEL_SERVICE_NAME") for name, spec in services.items()
    }
    project = {name: names[name] for name in project_services(services)}
    missing = sorted(name for name, value in project.items() if not value)
    assert not missing, f"no OTEL_SERVICE_NAME: {missing}"
    values = [value for value in project.values() if value]
    assert len(values) == len(set(values)), f"OTEL_SERVICE_NAME not unique: {project}"


def test_project_services_export_traces_to_the_collector(
    services: Services, collector: dict[str, Any]
) -> None:
    collector_service = service_with_image(services, COLLECTOR_IMAGE_PREFIX)
    port = collector_grpc_port(collector)
    for name, spec in project_services(services).items():
        env = compose_environment(spec)
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        assert endpoint, f"{name}: no OTEL_EXPORTER_OTLP_ENDPOINT"
        assert host_port(endpoint) == (collector_service, port), f"{name}: {endpoint}"
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc", name
        assert env.get("OTEL_SDK_DISABLED", "false").lower() != "true", f"{name}: SDK disabled"
        assert depends_on(spec).get(collector_service) in {"service_started", "service_healthy"}, (
            f"{name} does not depend on {collector_service}"
        )


def test_project_services_serve_metrics(services: Services) -> None:
    for name, spec in project_services(services).items():
        port = compose_environment(spec).get("NLP_METRICS_PORT", "")
        assert port.isdigit() and int(port) > 0, f"{name}: NLP_METRICS_PORT={port!r}"


def test_long_running_services_are_scraped(services: Services, prometheus: dict[str, Any]) -> None:
    targets = scrape_targets(prometheus)
    for name, spec in long_running(services).items():
        port = int(compose_environment(spec)["NLP_METRICS_PORT"])
        assert (name, port) in targets, f"{name}:{port} is not scraped ({sorted(targets)})"


def test_prometheus_mounts_this_config(services: Services) -> None:
    spec = services[service_with_image(services, PROMETHEUS_IMAGE_PREFIX)]
    target = mounted_source(spec, PROMETHEUS_CONFIG)
    command = [str(arg) for arg in spec.get("command") or []]
    # Without a command the image reads its default path.
    expected = next(
        (arg.partition("=")[2] for arg in command if arg.startswith("--config.file=")),
        "/etc/prometheus/prometheus.yml",
    )
    assert target == expected


def test_collector_mounts_this_config(services: Services) -> None:
    spec = services[service_with_image(services, COLLECTOR_IMAGE_PREFIX)]
    # The contrib image's default --config.
    assert mounted_source(spec, COLLECTOR_CONFIG) == "/etc/otelcol-contrib/config.yaml"


def test_collector_pipelines_use_defined_components(collector: dict[str, Any]) -> None:
    service = mapping(collector.get("service"), "service")
    pipelines = mapping(service.get("pipelines"), "pipelines")
    assert "traces" in pipelines
    for pipeline_name, pipeline in pipelines.items():
        spec = mapping(pipeline, pipeline_name)
        for kind in ("receivers", "processors", "exporters"):
            defined = set(mapping(collector.get(kind) or {}, kind))
            used = [str(component) for component in spec.get(kind) or []]
            if kind != "processors":
                assert used, f"{pipeline_name}: no {kind}"
            undefined = sorted(set(used) - defined)
            assert not undefined, f"{pipeline_name}: undefined {kind} {undefined}"
    extensions = set(mapping(collector.get("extensions") or {}, "extensions"))
    used_extensions = {str(name) for name in service.get("extensions") or []}
    assert used_extensions <= extensions, sorted(used_extensions - extensions)


def test_collector_memory_limiter_runs_first(collector: dict[str, Any]) -> None:
    # It must refuse data before any other processor holds it.
    pipelines = mapping(mapping(collector.get("service"), "service").get("pipelines"), "pipelines")
    processors = [str(name) for name in mapping(pipelines["traces"], "traces")["processors"]]
    assert processors and processors[0].split("/")[0] == "memory_limiter", processors


def test_collector_otlp_exporters_reach_compose_services(
    services: Services, collector: dict[str, Any]
) -> None:
    exporters = mapping(collector.get("exporters"), "exporters")
    otlp = {name: spec for name, spec in exporters.items() if name.split("/")[0] == "otlp"}
    assert otlp, "no otlp exporter"
    for name, spec in otlp.items():
        host, _ = host_port(str(mapping(spec, name).get("endpoint", "")))
        assert host in services, f"{name}: {host} is not a compose service"


def test_images_are_pinned(services: Services) -> None:
    for name, spec in services.items():
        image = image_of(spec)
        assert image, f"{name}: no image"
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        _, colon, tag = last.partition(":")
        assert colon and tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
