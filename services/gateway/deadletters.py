"""The DeadLetters service: operators list, inspect and replay the dead-letter topic.

Every call needs an admin key (development mode trusts everyone). The gateway reads
the topic for the caller (no broker access from laptops) with
:class:`shared.transport.deadletters.DeadLetterReader`, in a thread.

A replay checks each record as the intake and the gateway would (it decodes, is a valid
envelope of its topic's kind and lane, names a model that is served), then asks the
:class:`shared.transport.replays.ReplayLedger` to reopen its task, and sends the
envelope back to its kind's task topic with its replay count raised and a fresh
deadline: as long from the replay as the original one was from the task's creation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from nlp.v1 import common_pb2, deadletters_pb2, deadletters_pb2_grpc, tasks_pb2
from services.gateway.auth import caller
from services.gateway.core import Gateway, _abort
from services.gateway.interceptors import Ctx
from shared.contracts.envelope import decode_envelope, seconds, timestamp, validate_envelope
from shared.contracts.errors import InvalidRequestError
from shared.contracts.names import KIND_NAMES, LANE_NAMES, kind_name, lane_value
from shared.observability.telemetry import inject_headers, tracer
from shared.transport.deadletters import (
    STAGES,
    DeadLetterReader,
    DeadLetterRecord,
    Filter,
    describe,
    matches,
    parse_record_id,
    reason_pattern,
    replay_headers,
)
from shared.transport.kafka import task_headers
from shared.transport.outages import KAFKA, UNAVAILABLE_DETAILS, PublishUnconfirmedError
from shared.transport.replays import Reopening, ReplayLedger, Verdict

log = logging.getLogger(__name__)

DEFAULT_NEWEST = 20
MAX_NEWEST = 1000
MAX_IDS = 1000
# Records reopened and sent together (one pipeline, one produce group).
_CHUNK = 500


@dataclass
class _Prepared:
    """A record that passed the checks: its replayed envelope and where it goes."""

    outcome: deadletters_pb2.ReplayOutcome
    envelope: tasks_pb2.TaskEnvelope
    topic: str
    seen: int
    reopening: Reopening | None = None


class DeadLettersService(deadletters_pb2_grpc.DeadLettersServicer):
    """List, Get and Replay over the dead-letter topic."""

    def __init__(self, gateway: Gateway, reader: DeadLetterReader | None = None) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.names = settings.names
        self.reader = reader or DeadLetterReader(settings, settings.dlq_max_scan)
        self.ledger = ReplayLedger(
            gateway.client, settings.names, settings.result_ttl_s, settings.dlq_max_replays
        )

    async def List(  # noqa: N802 (gRPC method name)
        self, request: deadletters_pb2.ListDeadLettersRequest, context: Ctx
    ) -> deadletters_pb2.ListDeadLettersResponse:
        await _admin(context)
        filter_ = await _filter(request.filter, context)
        if not 0 <= request.newest <= MAX_NEWEST:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"newest must be 0 to {MAX_NEWEST}"
            )
        found, truncated = await self._matching(filter_)
        response = deadletters_pb2.ListDeadLettersResponse(matched=len(found), truncated=truncated)
        groups: dict[tuple[int, str, str], deadletters_pb2.DeadLetterCount] = {}
        for letter, record in found:
            key = (letter.kind, letter.stage, reason_pattern(letter.reason))
            group = groups.get(key)
            if group is None:
                group = groups[key] = deadletters_pb2.DeadLetterCount(
                    kind=letter.kind, stage=letter.stage, reason=key[2]
                )
            group.count += 1
            if record.written_at_s >= seconds(group.last_at):
                group.last_id = letter.id
                group.last_at.CopyFrom(letter.written_at)
        response.counts.extend(sorted(groups.values(), key=lambda g: (-g.count, g.reason)))
        newest = sorted(found, key=lambda f: (f[1].written_at_s, f[1].offset), reverse=True)
        response.newest.extend(letter for letter, _ in newest[: request.newest or DEFAULT_NEWEST])
        return response

    async def Get(  # noqa: N802
        self, request: deadletters_pb2.GetDeadLetterRequest, context: Ctx
    ) -> deadletters_pb2.DeadLetter:
        await _admin(context)
        (record,) = await self._by_ids(context, [request.id])
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no dead letter {request.id}")
        return describe(record, self.names, full=True)

    async def Replay(  # noqa: N802
        self, request: deadletters_pb2.ReplayDeadLettersRequest, context: Ctx
    ) -> deadletters_pb2.ReplayDeadLettersResponse:
        await _admin(context)
        filter_ = await _filter(request.filter, context)
        if bool(request.ids) == (not filter_.empty):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "name the records to replay by id or by a filter (one of the two)",
            )
        response = deadletters_pb2.ReplayDeadLettersResponse()
        if request.ids:
            if len(request.ids) > MAX_IDS:
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_IDS} ids per call"
                )
            records = await self._by_ids(context, list(request.ids))
            chosen: list[tuple[str, DeadLetterRecord | None]] = list(
                zip(request.ids, records, strict=True)
            )
        else:
            found, _ = await self._matching(filter_)
            chosen = [(record.id, record) for _, record in found]
        with tracer.start_as_current_span(
            "replay dead letters", attributes={"nlp.dlq.records": len(chosen)}
        ):
            for start in range(0, len(chosen), _CHUNK):
                outcomes = await self._replay(chosen[start : start + _CHUNK], request.dry_run)
                response.outcomes.extend(outcomes)
        response.replayed = sum(1 for o in response.outcomes if o.replayed)
        response.refused = len(response.outcomes) - response.replayed
        log.info(
            "dead letters replayed",
            extra={
                "replayed": response.replayed,
                "refused": response.refused,
                "dry_run": request.dry_run,
                "key_id": caller().key_id,
            },
        )
        return response

    # --- reading -------------------------------------------------------------------

    async def _matching(
        self, filter_: Filter
    ) -> tuple[list[tuple[deadletters_pb2.DeadLetter, DeadLetterRecord]], bool]:
        records, truncated = await asyncio.to_thread(self.reader.scan, filter_.since_s)
        found = []
        for record in records:
            letter = describe(record, self.names)
            if matches(letter, record, filter_):
                found.append((letter, record))
        return found, truncated

    async def _by_ids(self, context: Ctx, ids: Sequence[str]) -> list[DeadLetterRecord | None]:
        places = []
        for text in ids:
            try:
                places.append(parse_record_id(text))
            except ValueError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await asyncio.to_thread(self.reader.read, places)

    # --- replaying -----------------------------------------------------------------

    async def _replay(
        self, chosen: Sequence[tuple[str, DeadLetterRecord | None]], dry_run: bool
    ) -> list[deadletters_pb2.ReplayOutcome]:
        outcomes: list[deadletters_pb2.ReplayOutcome] = []
        prepared: list[_Prepared] = []
        for record_id, record in chosen:
            outcome = deadletters_pb2.ReplayOutcome(id=record_id)
            outcomes.append(outcome)
            if record is None:
                outcome.refused = "no such dead letter"
                continue
            ready = await self._prepare(record, outcome)
            if ready is not None:
                prepared.append(ready)
        if dry_run:
            for each in prepared:
                _judge(each, await self.ledger.check(each.envelope, each.seen), self.ledger.bound)
            return outcomes
        reopened = []
        for each in prepared:
            each.reopening = await self.ledger.reopen(each.envelope, each.seen)
            if _judge(each, each.reopening, self.ledger.bound):
                each.envelope.replays = each.reopening.replays
                reopened.append(each)
        await self._send(reopened)
        return outcomes

    async def _prepare(
        self, record: DeadLetterRecord, outcome: deadletters_pb2.ReplayOutcome
    ) -> _Prepared | None:
        """The record's envelope to send again, if it is still a valid task (else the
        outcome says why not)."""
        letter = describe(record, self.names)
        outcome.task_id = letter.task_id
        try:
            envelope = decode_envelope(record.value)
        except Exception as exc:
            outcome.refused = f"still invalid: it does not decode ({type(exc).__name__})"
            return None
        origin = self.names.source_of(letter.source_topic)
        lane = (
            LANE_NAMES[envelope.lane]
            if envelope.lane in LANE_NAMES
            else (origin[1] if origin is not None else "batch")
        )
        kind = KIND_NAMES.get(envelope.kind) or (origin[0] if origin is not None else "")
        if not kind:
            outcome.refused = "still invalid: it names no kind"
            return None
        try:
            validate_envelope(envelope, kind, self.gateway.settings.limits, expected_lane=lane)
            request = getattr(envelope, kind)
            await self.gateway.catalog.check(kind, request)
        except InvalidRequestError as exc:
            outcome.refused = f"still invalid: {exc}"
            return None
        envelope.lane = lane_value(lane)
        # The task's time to start, counted again from now.
        span = seconds(envelope.deadline) - seconds(envelope.created_at)
        envelope.deadline.CopyFrom(timestamp(time.time() + span))
        topic = self.names.task_topic(kind, lane)
        outcome.topic = topic
        return _Prepared(outcome, envelope, topic, letter.replays)

    async def _send(self, reopened: Sequence[_Prepared]) -> None:
        """Send the reopened tasks; undo the reopening of those Kafka did not take."""
        if not reopened:
            return
        messages = []
        for each in reopened:
            kind = kind_name(each.envelope.kind)
            headers = task_headers(each.envelope.task_id, kind, inject_headers())
            headers += replay_headers(each.envelope.replays)
            messages.append((each.topic, each.envelope.SerializeToString(), None, headers))
        try:
            async with asyncio.timeout(self.gateway.settings.publish_timeout_s):
                errors: list[Exception | None] = await self.gateway.producer.send_many(messages)
        except TimeoutError:
            errors = [PublishUnconfirmedError("no acknowledgement in time")] * len(messages)
        for each, error in zip(reopened, errors, strict=True):
            if error is None:
                continue
            each.outcome.replayed = False
            if isinstance(error, PublishUnconfirmedError):
                # It may be in Kafka: left reopened (its task runs if it landed).
                each.outcome.refused = "not confirmed by Kafka in time; check the task"
                continue
            assert each.reopening is not None
            await self.ledger.undo(each.envelope, each.reopening)
            each.outcome.refused = f"not sent: {UNAVAILABLE_DETAILS[KAFKA]}"
        trace.get_current_span().set_attribute(
            "nlp.dlq.replayed", sum(1 for each in reopened if each.outcome.replayed)
        )


def _judge(each: _Prepared, reopening: Reopening, bound: int) -> bool:
    """Set the outcome from the ledger's verdict; whether the record goes out."""
    outcome = each.outcome
    if reopening.verdict is Verdict.REOPENED:
        outcome.replayed = True
        return True
    task = each.envelope.task_id
    if reopening.verdict is Verdict.BOUND:
        outcome.refused = (
            f"task {task} was replayed {reopening.replays} times: the bound "
            f"(NLP_DLQ_MAX_REPLAYS={bound})"
        )
    elif reopening.verdict is Verdict.ENDED:
        status = common_pb2.TaskStatus.Name(reopening.status).removeprefix("TASK_STATUS_")
        outcome.refused = f"task {task} ended {status}: only a failed task is replayed"
    elif reopening.verdict is Verdict.LIVE:
        outcome.refused = f"task {task} is queued or running (replayed already?)"
    else:
        outcome.refused = f"task {task} changed while it was replayed; try again"
    return False


async def _admin(context: Ctx) -> None:
    if not caller().admin:
        await _abort(context, grpc.StatusCode.PERMISSION_DENIED, "dead letters need an admin key")


async def _filter(message: deadletters_pb2.DeadLetterFilter, context: Ctx) -> Filter:
    """The request's filter, checked."""
    if message.kind and message.kind not in KIND_NAMES:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {message.kind}")
    if message.stage and message.stage not in STAGES:
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"stage must be one of {', '.join(STAGES)}",
        )
    since = 0.0
    if message.HasField("since"):
        if not 0 <= message.since.nanos < 1_000_000_000 or message.since.seconds < 0:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "since must be a time after 1970"
            )
        # A time to come matches nothing yet: the scan starts at the topic's end.
        since = min(seconds(message.since), time.time() + 1)
    return Filter(since, message.kind, message.stage, message.reason[:300])
