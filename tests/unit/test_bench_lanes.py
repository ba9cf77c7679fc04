"""The lanes benchmark's bookkeeping: rates over a batch's span, the ratios against the
targets, the clock the bulk client's responses pass, and the tables and report page."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import lanes, report
from bench.common import Bench, load
from bench.harness import Driven, TaskFailedError
from nlp.v1 import common_pb2, tasks_pb2
from shared.client.bulk import BatchRun, Doc

NAN = float("nan")


@pytest.fixture(autouse=True)
def no_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deploy.local.kafka.interrupt_on_termination", lambda: None)


def probes(
    phase: str, p50: float, p99: float, errors: dict[str, int] | None = None
) -> lanes.Latency:
    return lanes.Latency(
        phase, 100, errors or {}, p50, p50, p99, p99, p50, p50, p50, 5.0, {"machine": 4.0}
    )


def batch(
    phase: str, docs_per_s: float, tokens_per_s: float = NAN, succeeded: int = 600
) -> lanes.BulkRun:
    return lanes.BulkRun(
        phase, 600, succeeded, {"SUCCEEDED": succeeded}, 10.0, docs_per_s, 0, tokens_per_s, 10.5, {}
    )


def kind_result(kind: str = "classification", unit: str = "docs/s") -> lanes.KindResult:
    idle, under = probes("idle", 20.0, 30.0), probes("under bulk", 28.0, 90.0)
    alone, beside = batch("alone", 120.0, 400.0), batch("with", 111.0, 380.0)
    return lanes.KindResult(
        kind,
        "latency" if unit == "docs/s" else "time to first token",
        unit,
        12.0,
        {"seconds": 3.0, "produced": 900},
        lanes.Warmup(16, {}, 1.0, 100, 100, 2.0),
        idle,
        under,
        alone,
        beside,
        lanes.compare(idle, under, alone, beside, unit),
    )


def test_the_quick_plan_is_smaller_and_every_phase_is_bounded() -> None:
    full, quick = lanes.Plan(), lanes.QUICK
    assert quick.docs < full.docs and quick.gen_tasks < full.gen_tasks
    assert quick.idle_requests < full.idle_requests and quick.bulk_timeout_s <= full.bulk_timeout_s
    # The calls under bulk stop before the batch drains, so it is saturated throughout.
    assert 0 < full.tail_docs < full.docs and 0 < quick.tail_docs < quick.docs
    assert 0 < quick.gen_tail_tasks < quick.gen_tasks


def test_ratios_are_nan_without_a_positive_finite_denominator() -> None:
    assert lanes.ratio(3.0, 2.0) == 1.5
    for numerator, denominator in ((1.0, 0.0), (1.0, NAN), (NAN, 1.0), (1.0, -2.0)):
        assert math.isnan(lanes.ratio(numerator, denominator))


def test_a_batch_rate_runs_from_its_first_ack_to_its_last_result() -> None:
    finished = [11.0, 12.0, 13.0, 15.0]
    assert lanes.span_rate(10.0, finished) == (5.0, 0.8)
    assert all(math.isnan(v) for v in lanes.span_rate(None, finished))
    assert all(math.isnan(v) for v in lanes.span_rate(10.0, []))
    # Within a window: the results that finished in it, per second of it.
    assert lanes.rate_between(finished, 11.0, 13.0) == 1.5
    assert math.isnan(lanes.rate_between(finished, 13.0, 13.0))
    # The share of the batch's span (10 → 15) a window covers.
    assert lanes.cover(11.0, 14.0, 10.0, finished) == 0.6
    assert lanes.cover(5.0, 20.0, 10.0, finished) == 1.0
    assert math.isnan(lanes.cover(NAN, NAN, 10.0, finished))
    assert math.isnan(lanes.cover(11.0, 14.0, None, finished))


def test_compare_holds_the_results_against_the_targets() -> None:
    idle, alone = probes("idle", 20.0, 40.0), batch("alone", 100.0, 500.0)
    met = lanes.compare(
        idle, probes("under bulk", 30.0, 100.0), alone, batch("with", 90.0), "docs/s"
    )
    assert (met.p50, met.p99, met.throughput) == (1.5, 2.5, 0.9)
    assert met.meets_p50 and met.meets_throughput
    missed = lanes.compare(
        idle, probes("under bulk", 31.0, 40.0), alone, batch("with", 89.0), "docs/s"
    )
    assert not missed.meets_p50 and not missed.meets_throughput
    # Generation's rate is output tokens per second.
    tokens = lanes.compare(
        idle, probes("under bulk", 20.0, 40.0), alone, batch("with", 1.0, 450.0), "tok/s"
    )
    assert tokens.throughput == 0.9 and tokens.unit == "tok/s"
    # Nothing measured meets nothing.
    empty = lanes.compare(idle, probes("under bulk", NAN, NAN), alone, batch("with", NAN), "docs/s")
    assert not empty.meets_p50 and not empty.meets_throughput


def test_a_phase_leaves_calls_without_text_out_of_its_percentiles() -> None:
    driven = Driven(done=3, seconds=2.0)
    driven.errors["UNAVAILABLE"] = 1
    found = lanes.latency("idle", [10.0, NAN, 30.0], [50.0, 60.0, 70.0], driven, {"worker": 1.0})
    assert (found.requests, found.p50_ms, found.max_ms, found.mean_ms) == (3, 20.0, 30.0, 20.0)
    assert found.e2e_p50_ms == 60.0 and found.errors == {"UNAVAILABLE": 1}
    assert found.samples_ms[0] == 10.0 and math.isnan(found.samples_ms[1])


def test_stages_are_averaged_and_the_rest_is_what_they_leave_of_a_call() -> None:
    timings = [
        {"queued": 2.0, "waited": 1.0, "batched": 0.0, "inference": 8.0, "ran": 9.0},
        {"queued": 4.0, "waited": 3.0, "batched": 2.0, "inference": 8.0, "ran": 11.0},
    ]
    means = lanes.stage_means(timings)
    assert list(means) == list(lanes.STAGES)
    assert means == {"queued": 3.0, "waited": 2.0, "batched": 1.0, "inference": 8.0, "ran": 10.0}
    assert lanes.stage_means([]) == {}
    found = probes("idle", 20.0, 30.0)
    assert math.isnan(lanes.rest_ms(found))
    found.stages_ms = means
    assert lanes.rest_ms(found) == 20.0 - 3.0 - 2.0 - 10.0


def test_sequential_calls_stop_at_their_condition_and_count_failures() -> None:
    calls: list[int] = []

    async def job(i: int) -> None:
        calls.append(i)
        if i == 1:
            raise TaskFailedError("FAILED")

    driven = asyncio.run(lanes.sequential(job, 10, 60.0, 0.0, until=lambda: len(calls) >= 4))
    assert calls == [0, 1, 2, 3]
    assert driven.done == 3 and driven.errors == {"FAILED": 1}
    assert driven.first_error == "task ended FAILED"
    assert asyncio.run(lanes.sequential(job, 0, 60.0, 0.0)).done == 0


class _Gateway:
    """Acknowledges every item in one response, then streams a generation result each."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def SubmitBatch(self, messages: Iterator[tasks_pb2.SubmitBatchRequest]) -> Any:  # noqa: N802
        response = tasks_pb2.SubmitBatchResponse(batch_id="b1")
        for message in messages:
            for item in message.items:
                response.acks.add(item_id=item.item_id, task_id=f"t-{item.item_id}")
                self.ids.append(item.item_id)
        return _Call([response])

    def StreamBatchResults(self, request: Any) -> Any:  # noqa: N802
        results = []
        for i, item_id in enumerate(self.ids):
            result = tasks_pb2.TaskResult(
                task_id=f"t-{item_id}",
                status=common_pb2.TASK_STATUS_SUCCEEDED,
                correlation_id=item_id,
            )
            result.generation.completion_tokens = 10 + i
            results.append(tasks_pb2.BatchResult(cursor=str(i), result=result))
        return _Call(results)


