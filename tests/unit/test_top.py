"""``nlp top``'s arithmetic on real metrics pages: the project's own registries, filled
as the processes fill them, exposed and parsed back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from services.gateway.metrics import GatewayMetrics
from shared.client import top
from shared.client.cli import main
from shared.observability.metrics import IntakeMetrics, WorkerMetrics


def _page(metrics: object) -> top.Samples:
    return top.parse(generate_latest(metrics.registry).decode())  # type: ignore[attr-defined]


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    # 10 observations: 4 in (0, 0.1], 6 in (0.1, 1.0]
    buckets = [(0.1, 4.0), (1.0, 10.0), (float("inf"), 10.0)]
    assert top.histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.9 * (1 / 6))
    assert top.histogram_quantile(0.2, buckets) == pytest.approx(0.05)
    assert top.histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 5.0)]) == 0.1  # in +Inf
    assert top.histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_a_view_of_two_scrapes_per_kind_and_lane() -> None:
    worker = WorkerMetrics("classification")
    intake = IntakeMetrics("classification")
    gateway = GatewayMetrics()
    before = {"w": _page(worker), "i": _page(intake), "g": _page(gateway)}
    for _ in range(8):
        worker.finished("interactive", "SUCCEEDED", None, {"queued": 20.0, "ran": 5.0})
        gateway.submitted.labels("classification").inc()
    worker.finished("batch", "FAILED", "INVALID_ARGUMENT", {"queued": 300.0})
    intake.queue_depth.labels("classification", "batch").set(7)
    intake.consumer_lag.labels("classification", "batch", "0").set(40)
    intake.consumer_lag.labels("classification", "batch", "1").set(2)
    gateway.rpc_seconds.labels("Classify", "UNAVAILABLE").observe(0.01)
    after = {"w": _page(worker), "i": _page(intake), "g": _page(gateway), "gone": None}

    snapshot = top.view(before, after, 2.0)

    entry = snapshot["kinds"]["classification"]
    assert entry["submitted_per_s"] == 4.0
    assert entry["errors_per_s"] == {"INVALID_ARGUMENT": 0.5}
    interactive, batch = entry["lanes"]["interactive"], entry["lanes"]["batch"]
    assert interactive["succeeded_per_s"] == 4.0 and interactive["failed_per_s"] == 0
    assert batch["failed_per_s"] == 0.5
    assert batch["queue_depth"] == 7 and batch["lag"] == 42
    # 20 ms lies in the (10, 25] ms bucket; nothing ran in the standard lane.
    assert 10 < interactive["stages"]["queued"]["p50_ms"] <= 25
    assert entry["lanes"]["standard"]["stages"]["queued"] == {"p50_ms": None, "p99_ms": None}
    assert snapshot["rpc_errors_per_s"] == {"UNAVAILABLE": 0.5}
    assert snapshot["processes"] == {"g": "up", "gone": "down", "i": "up", "w": "up"}
    json.dumps(snapshot)  # --json prints it as it is
    top.render(snapshot)  # and the table renders


def test_a_restarted_process_counts_from_zero() -> None:
    worker = WorkerMetrics("ner")
    for _ in range(5):
        worker.finished("standard", "SUCCEEDED", None, {})
    before = {"w": _page(worker)}
    fresh = WorkerMetrics("ner")
    fresh.finished("standard", "SUCCEEDED", None, {})
    snapshot = top.view(before, {"w": _page(fresh)}, 1.0)
    assert snapshot["kinds"]["ner"]["lanes"]["standard"]["succeeded_per_s"] == 1.0


def test_endpoints_come_from_the_state_file_and_the_command_line(tmp_path: Path) -> None:
    state = tmp_path / "stack.json"
    state.write_text(json.dumps({"metrics": {"gateway": "http://127.0.0.1:1/metrics"}}))
    found = top.endpoints(state, ["pod=http://10.0.0.1:9464/metrics"])
    assert found == {
        "gateway": "http://127.0.0.1:1/metrics",
        "pod": "http://10.0.0.1:9464/metrics",
    }
    with pytest.raises(ValueError, match="NAME=http"):
        top.endpoints(None, ["pod"])


def test_the_command_refuses_nothing_to_watch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", "--once", "--state", str(tmp_path / "none.json")]) == 2
    assert "no processes to watch" in capsys.readouterr().err
    assert main(["top", "--once", "--interval", "0", "--metrics", "a=http://x/m"]) == 2


def test_live_json_is_one_line_per_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    views: Iterator[dict[str, object]] = iter([{"n": 1}, {"n": 2}])

    def measure(urls: object, interval_s: float) -> dict[str, object]:
        try:
            return next(views)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C during the third interval

    monkeypatch.setattr(top, "measure", measure)
    assert top.run({"a": "http://x/metrics"}, 1.0, once=False, as_json=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 2]
