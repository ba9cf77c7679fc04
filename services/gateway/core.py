"""The gateway's publishing core, shared by every servicer.

:class:`Gateway` validates requests into envelopes, admits them against their tenant's
quota, publishes them to Kafka (one at a time or a batch message's items at once), waits
for the result of a synchronous RPC (stopping the task when its caller goes away) and
turns a result into the RPC's output or status. The caller's tenant is passed in by the
RPC handler (``owner``); nothing here reads it from the request's context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.context import Context

from nlp.v1 import common_pb2, generation_pb2, tasks_pb2
from services.gateway.auth import QuotaExceededError, Quotas, Tenant, abort_quota
from services.gateway.dependencies import Dependencies
from services.gateway.interceptors import Ctx
from services.gateway.metrics import GatewayMetrics
from services.gateway.relay import RelayEnded, relay_tokens
from services.gateway.settings import Settings
from shared.contracts.envelope import (
    TERMINAL_STATUSES,
    AnyRequest,
    error_result,
    make_envelope,
    seconds,
    timestamp,
    validate_request,
)
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.idempotency import batch_item_key, fingerprint, key_problems
from shared.contracts.names import (
    LANE_NAMES,
    METADATA_IDEMPOTENCY_KEY,
    kind_name,
    lane_name,
    lane_value,
)
from shared.observability.telemetry import (
    ATTR_BATCH_ID,
    ATTR_KIND,
    ATTR_LANE,
    ATTR_TASK_ID,
    EVENT_FIRST_CHUNK,
    inject_headers,
    links_to,
    messaging_attributes,
    tracer,
)
from shared.transport.catalog import ModelCatalog
from shared.transport.idempotency import Ask, Claim, IdempotencyKeys, Outcome
from shared.transport.kafka import AsyncProducer, Headers, result_record, task_headers
from shared.transport.outages import (
    KAFKA,
    REDIS,
    UNAVAILABLE_DETAILS,
    KafkaUnavailableError,
    Outages,
    PublishUnconfirmedError,
    ReplicasUnconfirmedError,
)
from shared.transport.results import AsyncResultStore
from shared.transport.streams import TokenStreamHub
from shared.transport.waiter import ResultWaiter, Waiting

log = logging.getLogger(__name__)

_STATUS_CODES = {
    common_pb2.TASK_STATUS_CANCELLED: grpc.StatusCode.CANCELLED,
    common_pb2.TASK_STATUS_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_GRPC_CODES = {int(c.value[0]): c for c in grpc.StatusCode}
_DEADLINE_SLACK_S = 0.1
# An unpublished idempotency claim is taken over this long after the publish timeout.
_CLAIM_LEASE_SLACK_S = 5.0
_CLAIM_POLL_S = 0.02
_MAX_ITEM_ID_CHARS = 256
# An answer leaves the gateway this long before its caller's deadline.
_ANSWER_MARGIN_S = 0.25


# gRPC drops a status message whose header (percent-encoded) is over 2 KiB: the client
# would see no message at all.
_MAX_DETAILS_ENCODED = 1800


def _fit(details: str) -> str:
    """``details`` cut to what fits the status header, saying that it was cut."""
    size = 0
    for i, char in enumerate(details):
        size += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode())
        if size > _MAX_DETAILS_ENCODED:
            return details[:i] + " ... (message truncated)"
    return details


def _enqueue_failed(exc: BaseException | None) -> str:
    """What a caller is told of a task that did not reach Kafka: no internals."""
    if isinstance(exc, BufferError):
        return "the task queue is overloaded (the gateway's send buffer is full); retry later"
    if isinstance(exc, ReplicasUnconfirmedError):
        return UNAVAILABLE_DETAILS[REDIS]
    return UNAVAILABLE_DETAILS[KAFKA]


async def _abort(context: Ctx, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, _fit(details))
    raise AssertionError("unreachable")  # context.abort always raises


@dataclass
class SyncTask:
    """A published task whose caller waits for it."""

    envelope: tasks_pb2.TaskEnvelope
    # None: the task was published before (an idempotency key's); wait() looks it up.
    registered: Waiting | None
    deadline: float  # time.monotonic()
    # The caller got the task's terminal outcome: nothing is left to stop when it goes.
    settled: bool = False
    # Made under an idempotency key: it outlives its caller, whose retry takes it up.
    keyed: bool = False

    def remaining(self) -> float:
        """Seconds left until the task's deadline."""
        return self.deadline - time.monotonic()

    @property
    def deadline_s(self) -> float:
        """The deadline the envelope was given, in seconds from its creation."""
        return seconds(self.envelope.deadline) - seconds(self.envelope.created_at)


