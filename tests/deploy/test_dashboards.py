"""The Grafana dashboards (deploy/observability/grafana/) ask for what the code exports,
in PromQL that parses (``promtool``, from Debian's ``prometheus``, which ``make setup``
installs), and compose provisions them with Prometheus as the datasource."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.gateway.metrics import GatewayMetrics
from shared.contracts.names import ALL_KINDS
from shared.observability.metrics import IntakeMetrics, WorkerMetrics
from tests.deploy.deployment import COMPOSE, ROOT, load_yaml

GRAFANA = ROOT / "deploy" / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Grafana's variables, as a query of the dashboard would have them filled in.
VARIABLES = {"$__rate_interval": "1m", "$kind": ".*", "$lane": ".*"}
# What a series' name is, once PromQL's functions, keywords and labels are taken out.
NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\b(?!\s*[(=!~])")
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "le",
    "offset",
    "bool",
}


def exported() -> set[str]:
    """Every series name the project's registries expose (with their suffixes)."""
    registries: list[CollectorRegistry] = [GatewayMetrics().registry]
    for kind in ALL_KINDS:
        registries += [IntakeMetrics(kind).registry, WorkerMetrics(kind).registry]
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
        "summary": ("_count", "_sum", ""),
    }
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled in) of every panel's targets."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def series_names(expr: str) -> set[str]:
    """The metric names an expression reads (label names, values and functions left out)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    return {
        name
        for name in NAME.findall(without_ranges)
        if name not in PROMQL_WORDS and not re.fullmatch(r"\d.*", name)
    }


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    assert DASHBOARDS, f"no dashboards under {GRAFANA / 'dashboards'}"
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS}


def test_series_names_are_read_out_of_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, kind) (rate(nlp_x_bucket{kind=~".*"}[1m])))'
    assert series_names(expr) == {"nlp_x_bucket"}
    assert series_names("max by (kind) (nlp_q) / on (kind) nlp_r") == {"nlp_q", "nlp_r"}


def test_every_panel_reads_series_the_code_exports(dashboards: dict[str, dict[str, Any]]) -> None:
    known = exported()
    # The process collector's series (every registry has it) and Prometheus's own job label.
    known |= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    for name, dashboard in dashboards.items():
        for title, expr in expressions(dashboard):
            names = series_names(expr)
            assert names, f"{name}: {title}: no series in {expr!r}"
            unknown = names - known
            assert not unknown, f"{name}: {title}: {sorted(unknown)} is not exported"


def test_every_expression_parses(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make setup` installs Debian's prometheus package"
    rules = [
        {"record": f"nlp:dashboard:{i}", "expr": expr}
        for dashboard in dashboards.values()
        for i, (_, expr) in enumerate(expressions(dashboard))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check = [promtool, "check", "rules", str(path)]
    done = subprocess.run(check, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # A broken expression is caught: the check is real.
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(("}]}]})
    )
    assert subprocess.run(check, check=False, capture_output=True).returncode


def test_dashboards_use_the_provisioned_datasource(dashboards: dict[str, dict[str, Any]]) -> None:
    source = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (datasource,) = source["datasources"]
    for name, dashboard in dashboards.items():
        assert dashboard["uid"], name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], f"{name}: {panel['title']}"
    prometheus = load_yaml(COMPOSE)["services"]["prometheus"]
    assert datasource["url"] == f"http://prometheus:{prometheus['ports'][0].rsplit(':', 1)[1]}"


def test_compose_provisions_grafana_and_offers_flower() -> None:
    services = load_yaml(COMPOSE)["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert ROOT / mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    assert ROOT / mounts["/var/lib/grafana/dashboards"] == GRAFANA / "dashboards"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "nlp.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    assert any("--broker=${NLP_REDIS_URL" in part for part in flower["command"])
