"""Tracing, metrics and logs on the real stack.

Every process of the session stack exports its spans over OTLP/gRPC to the receiver
of the ``otlp`` fixture (conftest) and serves Prometheus metrics; these tests read
both back after real traffic.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from kafka import KafkaProducer

from deploy.local.otlp import OtlpSink, SpanRecord
from deploy.local.stack import AVAILABLE_KINDS, LocalStack
from nlp.v1 import (
    common_pb2,
    summarization_pb2,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import task_headers
from tests.factories import classify_request, greedy_request, ner_request, submit_classification
from tests.integration.support import TopicTail, scrape, value, wait_terminal

SPAN_SERVER, SPAN_PRODUCER, SPAN_CONSUMER = 2, 4, 5  # OTLP Span.SpanKind values

# Tasks.Submit's lane: what the traffic of these tests travels in.
LANE = "standard"
REQUESTS: dict[str, tasks_pb2.SubmitRequest] = {
    "classification": submit_classification("The striker scored twice in the final."),
    "ner": tasks_pb2.SubmitRequest(ner=ner_request("Angela Merkel visited Paris in 2015.")),
    "generation": tasks_pb2.SubmitRequest(
        generation=greedy_request("Kafka keeps the log.", max_tokens=4)
    ),
    "summarization": tasks_pb2.SubmitRequest(
        summarization=summarization_pb2.SummarizeRequest(
            text="Kafka keeps the log. Celery runs the tasks. Redis holds the results.",
            max_sentences=1,
        )
    ),
}


def _trace_of(
    otlp: OtlpSink, task_id: str, services: set[str], spans: frozenset[str] = frozenset()
) -> list[SpanRecord]:
    """The spans of the trace that carries ``task_id``, once every service sent its part
    (and the worker its ``store result`` span, the last one a task makes, and the named
    ``spans``: a sync RPC's ends after the store)."""
    found: list[SpanRecord] = []
    wanted = {"store result", *spans}

    def complete() -> bool:
        nonlocal found
        tagged = otlp.find(nlp__task_id=task_id)
        if not tagged:
            return False
        found = otlp.trace(tagged[0].trace_id)
        return services <= {s.service for s in found} and wanted <= {s.name for s in found}

    assert otlp.wait_until(complete, timeout=30), (
        f"incomplete trace for {task_id}: {sorted({(s.service, s.name) for s in found})}"
    )
    return found


def _one(spans: list[SpanRecord], name: str, service: str | None = None) -> SpanRecord:
    matching = [s for s in spans if s.name == name and service in (None, s.service)]
    assert len(matching) == 1, f"{name} ({service}): {[(s.service, s.name) for s in spans]}"
    return matching[0]


@pytest.mark.parametrize("kind", [k for k in AVAILABLE_KINDS if k in REQUESTS])
def test_one_trace_per_task_through_every_process(
    kind: str, otlp: OtlpSink, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    task_id = tasks.Submit(REQUESTS[kind], timeout=30).task_id
    result = wait_terminal(tasks, task_id)
    assert result.status == common_pb2.TASK_STATUS_SUCCEEDED, result
    gateway, intake, worker = "nlp-gateway", f"nlp-{kind}-intake", f"nlp-{kind}-worker"
    # Celery's run span ends after the result is stored (the store span): waited for too.
    celery_span = f"run/nlp.{kind}.run"
    spans = _trace_of(otlp, task_id, {gateway, intake, worker}, frozenset({celery_span}))
    assert len({s.trace_id for s in spans}) == 1

    rpc = _one(spans, "/nlp.v1.Tasks/Submit", gateway)
    assert rpc.kind == SPAN_SERVER and not rpc.parent_span_id
    assert rpc.attributes["nlp.task_id"] == task_id
    topic = f"nlp.tasks.{kind}.standard"  # Tasks.Submit's lane
    publish = _one(spans, f"publish {topic}", gateway)
    assert publish.kind == SPAN_PRODUCER and publish.parent_span_id == rpc.span_id
    # The intake continues the context the Kafka record's headers carried.
    process = _one(spans, f"process {topic}", intake)
    assert process.kind == SPAN_CONSUMER and process.parent_span_id == publish.span_id
    assert process.attributes["nlp.task_id"] == task_id
    assert process.attributes["nlp.lane"] == "standard"
    handoff = _one(spans, f"publish {kind}.standard", intake)
    assert handoff.kind == SPAN_PRODUCER and handoff.parent_span_id == process.span_id
    celery_run = _one(spans, celery_span, worker)
    assert celery_run.parent_span_id == handoff.span_id
    # The task's own span continues its context from the Celery message's nlp_trace entry.
    run = _one(spans, f"run {kind}", worker)
    assert run.parent_span_id == process.span_id
    assert (run.trace_id, celery_run.span_id) in run.links
    assert run.attributes["nlp.model.name"] == result.model.name
    assert run.attributes["nlp.model.version"] == result.model.version
    assert run.attributes["nlp.batch.size"] == result.batch_size >= 1
    assert run.attributes["nlp.task.status"] == "SUCCEEDED"
    # The micro-batch's model run links to every task it ran (here: at least this one).
    inference = _one(spans, f"inference {result.model.name}", worker)
    assert (run.trace_id, run.span_id) in inference.links
    assert inference.attributes["nlp.model.name"] == result.model.name
    assert inference.attributes["nlp.batch.size"] >= 1
    assert inference.attributes["nlp.tokens.input"] > 0
    store = _one(spans, "store result", worker)
    assert store.parent_span_id == run.span_id
    # Causal order across the processes (one machine, one clock).
    assert rpc.start_ns <= publish.start_ns <= process.start_ns <= run.start_ns <= store.start_ns


def test_sync_rpc_waits_in_the_same_trace(otlp: OtlpSink, channel: grpc.Channel) -> None:
    from nlp.v1 import classification_pb2_grpc

    request = classify_request("Parliament passed the budget.")
    response = classification_pb2_grpc.ClassificationStub(channel).Classify(request, timeout=30)
    spans = _trace_of(
        otlp,
        response.task_id,
        {"nlp-gateway", "nlp-classification-intake", "nlp-classification-worker"},
        frozenset({"/nlp.v1.Classification/Classify", "wait result"}),
    )
    rpc = _one(spans, "/nlp.v1.Classification/Classify", "nlp-gateway")
    wait = _one(spans, "wait result", "nlp-gateway")
    store = _one(spans, "store result", "nlp-classification-worker")
    assert wait.parent_span_id == rpc.span_id
    # The reply waited for the result: the store began inside the wait (the gateway may
    # read the result before the worker's span around the store has ended).
    assert rpc.start_ns <= wait.start_ns <= store.start_ns <= wait.end_ns <= rpc.end_ns


def test_batch_items_each_get_a_trace_linked_to_the_stream(
    otlp: OtlpSink, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    items = [
        tasks_pb2.BatchItem(item_id=f"t{i}", task=submit_classification(f"Match report {i}."))
        for i in range(3)
    ]
    request = tasks_pb2.SubmitBatchRequest(batch_id=f"trace-{uuid.uuid4().hex[:8]}", items=items)
    acks = [a for r in tasks.SubmitBatch(iter([request]), timeout=60) for a in r.acks]
    ids = [a.task_id for a in acks]
    assert all(ids)
    for task_id in ids:
        wait_terminal(tasks, task_id)
    services = {"nlp-gateway", "nlp-classification-intake", "nlp-classification-worker"}
    traces = {task_id: _trace_of(otlp, task_id, services) for task_id in ids}
    assert len({spans[0].trace_id for spans in traces.values()}) == 3
    links = set()
    for spans in traces.values():
        publish = _one(spans, "publish nlp.tasks.classification.batch", "nlp-gateway")
        assert not publish.parent_span_id  # the root of the task's trace
        links |= set(publish.links)
    # All three link to the one SubmitBatch RPC span.
    assert len(links) == 1
    ((stream_trace, stream_span),) = links

    def stream() -> list[str]:
        return [s.name for s in otlp.trace(stream_trace) if s.span_id == stream_span]

    otlp.wait_until(lambda: bool(stream()), timeout=10)
    assert stream() == ["/nlp.v1.Tasks/SubmitBatch"]


def test_a_dead_lettered_record_is_traced_and_logged_with_its_trace_id(
    otlp: OtlpSink,
    stack: LocalStack,
    settings: ServiceSettings,
    producer: KafkaProducer,
    tail: Callable[[str], TopicTail],
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    value = f"\xff not an envelope {trace_id}".encode()
    dead_letters = tail(settings.names.dead_letter_topic)
    producer.send(
        settings.names.task_topic("classification", "batch"),
        value=value,
        headers=[*task_headers("x", "classification"), ("traceparent", traceparent.encode())],
    ).get(timeout=30)
    # The dead-letter copy continues the same trace, with one context only.
    (record,) = [r for r in dead_letters.read(1) if r.value == value]
    contexts = [v.decode() for k, v in record.headers if k == "traceparent"]
    assert len(contexts) == 1 and contexts[0].split("-")[1] == trace_id
    # The send span ends (and is exported) before the process span around it.
    process_name = "process nlp.tasks.classification.batch"
    assert otlp.wait_until(
        lambda: any(s.name == process_name for s in otlp.trace(trace_id)), timeout=30
    )
    process = _one(otlp.trace(trace_id), process_name)
    assert process.status_code == 2  # ERROR
    log = stack.services["classification-intake"].log_file
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines() if trace_id in x]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lines and lines[0]["msg"] == "dead-lettering record"
    assert lines[0]["trace_id"] == trace_id and lines[0]["span_id"] == process.span_id


# --- metrics -------------------------------------------------------------------------------


@pytest.fixture
def metrics(stack: LocalStack) -> Callable[[str], list[tuple[str, dict[str, str], float]]]:
    """Samples of every process of a role (a worker's replicas together)."""

    def of_role(role: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            sample
            for name, url in stack.metrics_urls.items()
            if name == role or (name.startswith(f"{role}-") and name[len(role) + 1 :].isdigit())
            for sample in scrape(url)
        ]

    return of_role


def test_metrics_after_traffic(
    metrics: Callable[[str], list[tuple[str, dict[str, str], float]]],
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    for kind in AVAILABLE_KINDS:
        if kind in REQUESTS:
            wait_terminal(tasks, tasks.Submit(REQUESTS[kind], timeout=30).task_id)
        worker = metrics(f"{kind}-worker") if kind in REQUESTS else []
        for stage in ("queued", "waited", "ran", "batched", "inference"):
            assert (
                value(worker, "nlp_task_stage_seconds_count", kind=kind, lane=LANE, stage=stage) > 0
            )
        assert value(worker, "nlp_tasks_total", kind=kind, lane=LANE, status="SUCCEEDED") > 0
        assert value(worker, "nlp_batch_size_count", kind=kind) > 0
        assert value(worker, "nlp_inference_seconds_count", kind=kind) > 0
        assert value(worker, "nlp_tokens_total", kind=kind, direction="input") > 0
        assert value(worker, "process_cpu_seconds_total") > 0
        intake = metrics(f"{kind}-intake")
        assert value(intake, "nlp_intake_records_total", kind=kind, lane=LANE, outcome="handed") > 0
    gateway = metrics("gateway")
    assert value(gateway, "nlp_rpc_duration_seconds_count", method="/nlp.v1.Tasks/Submit") > 0
    assert value(gateway, "nlp_tasks_submitted_total", kind="classification") > 0
    assert value(gateway, "nlp_kafka_publish_seconds_count") > 0


def test_every_process_is_live_and_ready(stack: LocalStack) -> None:
    for name, url in stack.metrics_urls.items():
        base = url.removesuffix("/metrics")
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + path, timeout=10) as response:
                assert response.status == 200, (name, path)


def test_rpc_errors_are_counted_by_code(
    metrics: Callable[[str], list[tuple[str, dict[str, str], float]]],
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    method = "/nlp.v1.Tasks/Get"
    before = value(metrics("gateway"), "nlp_rpc_duration_seconds_count", method=method)
    for task_id in ("not a task id", uuid.uuid4().hex):
        with pytest.raises(grpc.RpcError):
            tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=10)
    # The interceptor records a call just after its status went out: the client can be
    # quicker than that, so the scrape waits for both.
    deadline = time.monotonic() + 10
    while True:
        after = metrics("gateway")
        count = value(after, "nlp_rpc_duration_seconds_count", method=method)
        if count >= before + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert count == before + 2
    assert value(after, "nlp_rpc_duration_seconds_count", method=method, code="NOT_FOUND") >= 1
    assert (
        value(after, "nlp_rpc_duration_seconds_count", method=method, code="INVALID_ARGUMENT") >= 1
    )


def _until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def backlog(
    paused_worker: Callable[[], None], stack: LocalStack, tasks: tasks_pb2_grpc.TasksStub
) -> Iterator[tuple[Callable[[], None], list[str]]]:
    """Tasks submitted while the classification worker is frozen: the Celery queue fills to
    its high-water mark, the intake pauses, the rest waits in Kafka."""
    high = int(stack.env["NLP_QUEUE_HIGH_WATER__STANDARD"])
    ids = [
        tasks.Submit(submit_classification(f"Backlog item {i}."), timeout=30).task_id
        for i in range(4 * high)
    ]
    yield paused_worker, ids


def test_lag_and_queue_depth_gauges_follow_a_backlog(
    metrics: Callable[[str], list[tuple[str, dict[str, str], float]]],
    backlog: tuple[Callable[[], None], list[str]],
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    thaw, ids = backlog

    def intake(name: str) -> float:
        return value(metrics("classification-intake"), name, kind="classification", lane=LANE)

    assert _until(lambda: intake("nlp_celery_queue_depth") > 0), "queue depth never rose"
    assert _until(lambda: intake("nlp_intake_paused") == 1), "intake never paused"
    assert _until(lambda: intake("nlp_kafka_consumer_lag") > 0), "lag never rose"
    thaw()
    for task_id in ids:
        wait_terminal(tasks, task_id, timeout=120)
    assert _until(lambda: intake("nlp_kafka_consumer_lag") == 0), "lag did not drain"
    assert _until(lambda: intake("nlp_celery_queue_depth") == 0), "queue did not drain"
    assert intake("nlp_intake_paused") == 0
