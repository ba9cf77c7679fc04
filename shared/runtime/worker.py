"""The worker-side task runtime shared by every kind.

A kind supplies its engines (:mod:`shared.runtime.engines`); the runtime does everything
around them: skip tasks that already have a result (cancelled, or a redelivery),
end expired ones as DEADLINE_EXCEEDED, record RUNNING, run the request in a
micro-batch of its model, retry with backoff, store the terminal result, publish it
when asked and dead-letter a copy of tasks that keep failing.

Each Celery message (a :class:`~shared.transport.bundle.Bundle`) goes through the steps
of :meth:`WorkerRuntime.execute` as one :class:`~shared.runtime.delivery.Delivery`. The
process around the runtime (models, Celery) is :mod:`shared.runtime.worker_process`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from google.protobuf.message import Message
from opentelemetry import trace

from nlp.v1 import common_pb2, tasks_pb2
from nlp.v1.common_pb2 import ModelInfo
from shared.contracts.envelope import (
    AnyRequest,
    deadline_exceeded,
    envelope_lane,
    error_result,
    expired,
    request_of,
    seconds,
)
from shared.contracts.errors import Code, InvalidRequestError, code_name
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import WorkerMetrics
from shared.observability.telemetry import (
    ATTR_BATCH_ID,
    ATTR_BATCH_SIZE,
    ATTR_KIND,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_STATUS,
    ATTR_TASK_ID,
    attached,
    context_of,
    housekeeping,
    links_to,
    tracer,
)
from shared.runtime.batching import Batched, BatchRun, MicroBatcher
from shared.runtime.delivery import Delivery, Finished, RetryableTask
from shared.runtime.engines import (
    Job,
    ModelRegistry,
    StreamingEngine,
    TaskAborted,
    request_problems,
)
from shared.runtime.ports import RecordProducer, WorkerStore
from shared.transport.bundle import Bundle, encode_bundle
from shared.transport.deadletters import dead_letter_headers
from shared.transport.kafka import publish_results, task_headers
from shared.transport.outages import REDIS, Outages
from shared.transport.results import parse_done_notice

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerRuntime:
    """Runs one task of ``kind`` on the registry's engines with the platform's guarantees."""

    kind: str
    settings: WorkerSettings
    store: WorkerStore
    registry: ModelRegistry
    producer_factory: Callable[[], RecordProducer]
    metrics: WorkerMetrics
    worker_id: str = field(default_factory=worker_identity)
    outages: Outages = field(default_factory=lambda: Outages("worker"))
    _producer: RecordProducer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    batchers: dict[str, MicroBatcher[AnyRequest, Message]] = field(init=False, repr=False)
    batch_sizes: Counter[int] = field(default_factory=Counter, init=False, repr=False)
    _active: set[str] = field(default_factory=set, init=False, repr=False)
    # Separate from _lock: building the producer can take seconds; starting tasks must not wait.
    _active_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.streaming = {
            name: engine
            for name, engine in self.registry.engines.items()
            if isinstance(engine, StreamingEngine)
        }
        for engine in self.streaming.values():
            engine.bind(self.metrics)
        self.batchers = {
            name: MicroBatcher(
                engine.run_batch,
                self.settings.batch_max_size,
                self.settings.batch_max_wait_ms,
                name=name,
                on_batch=self._batch_counter(name),
                runners=self.settings.batch_runners,
                interactive_runners=self.settings.interactive_runners,
                bulk_nice=self.settings.bulk_runner_nice,
                lane_weights=self.settings.lane_weights.model_dump(),
                span_attributes={
                    ATTR_KIND: self.kind,
                    ATTR_MODEL_NAME: name,
                    ATTR_MODEL_VERSION: engine.info.version,
                },
            )
            for name, engine in self.registry.engines.items()
            if not isinstance(engine, StreamingEngine)
        }

    def start(self) -> None:
        """Start the heartbeat, the cancel watch (with streaming engines) and the
        micro-batchers' runners; before the first :meth:`execute`."""
        self._threads = [threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)]
        if self.streaming:
            self._threads.append(
                threading.Thread(target=self._watch_cancels, name="cancels", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        for batcher in self.batchers.values():
            batcher.start()

    def _batch_counter(self, model: str) -> Callable[[BatchRun], None]:
        def count(run: BatchRun) -> None:
            self.batch_sizes[run.size] += 1
            self.metrics.batch(model, run.size, run.seconds, run.tokens_in, run.tokens_out)

        return count

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            with self._active_lock:
                running = list(self._active)
            try:
                with housekeeping():
                    self.store.heartbeat(self.kind, running)
            except Exception as exc:  # Redis away: the next beat tries again
                if not self.outages.failed(exc):
                    log.warning("heartbeat failed", extra={"error": repr(exc)})
                continue
            self.outages.back(REDIS)

    def _watch_cancels(self) -> None:
        """Abort running streamed tasks that got a terminal result elsewhere (a cancel).

        Every terminal result is announced on the done channel; the ids of tasks still
        running here can only be ones that someone else finished: Tasks.Cancel, or a
        gateway whose client went away.
        """
        cancelled = TaskAborted(
            common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled while generating"
        )
        while not self._stop.is_set():
            pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
            try:
                with housekeeping():
                    pubsub.subscribe(self.settings.names.done_channel)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message is None or message.get("type") != "message":
                            continue
                        task_id = parse_done_notice(message["data"]).task_id
                        with self._active_lock:
                            if task_id not in self._active:
                                continue
                        for engine in self.streaming.values():
                            if engine.abort(task_id, cancelled):
                                log.info("aborting cancelled task", extra={"task_id": task_id})
            except Exception as exc:  # Redis away: subscribe again
                if not self.outages.failed(exc):
                    log.warning("cancel subscription lost", extra={"error": repr(exc)})
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def alive(self) -> bool:
        """Every streaming engine still works (liveness: a dead engine needs a restart)."""
        return all(engine.alive() for engine in self.streaming.values())

    @property
    def producer(self) -> RecordProducer:
        # Built on first use: most workers never dead-letter or publish.
        with self._lock:
            if self._producer is None:
                self._producer = self.producer_factory()
            return self._producer

    def close(self) -> None:
        self._stop.set()
        for batcher in self.batchers.values():
            batcher.close()
        for engine in self.streaming.values():
            engine.close()
        if self._producer is not None:
            self._producer.close(timeout=10)
        log.info("worker runtime closed", extra={"batch_sizes": dict(self.batch_sizes)})

    def execute(self, task: RetryableTask, bundle: Bundle) -> dict[str, int]:
        """Run one delivery of a bundle of tasks; returns how many ended in each status.

        Every task of the bundle goes to its model's micro-batcher at once, and each
        result is stored as soon as its batch is done. Tasks whose run raised are sent
        again together, as one Celery retry of this message carrying only them.

        Each task gets a ``run <kind>`` span in its own trace (the context its
        ``nlp_trace`` entry carries), linked to the Celery message's run span.
        """
        delivery = Delivery(bundle, int(task.request.retries), time.time())
        # The lane queue it came from: where an undecodable envelope's dead letter points.
        queue = str((task.request.delivery_info or {}).get("routing_key", ""))
        self._open(delivery, queue)
        try:
            self._finish(delivery, delivery.late)
            live = delivery.live
            flags = self.store.start(live, delivery.attempt)
            runnable = [e for e, ok in zip(live, flags, strict=True) if ok]
            for envelope, ok in zip(live, flags, strict=True):
                if not ok:  # already finished or cancelled
                    delivery.take_span(envelope.task_id).end()
            if len(runnable) < len(live):
                delivery.outcome["SKIPPED"] += len(live) - len(runnable)
                log.info(
                    "tasks already finished; skipped", extra={"count": len(live) - len(runnable)}
                )
            ids = {e.task_id for e in runnable}
            with self._active_lock:
                self._active |= ids
            try:
                failed = self._run(delivery, runnable)
            finally:
                with self._active_lock:
                    self._active -= ids
        finally:
            delivery.end_spans()  # retried, or an error escaped
        if failed:
            raise self._retry(task, delivery, failed)
        return dict(delivery.outcome)

    def _retry(
        self,
        task: RetryableTask,
        delivery: Delivery,
        failed: Sequence[tuple[tasks_pb2.TaskEnvelope, Exception]],
    ) -> Exception:
        """The Celery retry of this message, carrying only the ``failed`` tasks."""
        error = failed[0][1]
        countdown = self.settings.retry_backoff_s * 2**delivery.retries
        log.warning(
            "tasks failed; retrying",
            extra={
                "task_ids": [e.task_id for e, _ in failed],
                "attempt": delivery.attempt,
                "error": repr(error),
            },
        )
        self.metrics.retries.labels(self.kind).inc(len(failed))
        kwargs, headers = encode_bundle(delivery.retry_bundle([e for e, _ in failed]))
        return task.retry(kwargs=kwargs, headers=headers, exc=error, countdown=countdown)

    def _open(self, delivery: Delivery, queue: str = "") -> None:
        """Decode the bundle into ``delivery``: the live tasks, the expired ones (with
        their results), each task's trace context and its started ``run`` span."""
        message_link = links_to([trace.get_current_span()])
        for i, raw in enumerate(delivery.bundle.envelopes):
            try:
                envelope = Bundle.envelope(raw)
            except Exception as exc:  # the intake validated it: a corrupted Celery message
                log.error("undecodable envelope in Celery message", extra={"error": str(exc)})
                self._dead_letter_raw(
                    Bundle.raw(raw), f"undecodable envelope in worker: {exc}", queue
                )
                delivery.outcome["DEAD_LETTER"] += 1
                continue
            carrier = delivery.bundle.trace(i)
            delivery.contexts[envelope.task_id] = carrier
            delivery.spans[envelope.task_id] = tracer.start_span(
                f"run {self.kind}",
                context=context_of(carrier),
                links=message_link,
                attributes={
                    ATTR_TASK_ID: envelope.task_id,
                    ATTR_KIND: self.kind,
                    ATTR_BATCH_ID: envelope.batch_id,
                    "nlp.attempt": delivery.attempt,
                },
            )
            if expired(envelope, delivery.started):
                delivery.late.append((envelope, deadline_exceeded(envelope, "worker")))
            else:
                delivery.live.append(envelope)

    def _run(
        self, delivery: Delivery, envelopes: Sequence[tasks_pb2.TaskEnvelope]
    ) -> list[tuple[tasks_pb2.TaskEnvelope, Exception]]:
        """Run the tasks on their models and store each result as its batch ends; returns
        the tasks to retry (their spans ended as errors)."""
        retry_left = delivery.retries < self.settings.max_retries
        running: dict[Future[Batched[Message]], tuple[tasks_pb2.TaskEnvelope, ModelInfo]] = {}
        rejected: list[Finished] = []
        for envelope in envelopes:
            request = request_of(envelope)
            assert request is not None
            span = delivery.span(envelope.task_id)
            try:
                model_name, engine = self.registry.resolve(request.model)
            except InvalidRequestError as exc:
                # A model this deployment does not serve (yet): dead-lettered, so that
                # an operator can replay the task once a worker serves it.
                rejected.append(self._refuse(delivery, envelope, f"model not served: {exc}"))
                continue
            problems = request_problems(engine, request)
            if problems:
                # Invalid for its model (a direct producer's task; the gateway refuses
                # such requests): dead-lettered with the reason, as a malformed one is.
                rejected.append(self._refuse(delivery, envelope, "; ".join(problems)))
                continue
            span.set_attributes(
                {ATTR_MODEL_NAME: model_name, ATTR_MODEL_VERSION: engine.info.version}
            )
            if isinstance(engine, StreamingEngine):
                job = Job(
                    envelope.task_id,
                    delivery.attempt,
                    seconds(envelope.deadline),
                    span,
                    lane=envelope_lane(envelope),
                )
                future = engine.start(request, job)
            else:
                future = self.batchers[model_name].submit(
                    request, span, lane=envelope_lane(envelope)
                )
            running[future] = (envelope, engine.info)
        self._finish(delivery, rejected)
        failed: list[tuple[tasks_pb2.TaskEnvelope, Exception]] = []
        pending: set[Future[Batched[Message]]] = set(running)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            finished: list[Finished] = []
            for future in done:
                envelope, info = running[future]
                span = delivery.span(envelope.task_id)
                error = future.exception()
                if isinstance(error, Exception) and retry_left and not _final(error):
                    span.record_exception(error)
                    span.set_status(trace.StatusCode.ERROR, f"retrying: {type(error).__name__}")
                    failed.append((envelope, error))
                    continue
                result = self._result(delivery, envelope, info, future)
                result.attempt = delivery.attempt
                finished.append((envelope, result))
            self._finish(delivery, finished)
        return failed

    def _refuse(
        self, delivery: Delivery, envelope: tasks_pb2.TaskEnvelope, reason: str
    ) -> Finished:
        """A task this worker cannot run as asked: FAILED (INVALID_ARGUMENT), its envelope
        dead-lettered with ``reason``."""
        result = error_result(
            envelope, common_pb2.TASK_STATUS_FAILED, Code.INVALID_ARGUMENT, reason
        )
        result.attempt = delivery.attempt
        result.dead_lettered = True
        self._dead_letter_envelope(envelope, reason)
        return envelope, result

    def _result(
        self,
        delivery: Delivery,
        envelope: tasks_pb2.TaskEnvelope,
        info: ModelInfo,
        future: Future[Batched[Message]],
    ) -> tasks_pb2.TaskResult:
        """The terminal result of a task whose run ended (and is not retried)."""
        span = delivery.span(envelope.task_id)
        error = future.exception()
        if error is None:
            batched = future.result()
            result = tasks_pb2.TaskResult(
                task_id=envelope.task_id,
                kind=envelope.kind,
                status=common_pb2.TASK_STATUS_SUCCEEDED,
                model=info,
                correlation_id=envelope.reply.correlation_id,
                batch_size=batched.batch_size,
                batch_id=envelope.batch_id,
                tenant=envelope.tenant,
            )
            result.timings.batched_ms = batched.batched_s * 1000
            result.timings.inference_ms = batched.inference_s * 1000
            span.set_attribute(ATTR_BATCH_SIZE, batched.batch_size)
            getattr(result, self.kind).CopyFrom(batched.output)
            return result
        if isinstance(error, TaskAborted):  # cancelled or past its deadline
            result = error_result(envelope, error.status, error.code, error.message)
            result.model.CopyFrom(info)
            if error.output is not None:
                getattr(result, self.kind).CopyFrom(error.output)
            return result
        if isinstance(error, InvalidRequestError):  # the engine refused this input
            return error_result(
                envelope, common_pb2.TASK_STATUS_FAILED, Code.INVALID_ARGUMENT, str(error)
            )
        with attached(trace.set_span_in_context(span)):
            log.error(
                "task failed after retries",
                extra={"task_id": envelope.task_id, "error": repr(error)},
            )
            result = error_result(
                envelope,
                common_pb2.TASK_STATUS_FAILED,
                Code.INTERNAL,
                f"failed after {delivery.attempt} attempts: {type(error).__name__}: {error}",
                retryable=True,
            )
            self._dead_letter_envelope(envelope, result.error.message)
        result.dead_lettered = True
        return result

    def _finish(self, delivery: Delivery, finished: Sequence[Finished]) -> None:
        """Store terminal results (one round trip) and publish those that ask for it; ends
        their spans, each with a ``store result`` child around that round trip."""
        if not finished:
            return
        now = time.time()
        for envelope, result in finished:
            result.worker = self.worker_id
            result.replays = envelope.replays
            delivery.stamp(result, envelope, now)
        task_spans = [delivery.take_span(r.task_id) for _, r in finished]
        store_spans = [
            tracer.start_span("store result", context=trace.set_span_in_context(span))
            for span in task_spans
        ]
        # The group's Redis and Kafka calls go under the first task's span.
        with trace.use_span(store_spans[0], end_on_exit=False):
            publish = [
                result
                for envelope, result in finished
                if envelope.reply.publish_result or self.settings.publish_results
            ]
            if publish:  # the producer is made on first use
                publish_results(self.producer, self.settings.names.results_topic, publish)
            stored = self.store.finish_many([result for _, result in finished])
        for span in store_spans:
            span.end()
        for (envelope, result), ok, span in zip(finished, stored, task_spans, strict=True):
            status = common_pb2.TaskStatus.Name(result.status).removeprefix("TASK_STATUS_")
            delivery.outcome[status] += 1
            span.set_attribute(ATTR_STATUS, status)
            if result.HasField("error"):
                span.set_status(trace.StatusCode.ERROR, result.error.message[:200])
            span.end()
            if not ok:
                log.info("task already had a result; kept it", extra={"task_id": result.task_id})
                continue
            t = result.timings
            stages = {"queued": t.queued_ms, "waited": t.waited_ms, "ran": t.ran_ms}
            if t.inference_ms:
                stages |= {"batched": t.batched_ms, "inference": t.inference_ms}
            code = code_name(result.error.code) if result.HasField("error") else None
            self.metrics.finished(envelope_lane(envelope), status, code, stages)

    def _dead_letter_envelope(self, envelope: tasks_pb2.TaskEnvelope, reason: str) -> None:
        queue = self.settings.names.celery_queue(self.kind, envelope_lane(envelope))
        headers = dead_letter_headers(reason, "worker", queue, -1, -1, replays=envelope.replays)
        headers += task_headers(envelope.task_id, self.kind)
        self.metrics.dead_letters.labels(self.kind, "worker").inc()
        self.producer.send(
            self.settings.names.dead_letter_topic,
            value=envelope.SerializeToString(),
            key=envelope.task_id.encode(),
            headers=headers,
        ).get(timeout=30)

    def _dead_letter_raw(self, raw: bytes, reason: str, queue: str) -> None:
        self.metrics.dead_letters.labels(self.kind, "worker").inc()
        self.producer.send(
            self.settings.names.dead_letter_topic,
            value=raw,
            headers=dead_letter_headers(reason, "worker", queue, -1, -1),
        ).get(timeout=30)


def _final(error: BaseException) -> bool:
    """Outcomes that a retry would not change."""
    return isinstance(error, (TaskAborted, InvalidRequestError))