class Gateway:
    """What every servicer shares: validation, publishing, waiting."""

    def __init__(
        self,
        settings: Settings,
        producer: AsyncProducer,
        client: aioredis.Redis,
        metrics: GatewayMetrics,
        interactive_producer: AsyncProducer | None = None,
        outages: Outages | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        # Publishes settings.interactive_kinds with a shorter linger than the batching one.
        self.interactive_producer = interactive_producer
        self.metrics = metrics
        self.deps = Dependencies(
            [p for p in (producer, interactive_producer) if p is not None],
            outages or Outages("gateway"),
        )
        self.quotas = Quotas(client, settings.names)
        self.store = AsyncResultStore(
            client,
            settings.names,
            settings.result_ttl_s,
            settings.redis_wait_replicas,
            settings.redis_wait_timeout_ms,
        )
        self.waiter = ResultWaiter(client, self.store, self.deps.outages)
        self.streams = TokenStreamHub(client, settings.names)
        metrics.streams_relayed.set_function(lambda: self.streams.followed)
        self.catalog = ModelCatalog(client, settings.names)
        self.keys = IdempotencyKeys(
            client,
            settings.names,
            settings.idempotency_window_s,
            lease_s=settings.publish_timeout_s + _CLAIM_LEASE_SLACK_S,
        )
        self.client = client
        self._abandoning: set[asyncio.Future[bool]] = set()

    async def start(self) -> None:
        """Start the shared readers: the result subscription and the token stream hub."""
        await self.waiter.start()
        await self.streams.start()

    async def stop(self) -> None:
        """Stop the shared readers."""
        await self.streams.stop()
        await self.waiter.stop()

    async def publish(self, envelope: tasks_pb2.TaskEnvelope, context: Ctx | None = None) -> None:
        """Produce the envelope and wait for the broker's acks=all acknowledgement (no
        longer than the caller of ``context`` waits: an answer past its deadline is a
        DEADLINE_EXCEEDED of its own, where UNAVAILABLE tells it to retry)."""
        within = None if context is None else context.time_remaining()
        (error,) = await self.publish_many([envelope], within_s=within)
        if error is not None:
            raise error

    async def admit(
        self,
        context: Ctx,
        owner: Tenant,
        envelope: tasks_pb2.TaskEnvelope,
        key: str = "",
        claim: Claim | None = None,
    ) -> None:
        """Count the task in its tenant's (``owner``'s) in-flight quota, or RESOURCE_EXHAUSTED
        (releasing the idempotency ``key`` the request won: nothing was published)."""
        try:
            await self.quotas.admit(owner, [envelope])
        except QuotaExceededError as exc:
            if claim is not None and claim.outcome is Outcome.WON:
                await self.keys.release(envelope.tenant, key, envelope.task_id)
            await abort_quota(context, exc)

    async def submit(
        self,
        context: Ctx,
        owner: Tenant,
        envelope: tasks_pb2.TaskEnvelope,
        key: str = "",
        claim: Claim | None = None,
    ) -> None:
        """Record PENDING and publish; the task id is valid once this returns. With the
        ``claim`` of an idempotency ``key`` (WON or TAKEN_OVER): marked published, or
        released when the task surely never reached Kafka."""
        await self.admit(context, owner, envelope, key, claim)
        # Recorded first so that a Get right after Submit never says NOT_FOUND.
        (recorded,) = await self.store.record_pending([envelope])
        try:
            await self.publish(envelope, context)
        except Exception as exc:
            if _unsent(claim, exc):
                if recorded:
                    await self.store.clear_states([envelope.task_id])
                    await self.quotas.release(owner, [envelope.task_id])
                if claim is not None:
                    await self.keys.release(envelope.tenant, key, envelope.task_id)
            await self.publish_failed(context, envelope, exc)
        if claim is not None:
            await self.keys.published(envelope.tenant, key, envelope.task_id)

    async def claimed(
        self, context: Ctx, envelope: tasks_pb2.TaskEnvelope, key: str, fp: str
    ) -> Claim:
        """Claim ``key`` for the envelope's task (WON or TAKEN_OVER: publish it, then
        mark it published; EXISTING: the key's task is in Kafka); ALREADY_EXISTS for a key
        of another request (``fp``), UNAVAILABLE when an earlier claim stays unsettled."""
        # The tenant is the owner's, or as given in development mode.
        ask = Ask(
            envelope.tenant, key, fp, envelope.task_id, envelope.kind, seconds(envelope.deadline)
        )
        (claim,) = await self.keys.claim_settled([ask], _CLAIM_POLL_S)
        if claim.outcome is Outcome.CONFLICT:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"idempotency_key was used for a different request (task {claim.task_id})",
            )
        if claim.outcome is Outcome.PENDING:
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "an earlier request with this idempotency_key is still being enqueued",
            )
        if claim.outcome is Outcome.TAKEN_OVER:
            _adopt(envelope, claim)
        return claim

    async def submit_once(
        self, context: Ctx, owner: Tenant, envelope: tasks_pb2.TaskEnvelope, key: str, fp: str
    ) -> tasks_pb2.SubmitResponse:
        """:meth:`submit` under an idempotency key: the key's task if it has one (the same
        request, ``fp``), ALREADY_EXISTS if it was another request's, else this task."""
        claim = await self.claimed(context, envelope, key, fp)
        if claim.outcome is Outcome.EXISTING:
            return tasks_pb2.SubmitResponse(
                task_id=claim.task_id,
                kind=claim.kind,  # type: ignore[arg-type]
                deadline=timestamp(claim.deadline_s),
            )
        await self.submit(context, owner, envelope, key, claim)
        return tasks_pb2.SubmitResponse(
            task_id=envelope.task_id, kind=envelope.kind, deadline=envelope.deadline
        )

    async def build_envelope(
        self,
        owner: Tenant,
        kind: str,
        request: AnyRequest,
        deadline_s: float,
        *,
        lane: int = common_pb2.LANE_UNSPECIFIED,
        default_lane: int = common_pb2.LANE_INTERACTIVE,
        tenant: str = "",
        reply: tasks_pb2.ReplyOptions | None = None,
        batch_id: str = "",
    ) -> tasks_pb2.TaskEnvelope:
        """A validated envelope for the request; InvalidRequestError otherwise (and
        PermissionError for a lane above the tenant's). The caller's tenant ``owner`` owns
        it (in development mode: ``tenant`` as given). No ``lane``: ``default_lane``, or the
        tenant's highest lane when that is lower."""
        lane = lane_of(owner, lane, default_lane)
        validate_request(kind, request, owner.request_limits(self.settings.limits))
        await self.catalog.check(kind, request)
        return make_envelope(
            kind,
            request,
            deadline_s=deadline_s,
            lane=lane,
            tenant=owner.name if owner.isolated else tenant,
            reply=reply,
            batch_id=batch_id,
        )

    async def submitted_envelope(
        self, owner: Tenant, request: tasks_pb2.SubmitRequest, batch_id: str = ""
    ) -> tasks_pb2.TaskEnvelope:
        """The envelope of a Tasks submission; InvalidRequestError otherwise."""
        kind = request.WhichOneof("request")
        if kind is None:
            raise InvalidRequestError(
                ["one of generation, classification, ner or summarization is required"]
            )
        if request.deadline_ms < 0:
            raise InvalidRequestError(["deadline_ms must be >= 0"])
        if owner.isolated and request.tenant and request.tenant != owner.name:
            raise PermissionError("the tenant is the one your credentials belong to")
        deadline_s = min(
            request.deadline_ms / 1000 if request.deadline_ms else self.settings.task_deadline_s,
            self.settings.max_deadline_s,
        )
        return await self.build_envelope(
            owner,
            kind,
            getattr(request, kind),
            deadline_s,
            lane=request.lane,
            default_lane=common_pb2.LANE_BATCH if batch_id else common_pb2.LANE_STANDARD,
            tenant=request.tenant,
            reply=request.reply,
            batch_id=batch_id,
        )

    async def envelope(
        self, context: Ctx, owner: Tenant, kind: str, request: AnyRequest, deadline_s: float
    ) -> tasks_pb2.TaskEnvelope:
        """A validated envelope for a synchronous request, or INVALID_ARGUMENT."""
        try:
            return await self.build_envelope(owner, kind, request, deadline_s)
        except InvalidRequestError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def publish_many(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        own_traces: bool = False,
        within_s: float | None = None,
    ) -> list[Exception | None]:
        """:meth:`publish` for many envelopes at once; one outcome each (None: in Kafka).

        Each envelope gets a ``publish`` span whose context travels in its Kafka headers:
        a child of the current span (the RPC's), or with ``own_traces`` (batch items: one
        trace per task) the root of a new trace, linked to the current span.
        """
        if not envelopes:
            return []
        links = links_to([trace.get_current_span()]) if own_traces else None
        messages = []
        spans = []
        for envelope in envelopes:
            kind = kind_name(envelope.kind)
            lane = lane_name(envelope.lane)
            topic = self.settings.names.task_topic(kind, lane)
            span = tracer.start_span(
                f"publish {topic}",
                context=Context() if own_traces else None,
                kind=trace.SpanKind.PRODUCER,
                links=links,
                attributes={
                    **messaging_attributes("kafka", topic),
                    ATTR_TASK_ID: envelope.task_id,
                    ATTR_KIND: kind,
                    ATTR_LANE: lane,
                    ATTR_BATCH_ID: envelope.batch_id,
                },
            )
            spans.append(span)
            headers = task_headers(
                envelope.task_id, kind, inject_headers(trace.set_span_in_context(span))
            )
            # No key: librdkafka's sticky partitioner then fills one partition's batch at
            # a time (fewer, larger produce requests: measured 1.65 vs 2.7 ms broker CPU
            # per task). The id is in the headers and the envelope.
            messages.append((topic, envelope.SerializeToString(), None, headers))
        began = time.perf_counter()
        wait_s = self.settings.publish_timeout_s
        if within_s is not None:
            # Answer before the caller gives up (a failover can hold acks for seconds).
            wait_s = max(0.05, min(wait_s, within_s - _ANSWER_MARGIN_S))
        try:
            async with asyncio.timeout(wait_s):
                outcomes = await self.send_tasks(envelopes, messages)
        except TimeoutError:
            outcomes = [PublishUnconfirmedError("no acknowledgement in time")] * len(envelopes)
        self.metrics.publish_seconds.observe(time.perf_counter() - began)
        for envelope, span, outcome in zip(envelopes, spans, outcomes, strict=True):
            if outcome is None:
                self.metrics.submitted.labels(kind_name(envelope.kind)).inc()
            else:
                span.record_exception(outcome)
                span.set_status(trace.StatusCode.ERROR, f"not enqueued: {outcome}")
            span.end()
        return outcomes

    async def send_tasks(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        messages: Sequence[tuple[str, bytes, bytes | None, Headers]],
    ) -> list[Exception | None]:
        """Each message through the producer of its kind; outcomes in order."""
        fast = self.interactive_producer
        interactive = self.settings.interactive_kinds
        if fast is None or not interactive:
            return await self.producer.send_many(messages)
        picks = [kind_name(e.kind) in interactive for e in envelopes]
        if all(picks):
            return await fast.send_many(messages)
        if not any(picks):
            return await self.producer.send_many(messages)
        fast_at = [i for i, p in enumerate(picks) if p]
        slow_at = [i for i, p in enumerate(picks) if not p]
        fast_out, slow_out = await asyncio.gather(
            fast.send_many([messages[i] for i in fast_at]),
            self.producer.send_many([messages[i] for i in slow_at]),
        )
        outcomes: list[Exception | None] = [None] * len(messages)
        for at, out in ((fast_at, fast_out), (slow_at, slow_out)):
            for i, outcome in zip(at, out, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def publish_result(self, result: tasks_pb2.TaskResult) -> None:
        """Produce a result decided here to the results topic."""
        key, value, headers = result_record(result)
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await self.producer.send(self.settings.names.results_topic, value, key, headers)
        except TimeoutError as exc:
            raise PublishUnconfirmedError("no acknowledgement in time") from exc

    async def cancel(
        self, current: tasks_pb2.TaskResult, message: str
    ) -> tasks_pb2.TaskResult | None:
        """End the unfinished task ``current`` (its state) as CANCELLED with ``message``;
        the result, or None when another terminal result came first."""
        envelope = await self.store.envelope(current.task_id) or tasks_pb2.TaskEnvelope(
            task_id=current.task_id, kind=current.kind
        )
        cancelled = error_result(
            envelope, common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, message
        )
        if envelope.reply.publish_result:
            # Before storing, as the workers do: the results topic may repeat a result
            # but never miss one.
            await self.publish_result(cancelled)
        return cancelled if await self.store.finish(cancelled) else None

    async def submit_batch_items(
        self,
        owner: Tenant,
        batch_id: str,
        items: Sequence[tasks_pb2.BatchItem],
        first_index: int,
        publish_results: bool,
        keyed: bool = False,
    ) -> tasks_pb2.SubmitBatchResponse:
        """Validate, record and publish one message's items; one ack per item. ``keyed``
        (a batch id the client chose): an item with an item id is claimed under them, so
        that a re-run of the batch acks the tasks it made and submits nothing twice."""
        response = tasks_pb2.SubmitBatchResponse(batch_id=batch_id)
        accepted: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]] = []
        keys: dict[str, str] = {}  # task id → its item's idempotency key
        prints: dict[str, str] = {}  # task id → its item's fingerprint
        for index, item in enumerate(items, first_index):
            ack = response.acks.add(item_id=item.item_id, index=index)
            try:
                if len(item.item_id) > _MAX_ITEM_ID_CHARS:
                    raise InvalidRequestError([f"item_id is over {_MAX_ITEM_ID_CHARS} characters"])
                item.task.reply.correlation_id = item.item_id
                item.task.reply.publish_result |= publish_results
                envelope = await self.submitted_envelope(owner, item.task, batch_id)
            except InvalidRequestError as exc:
                ack.error.code = int(Code.INVALID_ARGUMENT)
                ack.error.message = str(exc)
                continue
            except PermissionError as exc:
                ack.error.code = int(Code.PERMISSION_DENIED)
                ack.error.message = str(exc)
                continue
            accepted.append((ack, envelope))
            if keyed and item.item_id:
                keys[envelope.task_id] = batch_item_key(batch_id, item.item_id)
                prints[envelope.task_id] = fingerprint("batch-item", item.task)
        adopted: set[str] = set()  # task ids of claims taken over
        accepted, known = await self._claim_items(accepted, keys, prints, adopted)
        try:
            await self.quotas.admit(owner, [envelope for _, envelope in accepted])
        except QuotaExceededError as exc:
            for ack, _ in accepted:
                ack.error.code = int(Code.RESOURCE_EXHAUSTED)
                ack.error.message = f"{exc}; retry after {exc.retry_after_ms} ms"
                ack.error.retryable = True
            # Those taken over count when recorded (by this run or the one that died).
            rejected = len(items) - known - len(adopted)
            await self.store.count_batch(batch_id, 0, rejected, owner.name)
            # None has a task id: the claims won are released, those taken over kept.
            await self._settle_items(accepted, keys, adopted)
            return response
        # Counted as submitted with their PENDING state (one round trip); the rare
        # items Kafka then refuses are moved to rejected. Items a re-run found made
        # already count as neither, nor do those taken over that the gateway which died
        # had recorded.
        recorded = await self.store.record_pending(
            [envelope for _, envelope in accepted],
            batch=(batch_id, len(items) - len(accepted) - known),
            tenant=owner.name,
        )
        # The batch's counts must outlive a Redis failover: with replicas to wait for,
        # nothing is published (nor acked) until they have them.
        confirmed = await self.store.confirm()
        kept = await self._publish_items(
            owner, batch_id, accepted, recorded, keys, adopted, confirmed
        )
        await self._settle_items(accepted, keys, kept)
        return response

    async def _publish_items(
        self,
        owner: Tenant,
        batch_id: str,
        accepted: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]],
        recorded: list[bool],
        keys: dict[str, str],
        adopted: set[str],
        confirmed: bool = True,
    ) -> set[str]:
        """Publish the recorded items and ack each; those Kafka refused (all of them when
        their records are not ``confirmed``) are forgotten and counted rejected. The task
        ids whose claims stay unpublished (their tasks may be in Kafka) are returned."""
        outcomes: Sequence[Exception | None] = (
            await self.publish_many([e for _, e in accepted], own_traces=True)
            if confirmed
            else [ReplicasUnconfirmedError()] * len(accepted)
        )
        lost: list[str] = []
        kept = set(adopted)  # claims not released: their tasks may be in Kafka
        for (ack, envelope), error, fresh in zip(accepted, outcomes, recorded, strict=True):
            if error is not None:
                ack.error.code = int(Code.UNAVAILABLE)
                ack.error.message = _enqueue_failed(error)
                ack.error.retryable = True
                if envelope.task_id in keys and isinstance(error, PublishUnconfirmedError):
                    kept.add(envelope.task_id)
                if fresh and envelope.task_id not in kept:
                    lost.append(envelope.task_id)
            else:
                ack.task_id = envelope.task_id
        if not confirmed:
            log.warning(
                "batch items not enqueued: the Redis replicas did not confirm their records",
                extra={"batch_id": batch_id, "count": len(lost)},
            )
        elif any(error is not None for error in outcomes):
            log.log(
                logging.DEBUG if self.deps.missing([KAFKA]) else logging.ERROR,
                "batch items not enqueued",
                extra={"batch_id": batch_id, "count": len(lost), "error": repr(outcomes[0])},
            )
        if lost:
            await self.store.clear_states(lost, batch_id, owner.name)
            await self.quotas.release(owner, lost)
        return kept

    async def _claim_items(
        self,
        accepted: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]],
        keys: dict[str, str],
        prints: dict[str, str],
        adopted: set[str],
    ) -> tuple[list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]], int]:
        """Claim the keyed items' keys: those to submit (the ids of those taken over
        added to ``adopted``), and how many were made before (acked with their task
        ids). A key of another request fails its item (ALREADY_EXISTS); one still being
        enqueued elsewhere is retryable UNAVAILABLE."""
        if not keys:
            return accepted, 0
        keyed = [(a, e) for a, e in accepted if e.task_id in keys]
        asks = [
            Ask(
                e.tenant, keys[e.task_id], prints[e.task_id], e.task_id, e.kind, seconds(e.deadline)
            )
            for _, e in keyed
        ]
        # Items an earlier run is still enqueueing (a client killed mid-stream) are waited
        # for, as Submit's are.
        claims = await self.keys.claim_settled(asks, _CLAIM_POLL_S)
        outcome = {e.task_id: c for (_, e), c in zip(keyed, claims, strict=True)}
        kept: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]] = []
        known = 0
        for ack, envelope in accepted:
            claim = outcome.get(envelope.task_id)
            if claim is None or claim.outcome is Outcome.WON:
                kept.append((ack, envelope))
            elif claim.outcome is Outcome.TAKEN_OVER:
                key = keys.pop(envelope.task_id)
                _adopt(envelope, claim)
                keys[envelope.task_id] = key
                adopted.add(envelope.task_id)
                kept.append((ack, envelope))
            elif claim.outcome is Outcome.EXISTING:
                ack.task_id = claim.task_id
                known += 1
            elif claim.outcome is Outcome.CONFLICT:
                ack.error.code = int(Code.ALREADY_EXISTS)
                ack.error.message = (
                    f"item_id was used in this batch for a different task (task {claim.task_id})"
                )
            else:
                ack.error.code = int(Code.UNAVAILABLE)
                ack.error.message = "this item is still being enqueued by an earlier run"
                ack.error.retryable = True
        return kept, known

    async def _settle_items(
        self,
        accepted: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]],
        keys: dict[str, str],
        kept: set[str],
    ) -> None:
        """Mark the keyed items' claims published (acked with a task id) or release them,
        but those ``kept`` (their tasks may be in Kafka: a repeat takes them over)."""
        settled = [
            (a, Ask(e.tenant, keys[e.task_id], "", e.task_id))
            for a, e in accepted
            if e.task_id in keys and (a.task_id or e.task_id not in kept)
        ]
        await self.keys.settle_many(
            [ask for a, ask in settled if a.task_id], [ask for a, ask in settled if not a.task_id]
        )

    async def publish_failed(
        self, context: Ctx, envelope: tasks_pb2.TaskEnvelope, exc: Exception
    ) -> NoReturn:
        """Answer UNAVAILABLE for a task that did not reach Kafka."""
        # An outage is logged once, by the producer; anything else here.
        if not isinstance(exc, KafkaUnavailableError):
            log.error("publish failed", extra={"task_id": envelope.task_id, "error": repr(exc)})
        await _abort(context, grpc.StatusCode.UNAVAILABLE, _enqueue_failed(exc))

    async def open_sync(
        self,
        context: Ctx,
        owner: Tenant,
        kind: str,
        request: AnyRequest,
        default_deadline_s: float,
    ) -> SyncTask:
        """Validate, admit and publish the task of a synchronous RPC, already waited for.

        The gRPC deadline (or ``default_deadline_s``) becomes the envelope deadline.
        Waiting starts before the publish, so the result cannot slip by unseen; no one
        else knows this task id, so no PENDING state is needed for Get.
        """
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline already passed")
        deadline_s = min(
            remaining if remaining is not None else default_deadline_s,
            self.settings.max_deadline_s,
        )
        started = time.monotonic()
        key = metadata_value(context, METADATA_IDEMPOTENCY_KEY)
        if problems := key_problems(key):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        envelope = await self.envelope(context, owner, kind, request, deadline_s)
        claim = (
            await self.claimed(context, envelope, key, fingerprint(kind, request)) if key else None
        )
        trace.get_current_span().set_attributes({ATTR_TASK_ID: envelope.task_id, ATTR_KIND: kind})
        if claim is not None and claim.outcome is Outcome.EXISTING:
            envelope.task_id = claim.task_id
            envelope.deadline.CopyFrom(timestamp(claim.deadline_s))
            return SyncTask(envelope, None, started + deadline_s, keyed=True)
        await self.admit(context, owner, envelope, key, claim)
        registered = self.waiter.register(envelope.task_id)
        try:
            await self.publish(envelope, context)
        except Exception as exc:
            self.waiter.unregister(envelope.task_id, registered)
            if _unsent(claim, exc):
                await self.quotas.release(owner, [envelope.task_id])
                if claim is not None:
                    await self.keys.release(envelope.tenant, key, envelope.task_id)
            await self.publish_failed(context, envelope, exc)
        if claim is not None:
            await self.keys.published(envelope.tenant, key, envelope.task_id)
        return SyncTask(envelope, registered, started + deadline_s, keyed=claim is not None)

    async def run_sync(self, context: Ctx, owner: Tenant, kind: str, request: AnyRequest) -> Any:
        """Publish a task, wait for it and return its typed output (or the matching error).

        A generation whose caller goes away (or whose deadline passes) is stopped, not
        left running for no one.
        """
        task = await self.open_sync(context, owner, kind, request, self.settings.sync_deadline_s)
        envelope = task.envelope
        if kind == "generation":
            self.stop_when_done(context, task)
        with tracer.start_as_current_span(
            "wait result", attributes={ATTR_TASK_ID: envelope.task_id}
        ):
            result = await self.waiter.wait(envelope.task_id, task.remaining(), task.registered)
        if result is None or result.status not in TERMINAL_STATUSES:
            await _abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no result within {task.deadline_s:.1f}s (task {envelope.task_id})",
            )
        task.settled = True
        return await self.output(context, result)

    def stop_when_done(self, context: Ctx, task: SyncTask) -> None:
        """When the call ends before its caller got the task's outcome, end the task too:
        a caller that cancelled (or whose deadline passed) leaves no generation running
        for no one.

        A done callback, not an exception handler: a stream's handler is not even resumed
        when its client goes away between two chunks. Should the task finish meanwhile,
        it keeps its result (the first terminal result wins).
        """
        envelope = task.envelope
        if task.keyed:
            return

        def ended(_: Ctx) -> None:
            if task.settled:
                return
            # The envelope deadline is the call's.
            if time.time() >= seconds(envelope.deadline) - _DEADLINE_SLACK_S:
                status, code = common_pb2.TASK_STATUS_DEADLINE_EXCEEDED, Code.DEADLINE_EXCEEDED
                message = "the caller's deadline passed"
            else:
                status, code = common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED
                message = "the caller went away"
            stop = asyncio.ensure_future(
                self.store.finish(error_result(envelope, status, code, message))
            )
            self._abandoning.add(stop)
            stop.add_done_callback(self._abandoning.discard)

        context.add_done_callback(ended)  # type: ignore[arg-type]  # stubs: a class, not a Protocol

    async def relay(
        self, context: Ctx, task_id: str, task: SyncTask | None
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        """A generation task's chunks from its first token (``task``: one this call published
        and waits for), then the status of how it ended when not normally."""
        remaining = context.time_remaining()
        if task is not None:
            timeout = task.remaining()
        else:  # follow the task for as long as the caller does
            timeout = remaining if remaining is not None else self.settings.max_deadline_s
        result = self.waiter.wait(task_id, timeout, task.registered if task is not None else None)
        span = trace.get_current_span()
        try:
            async with self.streams.follow(task_id) as reader:
                async for chunk in relay_tokens(
                    reader, task_id, result, self.settings.stream_poll_ms
                ):
                    if chunk.delta and chunk.index == 0:  # deltas are numbered from 0
                        span.add_event(EVENT_FIRST_CHUNK)
                    yield chunk
        except RelayEnded as ended:
            if ended.result is not None and ended.result.status in TERMINAL_STATUSES:
                if task is not None:
                    task.settled = True
                await self.output(context, ended.result)
            await _abort(context, ended.code, f"{ended.message} (task {task_id})")

    async def output(self, context: Ctx, result: tasks_pb2.TaskResult) -> Any:
        """The typed output of a succeeded result; the matching status otherwise."""
        if result.status == common_pb2.TASK_STATUS_SUCCEEDED:
            output = getattr(result, kind_name(result.kind))
            output.task_id = result.task_id
            return output
        code = _STATUS_CODES.get(result.status) or _GRPC_CODES.get(
            result.error.code, grpc.StatusCode.INTERNAL
        )
        await _abort(context, code, f"{result.error.message} (task {result.task_id})")


def _unsent(claim: Claim | None, exc: BaseException) -> bool:
    """Whether a task whose publish failed with ``exc`` can be forgotten (its state,
    quota and idempotency claim). Not under a claim taken over (the gateway that died
    may have sent it), nor after a timeout (it may have landed): such a claim stays
    unpublished, and the next repeat after its lease publishes the task under the same
    id. Tasks without a key are forgotten as before: their client cannot repeat them."""
    if claim is None:
        return True
    return claim.outcome is Outcome.WON and not isinstance(exc, PublishUnconfirmedError)


def _adopt(envelope: tasks_pb2.TaskEnvelope, claim: Claim) -> None:
    """Make the envelope the task of a claim taken over: its maker died before Kafka
    acknowledged it, so it is published here under the claimed id and deadline."""
    envelope.task_id = claim.task_id
    envelope.deadline.CopyFrom(timestamp(claim.deadline_s))


def metadata_value(context: Ctx, name: str) -> str:
    """A request metadata entry's value ("" when absent)."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def lane_of(owner: Tenant, requested: int, default: int) -> int:
    """The lane a task of ``owner`` runs in: ``requested``, or ``default`` when it is
    unspecified, capped at the tenant's highest lane; PermissionError when ``requested``
    is above that (InvalidRequestError when it is no lane)."""
    highest = lane_value(owner.limits.highest_lane)
    if requested == common_pb2.LANE_UNSPECIFIED:
        return max(default, highest)  # lower enum values are higher lanes
    if requested not in LANE_NAMES:
        raise InvalidRequestError([f"lane {requested} is not a known lane"])
    if requested < highest:
        raise PermissionError(
            f"this tenant's tasks run in the {owner.limits.highest_lane!r} lane or below"
        )
    return requested