class _Call:
    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.cancelled = False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_the_clock_sees_the_bulk_clients_first_ack_and_every_result() -> None:
    async def run() -> tuple[lanes.BatchClock, Any]:
        clock = lanes.BatchClock()
        stub: Any = lanes.ObservedTasks(_Gateway(), clock)  # type: ignore[arg-type]
        runner = BatchRun(stub, lambda text: tasks_pb2.SubmitRequest(), lanes.Discard(), chunk=2)
        summary = await asyncio.to_thread(runner.run, iter([Doc(f"d{i}", "x") for i in range(3)]))
        await asyncio.wait_for(clock.acked.wait(), 5)
        return clock, summary

    clock, summary = asyncio.run(run())
    assert summary.succeeded == 3 and summary.batch_id == "b1"
    assert clock.done == 3 and clock.tokens == 10 + 11 + 12
    assert clock.first_ack is not None and clock.first_ack <= min(clock.finished)


def test_the_clock_ignores_a_response_that_acknowledged_nothing() -> None:
    async def run() -> lanes.BatchClock:
        clock = lanes.BatchClock()
        refused = tasks_pb2.SubmitBatchResponse(batch_id="b1")
        refused.acks.add(item_id="d0", error=common_pb2.Error(code=3, message="bad"))
        clock.ack(refused)
        return clock

    clock = asyncio.run(run())
    assert clock.first_ack is None and not clock.acked.is_set()


