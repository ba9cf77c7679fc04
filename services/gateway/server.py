"""The gateway's gRPC services on ``grpc.aio``.

Synchronous RPCs (Classify, Recognize, Summarize, Generate) publish a task and
wait for its result; the gRPC deadline becomes the envelope deadline. The Tasks
service submits any kind and gets, waits for or cancels a task by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.context import Context

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from services.gateway.auth import (
    Authenticator,
    KeyStore,
    QuotaExceededError,
    Quotas,
    abort_quota,
    caller,
    development_interceptor,
)
from services.gateway.dependencies import Dependencies
from services.gateway.generation import RelayEnded, relay_tokens
from services.gateway.interceptors import DecodeGuard
from services.gateway.metrics import GatewayMetrics, metrics_interceptor
from services.gateway.settings import Settings
from shared.contracts.envelope import (
    TERMINAL_STATUSES,
    AnyRequest,
    error_result,
    make_envelope,
    new_task_id,
    seconds,
    valid_batch_id,
    valid_task_id,
    validate_request,
)
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.names import ALL_KINDS, KIND_NAMES, kind_name, kind_value
from shared.observability.telemetry import (
    ATTR_BATCH_ID,
    ATTR_KIND,
    ATTR_TASK_ID,
    EVENT_FIRST_CHUNK,
    inject_headers,
    links_to,
    tracer,
)
from shared.transport.catalog import ModelCatalog
from shared.transport.kafka import AsyncProducer, Headers, result_record, task_headers
from shared.transport.outages import (
    KAFKA,
    REDIS,
    UNAVAILABLE_DETAILS,
    KafkaUnavailableError,
    Outages,
)
from shared.transport.results import AsyncResultStore, ResultWaiter, Waiting
from shared.transport.streams import TokenStreamHub

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAMES = [
    classification_pb2.DESCRIPTOR.services_by_name["Classification"].full_name,
    ner_pb2.DESCRIPTOR.services_by_name["Ner"].full_name,
    summarization_pb2.DESCRIPTOR.services_by_name["Summarization"].full_name,
    generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name,
    tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
]

_STATUS_CODES = {
    common_pb2.TASK_STATUS_CANCELLED: grpc.StatusCode.CANCELLED,
    common_pb2.TASK_STATUS_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_GRPC_CODES = {int(c.value[0]): c for c in grpc.StatusCode}
_CURSOR_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_U64_MAX = 2**64 - 1
_DEADLINE_SLACK_S = 0.1


def valid_cursor(cursor: str) -> bool:
    """A Redis stream entry id (``ms-seq``, each part an unsigned 64-bit number)."""
    return bool(_CURSOR_RE.match(cursor)) and all(
        int(part) <= _U64_MAX for part in cursor.split("-")
    )


# How long one read of a batch's results stream waits for more before re-checking the batch.
_FOLLOW_BLOCK_MS = 1000
_MAX_ITEM_ID_CHARS = 256


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
    return UNAVAILABLE_DETAILS[KAFKA]


async def _abort(context: Ctx, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, _fit(details))
    raise AssertionError("unreachable")  # context.abort always raises


@dataclass
class SyncTask:
    """A published task whose caller waits for it."""

    envelope: tasks_pb2.TaskEnvelope
    registered: Waiting
    deadline: float  # time.monotonic()
    # The caller got the task's terminal outcome: nothing is left to stop when it goes.
    settled: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def deadline_s(self) -> float:
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
        self.store = AsyncResultStore(client, settings.names, settings.result_ttl_s)
        self.waiter = ResultWaiter(client, self.store, self.deps.outages)
        self.streams = TokenStreamHub(client, settings.names)
        metrics.streams_relayed.set_function(lambda: self.streams.followed)
        self.catalog = ModelCatalog(client, settings.names)
        self.client = client
        self._abandoning: set[asyncio.Future[bool]] = set()

    async def start(self) -> None:
        """Start the shared readers: the result subscription and the token stream hub."""
        await self.waiter.start()
        await self.streams.start()

    async def stop(self) -> None:
        await self.streams.stop()
        await self.waiter.stop()

    async def publish(self, envelope: tasks_pb2.TaskEnvelope) -> None:
        """Produce the envelope and wait for the broker's acks=all acknowledgement."""
        (error,) = await self.publish_many([envelope])
        if error is not None:
            raise error

    async def admit(self, context: Ctx, envelope: tasks_pb2.TaskEnvelope) -> None:
        """Count the task in its tenant's in-flight quota, or RESOURCE_EXHAUSTED."""
        try:
            await self.quotas.admit(caller(), [envelope])
        except QuotaExceededError as exc:
            await abort_quota(context, exc)

    async def submit(self, context: Ctx, envelope: tasks_pb2.TaskEnvelope) -> None:
        """Record PENDING and publish; the task id is valid once this returns."""
        await self.admit(context, envelope)
        # Recorded first so that a Get right after Submit never says NOT_FOUND.
        await self.store.record_pending([envelope])
        try:
            await self.publish(envelope)
        except Exception as exc:
            await self.store.clear_states([envelope.task_id])
            await self.quotas.release(caller(), [envelope.task_id])
            await self.publish_failed(context, envelope, exc)

    async def build_envelope(
        self,
        kind: str,
        request: AnyRequest,
        deadline_s: float,
        *,
        priority: int = 0,
        tenant: str = "",
        reply: tasks_pb2.ReplyOptions | None = None,
        batch_id: str = "",
    ) -> tasks_pb2.TaskEnvelope:
        """A validated envelope for the request; InvalidRequestError otherwise. The caller's
        tenant owns it (in development mode: ``tenant`` as given)."""
        owner = caller()
        validate_request(kind, request, owner.request_limits(self.settings.limits))
        await self.catalog.check(kind, request.model)
        if not 0 <= priority <= 9:
            raise InvalidRequestError(["priority must be in [0, 9]"])
        return make_envelope(
            kind,
            request,
            deadline_s=deadline_s,
            priority=priority,
            tenant=owner.name if owner.isolated else tenant,
            reply=reply,
            batch_id=batch_id,
        )

    async def submitted_envelope(
        self, request: tasks_pb2.SubmitRequest, batch_id: str = ""
    ) -> tasks_pb2.TaskEnvelope:
        """The envelope of a Tasks submission; InvalidRequestError otherwise."""
        kind = request.WhichOneof("request")
        if kind is None:
            raise InvalidRequestError(
                ["one of generation, classification, ner or summarization is required"]
            )
        if request.deadline_ms < 0:
            raise InvalidRequestError(["deadline_ms must be >= 0"])
        owner = caller()
        if owner.isolated and request.tenant and request.tenant != owner.name:
            raise PermissionError("the tenant is the one your credentials belong to")
        deadline_s = min(
            request.deadline_ms / 1000 if request.deadline_ms else self.settings.task_deadline_s,
            self.settings.max_deadline_s,
        )
        return await self.build_envelope(
            kind,
            getattr(request, kind),
            deadline_s,
            priority=request.priority,
            tenant=request.tenant,
            reply=request.reply,
            batch_id=batch_id,
        )

    async def envelope(
        self, context: Ctx, kind: str, request: AnyRequest, deadline_s: float
    ) -> tasks_pb2.TaskEnvelope:
        """A validated envelope for a synchronous request, or INVALID_ARGUMENT."""
        try:
            return await self.build_envelope(kind, request, deadline_s)
        except InvalidRequestError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def publish_many(
        self, envelopes: Sequence[tasks_pb2.TaskEnvelope], own_traces: bool = False
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
            topic = self.settings.names.task_topic(kind)
            span = tracer.start_span(
                f"publish {topic}",
                context=Context() if own_traces else None,
                kind=trace.SpanKind.PRODUCER,
                links=links,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    ATTR_TASK_ID: envelope.task_id,
                    ATTR_KIND: kind,
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
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                outcomes = await self.send_tasks(envelopes, messages)
        except TimeoutError:
            outcomes = [KafkaUnavailableError("no acknowledgement in time")] * len(envelopes)
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
            raise KafkaUnavailableError("no acknowledgement in time") from exc

    async def submit_batch_items(
        self,
        batch_id: str,
        items: Sequence[tasks_pb2.BatchItem],
        first_index: int,
        publish_results: bool,
    ) -> tasks_pb2.SubmitBatchResponse:
        """Validate, record and publish one message's items; one ack per item."""
        response = tasks_pb2.SubmitBatchResponse(batch_id=batch_id)
        accepted: list[tuple[tasks_pb2.BatchItemAck, tasks_pb2.TaskEnvelope]] = []
        for index, item in enumerate(items, first_index):
            ack = response.acks.add(item_id=item.item_id, index=index)
            try:
                if len(item.item_id) > _MAX_ITEM_ID_CHARS:
                    raise InvalidRequestError([f"item_id is over {_MAX_ITEM_ID_CHARS} characters"])
                item.task.reply.correlation_id = item.item_id
                item.task.reply.publish_result |= publish_results
                envelope = await self.submitted_envelope(item.task, batch_id)
            except InvalidRequestError as exc:
                ack.error.code = int(Code.INVALID_ARGUMENT)
                ack.error.message = str(exc)
                continue
            accepted.append((ack, envelope))
        owner = caller()
        try:
            await self.quotas.admit(owner, [envelope for _, envelope in accepted])
        except QuotaExceededError as exc:
            for ack, _ in accepted:
                ack.error.code = int(Code.RESOURCE_EXHAUSTED)
                ack.error.message = f"{exc}; retry after {exc.retry_after_ms} ms"
                ack.error.retryable = True
            await self.store.count_batch(batch_id, 0, len(items), owner.name)
            return response
        # Counted as submitted with their PENDING state (one round trip); the rare
        # items Kafka then refuses are moved to rejected.
        await self.store.record_pending(
            [envelope for _, envelope in accepted],
            batch=(batch_id, len(items) - len(accepted)),
            tenant=owner.name,
        )
        outcomes = await self.publish_many([e for _, e in accepted], own_traces=True)
        lost: list[str] = []
        for (ack, envelope), error in zip(accepted, outcomes, strict=True):
            if error is not None:
                lost.append(envelope.task_id)
                ack.error.code = int(Code.UNAVAILABLE)
                ack.error.message = _enqueue_failed(error)
                ack.error.retryable = True
            else:
                ack.task_id = envelope.task_id
        if lost:
            log.log(
                logging.DEBUG if self.deps.missing([KAFKA]) else logging.ERROR,
                "batch items not enqueued",
                extra={"batch_id": batch_id, "count": len(lost), "error": repr(outcomes[0])},
            )
            await self.store.clear_states(lost)
            await self.quotas.release(owner, lost)
            await self.store.count_batch(batch_id, -len(lost), len(lost), owner.name)
        return response

    async def publish_failed(
        self, context: Ctx, envelope: tasks_pb2.TaskEnvelope, exc: Exception
    ) -> NoReturn:
        # An outage is logged once, by the producer; anything else here.
        if not isinstance(exc, KafkaUnavailableError):
            log.error("publish failed", extra={"task_id": envelope.task_id, "error": repr(exc)})
        await _abort(context, grpc.StatusCode.UNAVAILABLE, _enqueue_failed(exc))

    async def open_sync(
        self, context: Ctx, kind: str, request: AnyRequest, default_deadline_s: float
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
        envelope = await self.envelope(context, kind, request, deadline_s)
        trace.get_current_span().set_attributes({ATTR_TASK_ID: envelope.task_id, ATTR_KIND: kind})
        await self.admit(context, envelope)
        registered = self.waiter.register(envelope.task_id)
        try:
            await self.publish(envelope)
        except Exception as exc:
            self.waiter.unregister(envelope.task_id, registered)
            await self.quotas.release(caller(), [envelope.task_id])
            await self.publish_failed(context, envelope, exc)
        return SyncTask(envelope, registered, started + deadline_s)

    async def run_sync(self, context: Ctx, kind: str, request: AnyRequest) -> Any:
        """Publish a task, wait for it and return its typed output (or the matching error).

        A generation whose caller goes away (or whose deadline passes) is stopped, not
        left running for no one.
        """
        task = await self.open_sync(context, kind, request, self.settings.sync_deadline_s)
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

    async def output(self, context: Ctx, result: tasks_pb2.TaskResult) -> Any:
        if result.status == common_pb2.TASK_STATUS_SUCCEEDED:
            output = getattr(result, kind_name(result.kind))
            output.task_id = result.task_id
            return output
        code = _STATUS_CODES.get(result.status) or _GRPC_CODES.get(
            result.error.code, grpc.StatusCode.INTERNAL
        )
        await _abort(context, code, f"{result.error.message} (task {result.task_id})")


class ClassificationService(classification_pb2_grpc.ClassificationServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Classify(  # noqa: N802 (gRPC method name)
        self,
        request: classification_pb2.ClassifyRequest,
        context: Ctx,
    ) -> classification_pb2.ClassifyResponse:
        response: classification_pb2.ClassifyResponse = await self.gateway.run_sync(
            context, "classification", request
        )
        return response


class NerService(ner_pb2_grpc.NerServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Recognize(  # noqa: N802
        self, request: ner_pb2.NerRequest, context: Ctx
    ) -> ner_pb2.NerResponse:
        response: ner_pb2.NerResponse = await self.gateway.run_sync(context, "ner", request)
        return response


class SummarizationService(summarization_pb2_grpc.SummarizationServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Summarize(  # noqa: N802
        self,
        request: summarization_pb2.SummarizeRequest,
        context: Ctx,
    ) -> summarization_pb2.SummarizeResponse:
        response: summarization_pb2.SummarizeResponse = await self.gateway.run_sync(
            context, "summarization", request
        )
        return response


class GenerationService(generation_pb2_grpc.GenerationServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    async def Generate(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, context: Ctx
    ) -> generation_pb2.GenerateResponse:
        response: generation_pb2.GenerateResponse = await self.gateway.run_sync(
            context, "generation", request
        )
        return response

    async def GenerateStream(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, context: Ctx
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        task = await self.gateway.open_sync(
            context, "generation", request, self.settings.stream_deadline_s
        )
        self.gateway.stop_when_done(context, task)
        async for chunk in self._relay(context, task.envelope.task_id, task):
            yield chunk
        task.settled = True

    async def StreamTask(  # noqa: N802
        self, request: generation_pb2.StreamTaskRequest, context: Ctx
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        if not valid_task_id(request.task_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "task_id is missing or malformed"
            )
        current = await self.gateway.store.get(request.task_id)
        if current is None or not caller().sees(current.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        if current.kind != common_pb2.KIND_GENERATION:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {request.task_id} is a {kind_name(current.kind)} task; only "
                "generation tasks stream tokens",
            )
        async for chunk in self._relay(context, request.task_id, None):
            yield chunk

    async def _relay(
        self, context: Ctx, task_id: str, task: SyncTask | None
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        """The task's chunks, then the status of how it ended when not normally."""
        remaining = context.time_remaining()
        if task is not None:
            timeout = task.remaining()
        else:  # follow the task for as long as the caller does
            timeout = remaining if remaining is not None else self.settings.max_deadline_s
        result = self.gateway.waiter.wait(
            task_id, timeout, task.registered if task is not None else None
        )
        span = trace.get_current_span()
        try:
            async with self.gateway.streams.follow(task_id) as reader:
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
                await self.gateway.output(context, ended.result)
            await _abort(context, ended.code, f"{ended.message} (task {task_id})")


class ModelsService(models_pb2_grpc.ModelsServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def List(  # noqa: N802
        self, request: models_pb2.ListModelsRequest, context: Ctx
    ) -> models_pb2.ListModelsResponse:
        if request.kind and request.kind not in KIND_NAMES:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind}")
        kinds = [kind_name(request.kind)] if request.kind else list(ALL_KINDS)
        response = models_pb2.ListModelsResponse()
        for kind in kinds:
            for model in await self.gateway.catalog.models(kind):
                response.models.add(
                    kind=kind_value(kind),
                    name=model["name"],
                    version=model["version"],
                    engine=model["engine"],
                    default=model["default"],
                )
        return response


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    async def Submit(  # noqa: N802
        self, request: tasks_pb2.SubmitRequest, context: Ctx
    ) -> tasks_pb2.SubmitResponse:
        try:
            envelope = await self.gateway.submitted_envelope(request)
        except InvalidRequestError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PermissionError as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        trace.get_current_span().set_attributes(
            {ATTR_TASK_ID: envelope.task_id, ATTR_KIND: kind_name(envelope.kind)}
        )
        await self.gateway.submit(context, envelope)
        return tasks_pb2.SubmitResponse(
            task_id=envelope.task_id, kind=envelope.kind, deadline=envelope.deadline
        )

    async def _checked_id(self, task_id: str, context: Ctx) -> str:
        if not valid_task_id(task_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "task_id is missing or malformed"
            )
        return task_id

    async def _existing(self, task_id: str, context: Ctx) -> tasks_pb2.TaskResult:
        current = await self.gateway.store.get(await self._checked_id(task_id, context))
        # Another tenant's task is answered exactly like a missing one.
        if current is None or not caller().sees(current.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {task_id}")
        return current

    async def Get(  # noqa: N802
        self, request: tasks_pb2.GetTaskRequest, context: Ctx
    ) -> tasks_pb2.TaskResult:
        return await self._existing(request.task_id, context)

    async def Wait(  # noqa: N802
        self, request: tasks_pb2.WaitTaskRequest, context: Ctx
    ) -> tasks_pb2.TaskResult:
        if request.timeout_ms < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "timeout_ms must be >= 0")
        await self._existing(request.task_id, context)
        timeout = min(
            request.timeout_ms / 1000 if request.timeout_ms else self.settings.wait_default_s,
            self.settings.wait_max_s,
        )
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer with the current state just before the caller's own deadline.
            timeout = min(timeout, max(0.0, remaining - 0.05))
        result = await self.gateway.waiter.wait(request.task_id, timeout)
        if result is None or not caller().sees(result.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        return result

    async def Cancel(  # noqa: N802
        self, request: tasks_pb2.CancelTaskRequest, context: Ctx
    ) -> tasks_pb2.CancelTaskResponse:
        current = await self._existing(request.task_id, context)
        if current.status not in TERMINAL_STATUSES:
            envelope = await self.gateway.store.envelope(current.task_id) or tasks_pb2.TaskEnvelope(
                task_id=current.task_id, kind=current.kind
            )
            cancelled = error_result(
                envelope, common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled by request"
            )
            if envelope.reply.publish_result:
                # Before storing, as the workers do: the results topic may repeat a
                # result but never miss one.
                await self.gateway.publish_result(cancelled)
            if await self.gateway.store.finish(cancelled):
                return tasks_pb2.CancelTaskResponse(cancelled=True, result=cancelled)
        final = await self.gateway.store.get(request.task_id)
        return tasks_pb2.CancelTaskResponse(cancelled=False, result=final)

    # --- batches -----------------------------------------------------------------------

    async def _batch_items(
        self,
        requests: AsyncIterator[tasks_pb2.SubmitBatchRequest],
        opened: asyncio.Future[str],
        chunks: asyncio.Queue[asyncio.Task[tasks_pb2.SubmitBatchResponse] | None],
        window: _Window,
    ) -> None:
        """Read the client's stream, start each message's submission in order."""
        batch_id = ""
        index = 0
        owner = caller()
        async for request in requests:
            if not batch_id:
                batch_id = request.batch_id or new_task_id()
                if not valid_batch_id(batch_id):
                    raise InvalidRequestError(
                        ["batch_id must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit"]
                    )
                await self.gateway.store.open_batch(batch_id, owner.name)
                opened.set_result(batch_id)
            elif request.batch_id and request.batch_id != batch_id:
                raise InvalidRequestError([f"one batch per stream: this stream is {batch_id}"])
            if index + len(request.items) > owner.limits.max_batch_items and owner.isolated:
                raise QuotaExceededError(
                    f"a batch stream takes at most {owner.limits.max_batch_items} items "
                    "(a new stream may continue with the same batch id)",
                    0,
                )
            await window.acquire(len(request.items))
            chunks.put_nowait(
                asyncio.create_task(
                    self.gateway.submit_batch_items(
                        batch_id, request.items, index, request.publish_results
                    )
                )
            )
            index += len(request.items)
        if not opened.done():
            opened.set_result("")  # the stream ended without a message

    async def SubmitBatch(  # noqa: N802
        self, request_iterator: AsyncIterator[tasks_pb2.SubmitBatchRequest], context: Ctx
    ) -> AsyncIterator[tasks_pb2.SubmitBatchResponse]:
        window = _Window(self.settings.batch_window)
        chunks: asyncio.Queue[asyncio.Task[tasks_pb2.SubmitBatchResponse] | None] = asyncio.Queue()
        opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(self._batch_items(request_iterator, opened, chunks, window))
        reader.add_done_callback(lambda _: chunks.put_nowait(None))
        try:
            try:
                while (chunk := await chunks.get()) is not None:
                    response = await chunk
                    window.release(len(response.acks))
                    yield response
                await reader
                batch_id = await opened
                if batch_id:
                    await self.gateway.store.seal_batch(batch_id, caller().name)
            except InvalidRequestError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except QuotaExceededError as exc:
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except (redis.RedisError, OSError) as exc:
                # Acks sent so far stand; the client resumes with the same batch id.
                self.gateway.deps.outages.failed(exc)
                await _abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[REDIS])
        finally:
            reader.cancel()
            while not chunks.empty():
                pending = chunks.get_nowait()
                if pending is not None:
                    # Let started submissions finish: their tasks may already be in Kafka.
                    with contextlib.suppress(Exception):
                        await pending

    async def _existing_batch(self, batch_id: str, context: Ctx) -> tasks_pb2.BatchStatus:
        if not valid_batch_id(batch_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "batch_id is missing or malformed"
            )
        # Batch ids live in their tenant's space: another tenant's is simply not there.
        status = await self.gateway.store.batch_status(batch_id, caller().name)
        if status is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no batch {batch_id}")
        return status

    async def GetBatch(  # noqa: N802
        self, request: tasks_pb2.GetBatchRequest, context: Ctx
    ) -> tasks_pb2.BatchStatus:
        return await self._existing_batch(request.batch_id, context)

    async def StreamBatchResults(  # noqa: N802
        self, request: tasks_pb2.StreamBatchResultsRequest, context: Ctx
    ) -> AsyncIterator[tasks_pb2.BatchResult]:
        await self._existing_batch(request.batch_id, context)
        cursor = request.cursor or "0-0"
        if not valid_cursor(cursor):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed cursor {cursor[:64]!r}"
            )
        store = self.gateway.store
        tenant = caller().name
        block_ms = None if request.no_follow else _FOLLOW_BLOCK_MS
        ending = False
        while True:
            try:
                results = await store.batch_results(
                    request.batch_id, cursor, self.settings.batch_read_count, block_ms, tenant
                )
            except (redis.RedisError, OSError) as exc:
                # The client resumes from the last cursor it received.
                self.gateway.deps.outages.failed(exc)
                await _abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[REDIS])
            for cursor, result in results:
                yield tasks_pb2.BatchResult(cursor=cursor, result=result)
            if results:
                continue
            if ending or request.no_follow:
                return
            status = await store.batch_status(request.batch_id, tenant)
            # Complete (or expired): one more read picks up what finished since the last.
            ending = status is None or status.complete
            block_ms = None if ending else block_ms


class _Window:
    """Counts items read from a batch stream but not yet acknowledged. Reading waits
    while the window is full, so gRPC flow control holds a fast client back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._released = asyncio.Event()

    async def acquire(self, n: int) -> None:
        # A message larger than the whole window is let in alone.
        while self.used and self.used + n > self.size:
            self._released.clear()
            await self._released.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._released.set()


async def serve(
    settings: Settings,
    producer: AsyncProducer,
    client: aioredis.Redis,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    metrics: GatewayMetrics | None = None,
    interactive_producer: AsyncProducer | None = None,
    outages: Outages | None = None,
) -> None:
    """Run the gateway until ``stop`` is set (or forever). Tasks of
    ``settings.interactive_kinds`` go through ``interactive_producer`` when given;
    ``outages`` is told of each Kafka or Redis outage (and logs it once)."""
    metrics = metrics or GatewayMetrics()
    gateway = Gateway(settings, producer, client, metrics, interactive_producer, outages)
    await gateway.start()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics_interceptor(metrics)]
    if settings.auth_mode == "keys":
        assert settings.auth_keys_file is not None  # the settings validate it
        keys = KeyStore(settings.auth_keys_file, settings.auth_reload_s)
        authenticator = Authenticator(
            keys, gateway.quotas, client_certs=settings.tls_client_auth != "none"
        )
        interceptors.append(authenticator.interceptor())
    else:
        interceptors.append(development_interceptor())
        log.warning(
            "AUTHENTICATION DISABLED (NLP_AUTH_MODE=dev): every caller is trusted, tasks of "
            "all tenants are visible to all, no quotas. Never expose this gateway."
        )
    # After authentication and decoding: a caller learns of an outage only once it may call.
    interceptors += [DecodeGuard(), gateway.deps.interceptor()]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    classification_pb2_grpc.add_ClassificationServicer_to_server(
        ClassificationService(gateway), server
    )
    ner_pb2_grpc.add_NerServicer_to_server(NerService(gateway), server)
    summarization_pb2_grpc.add_SummarizationServicer_to_server(
        SummarizationService(gateway), server
    )
    generation_pb2_grpc.add_GenerationServicer_to_server(GenerationService(gateway), server)
    tasks_pb2_grpc.add_TasksServicer_to_server(TasksService(gateway), server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsService(gateway), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    health_task = asyncio.create_task(
        gateway.deps.health_loop(health, client, SERVICE_NAMES, settings.health_interval_s)
    )
    log.info("gateway serving", extra={"address": f"{settings.host}:{port}"})
    if started is not None:
        started.set()
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await health.enter_graceful_shutdown()
        await server.stop(settings.grace_s)
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_task
        await gateway.stop()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the listener (only TLS then), with client certificates when configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca if settings.tls_client_auth == "require" else None,
        require_client_auth=settings.tls_client_auth == "require",
    )
