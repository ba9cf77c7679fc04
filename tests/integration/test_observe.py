"""The local stack with ``observe=True`` (``make run OBSERVE=1``): a real Prometheus
scraping every process and Zipkin receiving their spans, looked at as a person would,
with headless Chromium (Debian's package) on Zipkin's UI."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deploy.local.stack import LocalStack
from nlp.v1 import common_pb2, tasks_pb2_grpc
from tests.factories import submit_classification
from tests.integration.support import wait_terminal

SERVICES = {"nlp-gateway", "nlp-classification-intake", "nlp-classification-worker"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="make setup installs chromium")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(
        data_dir=tmp_path_factory.mktemp("observed"),
        kinds=("classification",),
        observe=True,
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # spans out within 0.1 s, not 5
    ) as stack:
        yield stack


def _browser(*args: str) -> str:
    """Headless Chromium: what it prints (``--dump-dom``: the page as rendered)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root, in a container
            "--disable-gpu",
            "--window-size=1400,1000",
            # Time for the UI's scripts to fetch the trace and draw it.
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _trace_of(stack: LocalStack, task_id: str) -> str:
    """The id of the task's trace, from Zipkin's API, once every service sent its spans."""
    assert stack.zipkin is not None
    deadline = time.monotonic() + 60
    while True:
        for trace in stack.zipkin.traces(f"nlp.task_id={task_id}"):
            names = {
                span["localEndpoint"]["serviceName"]  # type: ignore[index]
                for span in trace
                if "localEndpoint" in span
            }
            if names >= SERVICES:
                return str(trace[0]["traceId"])
        assert time.monotonic() < deadline, f"no complete trace of {task_id} in Zipkin"
        time.sleep(0.5)


def test_zipkin_shows_a_tasks_trace_across_the_services(stack: LocalStack, tmp_path: Path) -> None:
    with grpc.insecure_channel(stack.gateway_target) as channel:
        tasks = tasks_pb2_grpc.TasksStub(channel)
        reply = tasks.Submit(submit_classification("The striker scored twice."), timeout=30)
        assert wait_terminal(tasks, reply.task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
    trace_id = _trace_of(stack, reply.task_id)
    assert stack.zipkin is not None
    ui = f"{stack.zipkin.url}/zipkin"

    # The UI's search by the task id finds the trace ...
    query = urllib.parse.urlencode(
        {
            "annotationQuery": f"nlp.task_id={reply.task_id}",
            "lookback": "1h",
            "endTs": str(int(time.time() * 1000)),
            "limit": "10",
        }
    )
    search = _browser("--dump-dom", f"{ui}/?{query}")
    assert trace_id in search
    # ... and its page draws the spans of every service.
    page = f"{ui}/traces/{trace_id}"
    drawn = _browser("--dump-dom", page)
    for service in SERVICES:
        assert service in drawn, f"{service} not on the trace page"
    shot = tmp_path / "zipkin-trace.png"
    _browser(f"--screenshot={shot}", page)
    assert shot.stat().st_size > 10_000  # a picture, not a blank page


def test_prometheus_scrapes_every_process(stack: LocalStack) -> None:
    assert stack.prometheus is not None
    jobs = set(stack.scrape_targets())
    deadline = time.monotonic() + 30
    while True:
        up = {r["metric"]["job"]: r["value"][1] for r in stack.prometheus.query("up")}  # type: ignore[index]
        if set(up) >= jobs and all(v == "1" for v in up.values()):
            break
        assert time.monotonic() < deadline, f"targets not all up: {up}"
        time.sleep(1)
    assert jobs == {"gateway", "classification-intake", "classification-worker"}
    # The task above (or the readiness traffic) is counted where Prometheus can see it.
    rows = stack.prometheus.query('nlp_celery_queue_depth{kind="classification"}')
    assert {r["metric"]["lane"] for r in rows} == {"interactive", "standard", "batch"}  # type: ignore[index]
