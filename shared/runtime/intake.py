"""The intake: Kafka consumer group of one kind → that kind's Celery queues, lane by lane.

Guarantees (see the architecture): offsets are committed only after every
record of a poll was handed to Celery, dead-lettered or finished (every
``commit_interval_ms``, and before a rebalance or stop takes the partitions); a record that
cannot be decoded or validated goes to the dead-letter topic with the reason
and never blocks its partition; expired tasks end as DEADLINE_EXCEEDED without
running; a lane's partitions are paused while its Celery queue is above that lane's
high-water mark (polling continues, so the group membership stays alive).

Lanes: the group reads every lane's topic of the kind. Each poll's tasks are handed off
highest lane first, each lane to its own Celery queue; a lane is held back only by its
own queue, so a bulk backlog never stops interactive records (which the worker then
fetches first). The lane is the topic's: an envelope naming another is dead-lettered.

Outages: while Redis is unreachable nothing can be handed off (the Celery broker is
Redis), so the partitions stay paused; while Kafka is, polls bring nothing and dead
letters wait. Either way the loop goes on, logs the outage once and resumes by itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import confluent_kafka
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from nlp.v1 import common_pb2, tasks_pb2
from shared.contracts.envelope import (
    deadline_exceeded,
    decode_envelope,
    envelope_lane,
    error_result,
    expired,
    seconds,
    valid_task_id,
    validate_envelope,
)
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.idempotency import fingerprint
from shared.contracts.names import Names, lane_rank, lane_value
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import IntakeMetrics
from shared.observability.telemetry import (
    ATTR_BATCH_ID,
    ATTR_BUNDLE_SIZE,
    ATTR_KIND,
    ATTR_LANE,
    ATTR_TASK_ID,
    attached,
    carrier_of,
    context_of,
    extract_headers,
    housekeeping,
    messaging_attributes,
    tracer,
)
from shared.runtime.ports import (
    IntakeStore,
    KeyClaims,
    PendingSend,
    QueueLengths,
    RecordProducer,
    TaskSender,
    TaskSource,
)
from shared.transport.bundle import Bundle, Carrier, encode_bundle
from shared.transport.deadletters import dead_letter_headers
from shared.transport.idempotency import Ask, Outcome
from shared.transport.kafka import publish_results
from shared.transport.kafka_consumer import Partition, Record
from shared.transport.outages import KAFKA, REDIS, Outages, dependency_of

log = logging.getLogger(__name__)

# How long one lag measurement may hold the poll loop.
_LAG_TIMEOUT_S = 1.0

# A task on its way through the intake: its envelope and its ``process`` span.
Handed = tuple[tasks_pb2.TaskEnvelope, trace.Span]


@dataclass
class Intake:
    """Moves tasks of one kind from Kafka to Celery. Clients are built by the caller."""

    kind: str
    settings: WorkerSettings
    consumer: TaskSource
    producer: RecordProducer
    celery: TaskSender
    store: IntakeStore
    redis: QueueLengths
    metrics: IntakeMetrics
    # Claims of direct producers' idempotency keys (None: records are not checked).
    keys: KeyClaims | None = None
    outages: Outages = field(default_factory=lambda: Outages("intake"))
    stats: Counter[str] = field(default_factory=Counter)
    # Lanes whose topics are held back (their Celery queue went above its high water).
    paused: set[str] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic
    # Next offset to read per partition, handed off but not yet committed.
    uncommitted: dict[Partition, int] = field(default_factory=dict)
    _commit_at: float = 0.0
    # The Redis primary's replication id that the hand-offs went to ("": unknown).
    _primary: str = ""

    def __post_init__(self) -> None:
        self.topics = self.names.task_topics(self.kind)
        self.lane_of_topic = {topic: lane for lane, topic in self.topics.items()}
        self.queues = self.names.celery_queues(self.kind)

    @property
    def names(self) -> Names:
        return self.settings.names

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each lane's Celery queue."""
        return {lane: int(self.redis.llen(queue)) for lane, queue in self.queues.items()}

    def run(self, stop: threading.Event, on_first_poll: Callable[[], None] | None = None) -> None:
        """Poll until ``stop`` is set."""
        # Join the group only once the topics' partitions are known: a member that joins
        # without them gets no partitions assigned and may sit idle until some later
        # rebalance (seen right after a broker start).
        for topic in self.topics.values():
            while not self.consumer.partitions_for_topic(topic):
                if stop.wait(0.2):
                    return
        self._learn_primary()
        self.consumer.subscribe(list(self.topics.values()), on_revoke=self.revoked)
        try:
            self._poll_until(stop, on_first_poll)
        finally:
            # What was handed off is committed, whatever stopped the loop (once durable:
            # otherwise the next member reads it again).
            if self.durable():
                self.commit(self.uncommitted)

    def _poll_until(self, stop: threading.Event, on_first_poll: Callable[[], None] | None) -> None:
        first = True
        next_sweep = time.monotonic() + self.settings.sweep_interval_s
        self._commit_at = self.clock() + self.settings.commit_interval_ms / 1000
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
                try:
                    with housekeeping():
                        self.redeliver_silent()
                        self.measure_lag()
                except Exception as exc:
                    if not self.outages.failed(exc):
                        log.exception("redelivery sweep failed; will retry")
            with housekeeping():
                self.apply_backpressure()
            batch = self.consumer.poll(
                timeout_ms=self.settings.poll_timeout_ms,
                max_records=self.settings.poll_max_records,
            )
            if first and on_first_poll is not None:
                on_first_poll()
                first = False
            if batch:
                self.handle_batch(batch)
            self.commit_due()

    def measure_lag(self) -> None:
        """Consumer lag of each assigned partition, by lane: what KEDA scales on."""
        self.metrics.lag(
            {
                (self.lane_of_topic[tp.topic], tp.partition): lag
                # Briefly: this runs between polls (a leader that died must not stall
                # the hand-off for the lag's sake).
                for tp, lag in self.consumer.lag(timeout=_LAG_TIMEOUT_S).items()
            }
        )

    def apply_backpressure(self) -> None:
        """Pause each lane's partitions while its Celery queue is above its high water;
        resume them below its low water. Every lane's while Redis is away."""
        assigned = self.consumer.assignment()
        try:
            depths = self.queue_depths()
        except Exception as exc:
            if dependency_of(exc) != REDIS:
                raise
            # Nothing can be handed off (Celery's broker is Redis): fetch nothing meanwhile.
            self.outages.lost(REDIS, exc)
            self.consumer.pause(*assigned)
            return
        by_lane: dict[str, list[Partition]] = {lane: [] for lane in self.topics}
        for tp in assigned:
            by_lane[self.lane_of_topic[tp.topic]].append(tp)
        if self.outages.back(REDIS):
            self.consumer.resume(
                *[tp for lane, tps in by_lane.items() if lane not in self.paused for tp in tps]
            )
        for lane, depth in depths.items():
            self.metrics.queue_depth.labels(self.kind, lane).set(depth)
            if lane not in self.paused and depth >= self.settings.queue_high_water.of(lane):
                self.paused.add(lane)
                self.stats["paused"] += 1
                log.info(
                    "celery queue above high-water; pausing the lane",
                    extra={"lane": lane, "depth": depth},
                )
            elif lane in self.paused and depth <= self.settings.queue_low_water.of(lane):
                self.paused.discard(lane)
                self.consumer.resume(*by_lane[lane])
                log.info(
                    "celery queue below low-water; resuming the lane",
                    extra={"lane": lane, "depth": depth},
                )
            self.metrics.paused.labels(self.kind, lane).set(int(lane in self.paused))
            if lane in self.paused and by_lane[lane]:
                # Re-applied every loop: partitions assigned by a rebalance start unpaused.
                self.consumer.pause(*by_lane[lane])

    def handle_batch(self, batch: dict[Partition, list[Record]]) -> None:
        """Hand off, dead-letter or finish every record, then mark the poll's offsets for
        the next commit (:meth:`commit_due`); rewind on failure.

        The poll is one ``receive`` span linked to every record's producer; each record
        gets a ``process`` span in its own trace, ended once it is handed off.
        """
        # Highest lane first: its tasks are marked and handed off before the others.
        records = sorted(
            (r for rs in batch.values() for r in rs),
            key=lambda r: lane_rank(self.lane_of_topic[r.topic]),
        )
        contexts = [extract_headers(r.headers or ()) for r in records]
        topics = {r.topic for r in records}
        # One topic: named after it; several (lanes): no single destination to name.
        topic = topics.pop() if len(topics) == 1 else ""
        with tracer.start_as_current_span(
            f"receive {topic}" if topic else "receive",
            context=Context(),
            kind=trace.SpanKind.CONSUMER,
            links=[
                trace.Link(c)
                for ctx in contexts
                if (c := trace.get_current_span(ctx).get_span_context()).is_valid
            ],
            attributes={
                **(
                    messaging_attributes("kafka", topic, batch_count=len(records))
                    if topic
                    else {
                        "messaging.system": "kafka",
                        "messaging.batch.message_count": len(records),
                    }
                ),
                ATTR_KIND: self.kind,
            },
        ):
            spans = [
                tracer.start_span(
                    f"process {r.topic}",
                    context=ctx,
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        **messaging_attributes(
                            "kafka", r.topic, partition=r.partition, offset=r.offset
                        ),
                        ATTR_KIND: self.kind,
                        ATTR_LANE: self.lane_of_topic[r.topic],
                    },
                )
                for r, ctx in zip(records, contexts, strict=True)
            ]
            try:
                pending = self.process(list(zip(records, spans, strict=True)))
                for future in pending:
                    future.get(timeout=30)  # the dead letter must be durable before we commit
            except Exception as exc:
                if not self.outages.failed(exc):
                    log.exception("hand-off failed; rewinding the batch to retry it")
                for span in spans:
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR, "hand-off failed; rewound")
                for tp, rs in batch.items():
                    self.consumer.seek(tp, rs[0].offset)
                time.sleep(1.0)
                return
            finally:
                for span in spans:
                    span.end()
            self.uncommitted |= {tp: rs[-1].offset + 1 for tp, rs in batch.items()}

    def commit_due(self) -> None:
        """Commit the handed-off offsets once ``commit_interval_ms`` has passed, if Redis
        confirms that what was handed off is durable (see :meth:`durable`)."""
        if self.uncommitted and self.clock() >= self._commit_at:
            if self.durable():
                self.commit(self.uncommitted)
            self._commit_at = self.clock() + self.settings.commit_interval_ms / 1000

    def durable(self) -> bool:
        """Whether the Celery messages handed off so far survive a Redis failover.

        With replicas to wait for (``redis_wait_replicas``), a hand-off is durable once a
        replica confirms it; offsets are committed only then. A primary that changed
        since the hand-offs (a failover) may have lost them, confirmed or not: every
        partition is read again from its committed offset at once (tasks handed twice
        run once: the worker skips a task that has a result)."""
        try:
            primary, confirmed = self.store.durable_mark()
        except Exception as exc:
            if not self.outages.failed(exc):
                log.exception("could not confirm the hand-offs; commit later")
            return False
        if self._primary and primary and primary != self._primary:
            log.warning(
                "Redis failed over: reading again from the committed offsets",
                extra={"uncommitted": len(self.uncommitted)},
            )
            self._primary = primary
            self.uncommitted.clear()
            self.consumer.rewind()
            self.stats["rewinds"] += 1
            return False
        self._primary = primary or self._primary
        if not confirmed:
            log.info("hand-offs not yet confirmed by the Redis replicas; commit later")
        return confirmed

    def _learn_primary(self) -> None:
        """The primary's replication id before the first hand-off, so that a failover
        before the first confirmation is noticed too ("" while Redis is away)."""
        with contextlib.suppress(Exception):
            self._primary = self.store.durable_mark()[0]

    def revoked(self, partitions: set[Partition]) -> None:
        """A rebalance is taking ``partitions``: commit what was handed off from them."""
        self.commit({tp: o for tp, o in self.uncommitted.items() if tp in partitions})
        for tp in partitions:
            self.uncommitted.pop(tp, None)

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit ``offsets`` and forget them; a refused commit is logged, not raised."""
        if not offsets:
            return
        offsets = dict(offsets)  # often self.uncommitted itself, which changes below
        try:
            self.consumer.commit(offsets)
        except confluent_kafka.KafkaException as exc:
            # Partitions already taken by a rebalance: their new owner reads the records
            # again and skips the tasks that have a result. Others are tried again.
            if not self.outages.failed(exc):
                log.warning("offset commit refused; will retry or re-read: %s", exc)
            assigned = self.consumer.assignment()
            for tp in [tp for tp in offsets if tp not in assigned]:
                self.uncommitted.pop(tp, None)
            return
        self.outages.back(KAFKA)
        for tp, offset in offsets.items():
            if self.uncommitted.get(tp) == offset:
                del self.uncommitted[tp]

    def process(self, records: Sequence[tuple[Record, trace.Span]]) -> list[PendingSend]:
        """Process a poll's records together (one Redis round trip per step, not per
        record); returns the pending dead-letter sends."""
        pending: list[PendingSend] = []
        valid: list[Handed] = []
        record_of: dict[str, Record] = {}
        for record, span in records:
            checked = self.check(record, span)
            if isinstance(checked, tasks_pb2.TaskEnvelope):
                span.set_attributes(
                    {ATTR_TASK_ID: checked.task_id, ATTR_BATCH_ID: checked.batch_id}
                )
                valid.append((checked, span))
                record_of[checked.task_id] = record
            elif checked is not None:
                pending.append(checked)
        if not valid:
            return pending
        finished = self.store.finished([envelope.task_id for envelope, _ in valid])
        now = time.time()
        ready: list[Handed] = []
        for envelope, span in valid:
            lane = envelope_lane(envelope)
            if envelope.task_id in finished:
                self.stats["skipped"] += 1  # cancelled before it got here, or a replay
                self.metrics.outcome("skipped", lane=lane)
                span.set_attribute("nlp.intake.outcome", "skipped")
            elif expired(envelope, now):
                with trace.use_span(span, end_on_exit=False):
                    self.finish(envelope, deadline_exceeded(envelope, "intake"))
                self.stats["expired"] += 1
                self.metrics.outcome("expired", lane=lane)
                span.set_attribute("nlp.intake.outcome", "expired")
            else:
                ready.append((envelope, span))
        self.hand_off(self.first_of_keys(ready, record_of, pending))
        return pending

    def first_of_keys(
        self, ready: list[Handed], record_of: Mapping[str, Record], pending: list[PendingSend]
    ) -> list[Handed]:
        """``ready`` without the records an idempotency key already ran: a later record
        of the key ends CANCELLED (ALREADY_EXISTS, naming the key's task); one whose key
        was another request's is dead-lettered (its send joins ``pending``)."""
        keyed = [(e, span) for e, span in ready if e.idempotency_key]
        if not keyed or self.keys is None:
            return ready
        claims = self.keys.claim_many([_ask(e) for e, _ in keyed])
        dropped: set[str] = set()
        for (envelope, span), claim in zip(keyed, claims, strict=True):
            if claim.outcome is Outcome.WON or claim.task_id == envelope.task_id:
                continue  # the first record of its key, or that record again
            dropped.add(envelope.task_id)
            lane = envelope_lane(envelope)
            if claim.outcome is Outcome.CONFLICT:
                message = f"idempotency_key was used for a different request (task {claim.task_id})"
                result = error_result(
                    envelope, common_pb2.TASK_STATUS_FAILED, Code.INVALID_ARGUMENT, message
                )
                result.dead_lettered = True
                with trace.use_span(span, end_on_exit=False):
                    self.finish(envelope, result)
                pending.append(
                    self.dead_letter(record_of[envelope.task_id], f"invalid: {message}", span)
                )
                continue
            with trace.use_span(span, end_on_exit=False):
                self.finish(
                    envelope,
                    error_result(
                        envelope,
                        common_pb2.TASK_STATUS_CANCELLED,
                        Code.ALREADY_EXISTS,
                        f"a duplicate of task {claim.task_id} (same idempotency_key): not run",
                    ),
                )
            self.stats["duplicate"] += 1
            self.metrics.outcome("duplicate", lane=lane)
            span.set_attribute("nlp.intake.outcome", "duplicate")
        return [(e, span) for e, span in ready if e.task_id not in dropped]

    def check(self, record: Record, span: trace.Span) -> tasks_pb2.TaskEnvelope | PendingSend:
        """The record's envelope if it is a valid task; else dead-letter it and return
        the pending send."""
        lane = self.lane_of_topic[record.topic]
        try:
            envelope = decode_envelope(record.value)
        except Exception as exc:
            return self.dead_letter(record, f"undecodable: {type(exc).__name__}: {exc}", span)
        try:
            validate_envelope(envelope, self.kind, self.settings.limits, expected_lane=lane)
        except InvalidRequestError as exc:
            if valid_task_id(envelope.task_id):
                # Someone may be waiting on this id: tell them why it will never run.
                result = error_result(
                    envelope,
                    common_pb2.TASK_STATUS_FAILED,
                    Code.INVALID_ARGUMENT,
                    f"invalid task: {exc}",
                )
                result.dead_lettered = True
                span.set_attribute(ATTR_TASK_ID, envelope.task_id)
                with trace.use_span(span, end_on_exit=False):
                    self.finish(envelope, result)
            return self.dead_letter(record, f"invalid: {exc}", span)
        envelope.lane = lane_value(lane)  # a direct producer may leave it unspecified
        return envelope

    def redeliver_silent(self) -> None:
        """Hand off again tasks that went silent after hand-off (lost by a dead worker).

        Tasks are idempotent by id, so a task that was only slow runs at most twice
        and keeps its first result.
        """
        silent = self.store.silent_tasks(
            self.kind,
            self.settings.redeliver_after_s,
            queue_empty=not any(self.queue_depths().values()),
        )
        for data, carrier in silent:
            envelope = decode_envelope(data)
            if expired(envelope):
                self.finish(envelope, deadline_exceeded(envelope, "redelivery"))
                continue
            self.stats["redelivered"] += 1
            self.metrics.outcome("redelivered", lane=envelope_lane(envelope))
            # The re-sent task continues its own trace (kept with its QUEUED state), even
            # though the sweep runs outside any.
            with attached(otel_context.Context()):
                span = tracer.start_span(
                    f"redeliver {self.topics[envelope_lane(envelope)]}",
                    context=context_of(carrier),
                    attributes={ATTR_TASK_ID: envelope.task_id, ATTR_KIND: self.kind},
                )
                with trace.use_span(span, end_on_exit=True):
                    log.warning("re-sending a silent task", extra={"task_id": envelope.task_id})
                    self.hand_off([(envelope, span)])

    def hand_off(self, tasks: Sequence[Handed]) -> None:
        """Record the tasks as QUEUED (in flight), then publish them to their lanes' Celery
        queues, highest lane first, in bundles of at most ``handoff_max_tasks`` (per-message
        costs are paid per bundle; a bundle never mixes lanes).

        Each task's ``nlp_trace`` entry is its own ``process`` span; the Celery publish
        span goes under the bundle's first task.
        """
        if not tasks:
            return
        carriers = [carrier_of(trace.set_span_in_context(span)) for _, span in tasks]
        self.store.mark_queued([envelope for envelope, _ in tasks], carriers)
        handed_at = time.time()
        by_lane: dict[str, list[tuple[Handed, Carrier]]] = {lane: [] for lane in self.queues}
        for task, carrier in zip(tasks, carriers, strict=True):
            by_lane[envelope_lane(task[0])].append((task, carrier))
        # One broker connection for the whole poll instead of one per message.
        with self.celery.producer_or_acquire() as producer:
            for lane, lane_tasks in by_lane.items():
                if lane_tasks:
                    self._send_lane(lane, lane_tasks, handed_at, producer)
        self.stats["handed"] += len(tasks)

    def _send_lane(
        self,
        lane: str,
        tasks: Sequence[tuple[Handed, Carrier]],
        handed_at: float,
        producer: object,
    ) -> None:
        queue = self.queues[lane]
        # Even bundles: 20 tasks with a limit of 16 go as 10 + 10, not 16 + 4.
        count = -(-len(tasks) // self.settings.handoff_max_tasks)
        size = -(-len(tasks) // count)
        for start in range(0, len(tasks), size):
            bundle = [task for task, _ in tasks[start : start + size]]
            for _, span in bundle:
                span.set_attribute(ATTR_BUNDLE_SIZE, len(bundle))
            # A lone task keeps its id in Celery's tools (inspect, revoke).
            message_id = bundle[0][0].task_id if len(bundle) == 1 else uuid.uuid4().hex
            # By hand, not by Celery's instrumentation: its publish hooks look the task
            # up in this process's registry, and the intake only sends it by name.
            with tracer.start_as_current_span(
                f"publish {queue}",
                context=trace.set_span_in_context(bundle[0][1]),
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    **messaging_attributes(
                        "celery", queue, message_id=message_id, batch_count=len(bundle)
                    ),
                    ATTR_KIND: self.kind,
                    ATTR_LANE: lane,
                },
            ):
                kwargs, bundle_headers = encode_bundle(
                    Bundle.of(
                        [e for e, _ in bundle],
                        handed_at,
                        [carrier for _, carrier in tasks[start : start + size]],
                    )
                )
                # traceparent: the worker's Celery run span continues this publish;
                # nlp_trace: each task's own context.
                headers = carrier_of() | bundle_headers
                self.celery.send_task(
                    Names.celery_task(self.kind),
                    kwargs=kwargs,
                    task_id=message_id,
                    queue=queue,
                    headers=headers,
                    producer=producer,
                )
            self.stats["messages"] += 1
            self.metrics.handoff_size.labels(self.kind, lane).observe(len(bundle))
        self.metrics.outcome("handed", len(tasks), lane=lane)

    def finish(self, envelope: tasks_pb2.TaskEnvelope, result: tasks_pb2.TaskResult) -> None:
        """Store a terminal result decided here, published first when the task asks."""
        if envelope.reply.publish_result or self.settings.publish_results:
            publish_results(self.producer, self.names.results_topic, [result])
        self.store.finish(result)

    def dead_letter(self, record: Record, reason: str, span: trace.Span) -> PendingSend:
        self.stats["dead_lettered"] += 1
        self.metrics.outcome("dead_lettered", lane=self.lane_of_topic.get(record.topic, ""))
        self.metrics.dead_lettered("intake")
        span.set_status(trace.StatusCode.ERROR, f"dead-lettered: {reason[:200]}")
        with trace.use_span(span, end_on_exit=False):
            log.warning(
                "dead-lettering record",
                extra={"partition": record.partition, "offset": record.offset, "reason": reason},
            )
            headers = dead_letter_headers(
                reason,
                "intake",
                record.topic,
                record.partition,
                record.offset,
                record.headers or (),
            )
            return self.producer.send(
                self.names.dead_letter_topic,
                value=record.value or b"",
                key=record.key,
                headers=headers,
            )


def _ask(envelope: tasks_pb2.TaskEnvelope) -> Ask:
    """The claim of a record's key: what it asks for is its request, lane, batch and
    reply options (not its task id, times or key)."""
    asked = tasks_pb2.TaskEnvelope()
    asked.CopyFrom(envelope)
    for name in ("task_id", "created_at", "deadline", "idempotency_key"):
        asked.ClearField(name)
    return Ask(
        envelope.tenant,
        envelope.idempotency_key,
        fingerprint("envelope", asked),
        envelope.task_id,
        envelope.kind,
        seconds(envelope.deadline),
    )


def serve(kind: str, settings: WorkerSettings) -> None:
    """Entry point of a kind's intake process: build the clients, run until SIGTERM/SIGINT."""
    import signal

    from shared.observability import telemetry
    from shared.observability.logs import configure_logging
    from shared.observability.metrics import serve_endpoints
    from shared.observability.readiness import serving
    from shared.transport.celery_app import make_celery
    from shared.transport.idempotency import RecordKeys
    from shared.transport.kafka import make_producer
    from shared.transport.kafka_consumer import make_consumer
    from shared.transport.outages import redis_client, until_reachable
    from shared.transport.results import result_store

    service = f"{kind}-intake"
    configure_logging(service, settings.log_level)
    telemetry.setup_tracing(f"nlp-{service}")
    telemetry.instrument_kafka_python()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = redis_client(settings)
    telemetry.instrument_redis(client)
    outages = Outages(service)
    consumer = make_consumer(settings, settings.names.consumer_group(kind), outages)
    producer = until_reachable(lambda: make_producer(settings), outages, stop)
    if producer is None:
        return  # stopped while Kafka was away
    intake = Intake(
        kind=kind,
        settings=settings,
        consumer=consumer,
        producer=producer,
        celery=make_celery(kind, settings),
        store=result_store(client, settings),
        redis=client,
        metrics=IntakeMetrics(kind),
        keys=RecordKeys(client, settings.names, settings.result_ttl_s),
        outages=outages,
    )
    endpoints = serve_endpoints(settings, intake.metrics.registry)

    def ready() -> None:
        serving(settings, endpoints)

    log.info("intake starting", extra={"topics": list(intake.topics.values())})
    try:
        intake.run(stop, on_first_poll=ready)
    finally:
        consumer.close()
        producer.close(timeout=10)
        log.info("intake stopped", extra={"stats": dict(intake.stats)})
