"""Observability for the local stack (``--observe``): a real Prometheus (Debian's
``prometheus`` package) scraping every process's ``/metrics``, and Zipkin (its server's
executable jar from Maven Central, on the Java that runs Kafka) receiving the stack's
spans in memory, with its UI. Both listen on 127.0.0.1 only.

Zipkin rather than Jaeger: Jaeger's Go module builds (its v2 binary) without the UI,
whose assets are published only as GitHub release files, and Zipkin's jar carries its
UI. The services export to it with the standard ``OTEL_TRACES_EXPORTER=zipkin``.

    python -m deploy.local.observe fetch     # fetch Zipkin once (what `make setup` runs)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from deploy import tools
from deploy.local.kafka import free_port
from deploy.local.lifecycle import Started, terminate

ZIPKIN_VERSION = "3.6.1"
ZIPKIN_ARTIFACT = f"io.zipkin:zipkin-server:{ZIPKIN_VERSION}:jar:exec"


def zipkin_jar() -> Path:
    """Zipkin's executable jar (Maven Central), fetched on first use into the cache
    outside the clone."""
    folder = tools.CACHE / "zipkin"
    path = folder / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"
    if not path.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise tools.ToolError("mvn not found: Maven fetches Zipkin (as it does Kafka's jars)")
        done = subprocess.run(
            [
                mvn,
                "-q",
                "dependency:copy",
                f"-Dartifact={ZIPKIN_ARTIFACT}",
                f"-DoutputDirectory={folder}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not path.exists():
            raise tools.ToolError(f"mvn could not fetch {ZIPKIN_ARTIFACT}:\n{done.stdout[-3000:]}")
    return path


def _get_json(url: str, params: Mapping[str, object], timeout: float = 10.0) -> Any:
    """An HTTP API's JSON answer; None when it does not answer."""
    body = _get(f"{url}?{urlencode(params)}", timeout)
    return None if body is None else json.loads(body)


def _get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except (OSError, urllib.error.URLError):
        return None


@dataclass
class _Server(Started):
    """One observability process, logging to ``data_dir/<name>.log``."""

    data_dir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name = "server"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _launch(self, argv: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_for(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _get(url) is None:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited ({self._proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready at {url} in {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self._proc, timeout)


@dataclass
class Prometheus(_Server):
    """Prometheus scraping ``targets`` (job name -> one or more ``/metrics`` URLs)."""

    targets: Mapping[str, list[str]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    scrape_interval_s: int = 2

    name = "prometheus"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        """prometheus.yml: one job per process role, its replicas as instances."""
        jobs = []
        for job, urls in sorted(self.targets.items()):
            paths = {urlsplit(u).path or "/metrics" for u in urls}
            (path,) = paths  # every process serves the same path
            jobs.append(
                {
                    "job_name": job,
                    "metrics_path": path,
                    "static_configs": [{"targets": sorted(urlsplit(u).netloc for u in urls)}],
                }
            )
        interval = f"{self.scrape_interval_s}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": jobs,
        }

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found; `make setup` installs it (apt)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        self._launch(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._wait_for(f"{self.url}/-/ready", timeout)

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query's result vector."""
        answer = _get_json(f"{self.url}/api/v1/query", {"query": promql})
        if answer is None:
            raise RuntimeError(f"prometheus did not answer the query {promql!r}")
        result: list[dict[str, object]] = answer["data"]["result"]
        return result


@dataclass
class Zipkin(_Server):
    """Zipkin: spans in memory (the services export them with ``OTEL_TRACES_EXPORTER=
    zipkin``), its API and its UI (Lens) at ``/zipkin/``."""

    port: int = field(default_factory=free_port)
    max_spans: int = 500_000

    name = "zipkin"

    @property
    def url(self) -> str:
        """The server: the UI under ``/zipkin/``, the API under ``/api/v2``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans_endpoint(self) -> str:
        """What the services' ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is."""
        return f"{self.url}/api/v2/spans"

    @property
    def exporter_env(self) -> dict[str, str]:
        """The standard OpenTelemetry variables that send a service's spans here."""
        return {
            "OTEL_TRACES_EXPORTER": "zipkin",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": self.spans_endpoint,
        }

    def start(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java not found: Zipkin needs Java 17 (as Kafka does)")
        self._launch(
            [
                java,
                "-Xms64m",
                "-Xmx512m",
                f"-Dzipkin.storage.mem.max-spans={self.max_spans}",
                "-jar",
                str(zipkin_jar()),
                "--zipkin.storage.type=mem",
                # One listener, on the loopback only.
                f"--armeria.ports[0].port={self.port}",
                "--armeria.ports[0].ip=127.0.0.1",
                "--armeria.ports[0].protocols[0]=http",
            ]
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        self._wait_for(f"{self.url}/health", timeout)

    def traces(self, annotation_query: str, limit: int = 10) -> list[list[dict[str, object]]]:
        """Traces whose spans match ``annotation_query`` (e.g. ``nlp.task_id=<id>``)."""
        params = {"annotationQuery": annotation_query, "limit": limit, "lookback": 3_600_000}
        traces: list[list[dict[str, object]]] = _get_json(f"{self.url}/api/v2/traces", params) or []
        return traces


def main(argv: list[str] | None = None) -> int:
    return tools.fetch_command(argv, __doc__, zipkin_jar)


if __name__ == "__main__":
    sys.exit(main())