def test_errors_count_failed_calls_and_items_that_did_not_succeed() -> None:
    found = kind_result()
    assert lanes.errors_of(found) == 0
    found.under_bulk = probes("under bulk", 28.0, 90.0, {"DEADLINE_EXCEEDED": 2})
    found.bulk_with = batch("with", 100.0, succeeded=597)
    found.bulk_alone.error = "UNAVAILABLE: gone"
    found.warmup.batch_succeeded = 99
    assert lanes.errors_of(found) == 2 + 3 + 1 + 1


def test_the_run_prints_writes_and_renders_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, page = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    found = lanes.Report(
        bulk_lane="batch",
        settings={"classification": {"concurrency": 64, "lane_weights": {"interactive": 16}}},
        kinds=[kind_result(), kind_result("generation", "tok/s")],
        targets={"p50_ratio_max": 1.5, "throughput_ratio_min": 0.9},
    )
    b = Bench("lanes", None, plan=lanes.Plan(), quick_plan=lanes.QUICK)
    b.parse(["--quick", "--out", str(results / "lanes.json")])
    assert b.finish(found, lanes.output(found)) == 0
    printed = capsys.readouterr().out
    assert "== summary (interactive under bulk / idle: target p50 <= 1.5x;" in printed
    assert "classification" in printed and "time to first token" in printed

    data = json.loads((results / "lanes.json").read_text())
    assert data["kinds"][0]["ratios"]["p50"] == 1.4
    # A JSON without its tables is shown from its results too (bench.report's fallback).
    assert lanes.output(load(lanes.Results, data)).tables[-1].rows[0][4] == "1.40"

    assert report.main(["--results", str(results), "--out", str(page)]) == 0
    text = page.read_text()
    section = text[text.index("## lanes") : text.index("## Not run yet")]
    assert "- command: `python -m bench.lanes --quick --out " in section
    assert "| classification | latency | 20.0 | 28.0 | 1.40 | 30.0 | 90.0 | 3.00 |" in section
    assert "| 120.0 | 111.0 | 0.93 | docs/s | yes | yes |" in section
    assert "| idle | 0 | 20.0 | nan | nan | nan | nan | nan | nan |" in section
    assert "](img/lanes-latency.png)" in section
    assert (page.parent / "img" / "lanes-latency.png").read_bytes().startswith(b"\x89PNG")
    assert "- lanes: `" not in text[text.index("## Not run yet") :]
