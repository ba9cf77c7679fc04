"""Where one request's time goes, hop by hop, read from the spans every process exports.

    python -m bench.hops [--kind generation] [--requests 40] [--max-tokens 16]
                         [--broker-warmup-s 10] [--env KEY=VALUE ...] [--out PATH]

One ``LocalStack`` with the kind's worker; every process exports every span over
OTLP/gRPC to a receiver in this process (``deploy.local.otlp``). The broker is warmed
first (``bench.harness.warm_broker``), a few requests warm the rest, then ``requests``
go one at a time: an idle stack, so each stage is the platform's own cost of that hop,
not queueing behind other requests. Inputs are the other benchmarks' (the generation
benchmark's prompts, greedy; the analysis corpora).

Each request's stages come from its trace (one machine, one clock) and the client's
clock. Generation, until the first token reaches the caller (``GenerateStream``):

    grpc in   client call → the gateway's RPC span starts
    gateway   → its Kafka publish span starts (validation, quota, envelope)
    kafka     → the intake's process span starts (produce, broker, fetch)
    intake    → its Celery publish span starts (checks, QUEUED state)
    celery    → the worker's run span starts (Redis queue, a Celery thread)
    worker    → its inference span starts (RUNNING state, tokens, the engine's loop)
    engine    → the inference span's ``first token`` event
    relay     → the RPC span's ``first chunk`` event (Redis stream → gateway)
    grpc out  → the client has the chunk

Analysis kinds (their sync RPC, until the reply): the same up to ``celery``, then

    batching  → the inference span starts (the micro-batch window)
    engine    → it ends
    reply     → the RPC span ends (result stored, Redis notification, gateway)
    grpc out  → the client has the reply

Tracing costs every hop its spans (``bench.tracing`` measures how much), so the total
is a little above an untraced request's. The summary gives the platform's share (every
stage but ``engine``) and engine / total: how close the platform's latency can come to
the engine's own for this model on this machine. Prints a table and writes JSON
(default ``bench-results/hops-<kind>.json``); exit status 1 when any request failed or
its trace stayed incomplete.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc

from bench.common import Bench, Output, Table, note
from bench.corpora import CORPORA, KINDS, PROMPTS, SEED
from bench.harness import mean, percentiles, warm_broker
from deploy.local.otlp import OtlpSink, SpanRecord
from deploy.local.stack import LocalStack
from nlp.v1 import generation_pb2, generation_pb2_grpc
from shared.contracts.names import Names
from shared.observability.telemetry import ATTR_TASK_ID, EVENT_FIRST_CHUNK, EVENT_FIRST_TOKEN

GATEWAY, SPAN_SERVER = "nlp-gateway", 2  # service.name; OTLP Span.SpanKind SERVER
ENGINE = "engine"
# The synchronous RPCs it times travel in the interactive lane.
LANE = "interactive"
COMMON = ("grpc in", "gateway", "kafka", "intake", "celery")
STAGES: dict[str, tuple[str, ...]] = {
    "generation": (*COMMON, "worker", ENGINE, "relay", "grpc out"),
    **{kind: (*COMMON, "batching", ENGINE, "reply", "grpc out") for kind in KINDS},
}
# Export every 100 ms (the SDK's default is 5 s): traces are complete soon after a request.
TRACING_ENV = {
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
}
RPC_TIMEOUT_S = 120.0
TRACE_TIMEOUT_S = 30.0


class IncompleteTraceError(Exception):
    """A request's trace lacks a span or event that marks one of its stages."""


@dataclass(frozen=True)
class Timed:
    """One request as its client saw it (wall clock, ns: the spans' clock)."""

    task_id: str
    sent_ns: int
    answered_ns: int


def _only(
    spans: Sequence[SpanRecord], what: str, match: Callable[[SpanRecord], bool]
) -> SpanRecord:
    found = [s for s in spans if match(s)]
    if len(found) != 1:
        raise IncompleteTraceError(f"{len(found)} spans of {what}, expected 1")
    return found[0]


def _named(spans: Sequence[SpanRecord], name: str) -> SpanRecord:
    return _only(spans, name, lambda s: s.name == name)


def _event(span: SpanRecord, name: str) -> int:
    at = span.event_ns(name)
    if at is None:
        raise IncompleteTraceError(f"no {name!r} event on span {span.name!r}")
    return at


def boundaries(kind: str, names: Names, spans: Sequence[SpanRecord], timed: Timed) -> list[int]:
    """The client's send, then the end of each of ``STAGES[kind]`` (ns), from the
    request's trace; raises :class:`IncompleteTraceError` when a marker is missing."""
    topic = names.task_topic(kind, LANE)
    rpc = _only(
        spans,
        "the gateway's RPC",
        lambda s: (
            s.service == GATEWAY
            and s.kind == SPAN_SERVER
            and s.attributes.get(ATTR_TASK_ID) == timed.task_id
        ),
    )
    publish = _named(spans, f"publish {topic}")
    process = _named(spans, f"process {topic}")
    handoff = _named(spans, f"publish {names.celery_queue(kind, LANE)}")
    run = _named(spans, f"run {kind}")
    inference = _only(
        spans,
        "the inference",
        lambda s: s.name.startswith("inference ") and (run.trace_id, run.span_id) in s.links,
    )
    common = [
        timed.sent_ns,
        rpc.start_ns,
        publish.start_ns,
        process.start_ns,
        handoff.start_ns,
        run.start_ns,
    ]
    if kind == "generation":
        tail = [
            inference.start_ns,
            _event(inference, EVENT_FIRST_TOKEN),
            _event(rpc, EVENT_FIRST_CHUNK),
        ]
    else:
        tail = [inference.start_ns, inference.end_ns, rpc.end_ns]
    return [*common, *tail, timed.answered_ns]


def stages_ms(points: Sequence[int]) -> list[float]:
    """Each stage's duration (ms) between consecutive boundaries."""
    return [(b - a) / 1e6 for a, b in itertools.pairwise(points)]


@dataclass
class StageStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    share: float  # of the mean total


@dataclass
class HopsReport:
    kind: str
    requests: int
    stages: dict[str, StageStats]
    total: StageStats
    platform: StageStats  # every stage but the engine's
    # Mean engine stage / mean total: the most a direct-vs-platform latency ratio can be.
    engine_share: float
    # Mean acks=all produce round trip the gateway waited for (beside the stages).
    produce_ack_mean_ms: float
    per_request_ms: list[list[float]]
    failures: list[str]
    seconds: float = 0.0


Results = HopsReport


@dataclass(frozen=True)
class Plan:
    """What a run sends (its options override each field)."""

    requests: int = 40
    max_tokens: int = 16  # generation only
    broker_warmup_s: float = 10.0


def _stats(values: Sequence[float], total_mean: float) -> StageStats:
    p50, p90, _ = percentiles(values)
    average = mean(values)
    return StageStats(average, p50, p90, average / total_mean if total_mean else math.nan)


def summarize(
    kind: str, rows: Sequence[list[float]], acks_ms: Sequence[float], failures: list[str]
) -> HopsReport:
    """Per-stage statistics over requests (each row: its stages in ``STAGES[kind]`` order)."""
    names = STAGES[kind]
    totals = [sum(row) for row in rows]
    total_mean = mean(totals)
    engine = names.index(ENGINE)
    platform = [total - row[engine] for row, total in zip(rows, totals, strict=True)]
    stages = {name: _stats([row[i] for row in rows], total_mean) for i, name in enumerate(names)}
    return HopsReport(
        kind=kind,
        requests=len(rows),
        stages=stages,
        total=_stats(totals, total_mean),
        platform=_stats(platform, total_mean),
        engine_share=stages[ENGINE].mean_ms / total_mean if rows else math.nan,
        produce_ack_mean_ms=mean(acks_ms),
        per_request_ms=[list(row) for row in rows],
        failures=failures,
    )


# --- driving ------------------------------------------------------------------------------


def _generation_call(channel: grpc.aio.Channel, max_tokens: int) -> Callable[[int], Any]:
    stub = generation_pb2_grpc.GenerationStub(channel)

    async def call(i: int) -> Timed:
        request = generation_pb2.GenerateRequest(
            prompt=PROMPTS[i % len(PROMPTS)],
            sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
        sent = time.time_ns()
        task_id, first = "", 0
        async for chunk in stub.GenerateStream(request, timeout=RPC_TIMEOUT_S):
            task_id = task_id or chunk.task_id
            if chunk.delta and not first:
                first = time.time_ns()
        if not first:
            raise RuntimeError(f"task {task_id}: no token")
        return Timed(task_id, sent, first)

    return call


def _analysis_call(channel: grpc.aio.Channel, kind: str, count: int) -> Callable[[int], Any]:
    rpc = KINDS[kind].rpc(channel)
    inputs = CORPORA[kind](count, SEED).requests

    async def call(i: int) -> Timed:
        sent = time.time_ns()
        response = await rpc(inputs[i % len(inputs)], timeout=RPC_TIMEOUT_S)
        answered = time.time_ns()
        return Timed(str(getattr(response, "task_id", "")), sent, answered)

    return call


async def drive(
    stack: LocalStack, kind: str, requests: int, warmup: int, max_tokens: int
) -> tuple[list[Timed], list[str]]:
    """``warmup`` then ``requests`` sequential requests: the measured ones and failures."""
    timed: list[Timed] = []
    failures: list[str] = []
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        if kind == "generation":
            call = _generation_call(channel, max_tokens)
        else:
            call = _analysis_call(channel, kind, max(requests, 16))
        for i in range(warmup + requests):
            try:
                done = await call(i)
            except Exception as exc:
                failures.append(f"request {i}: {type(exc).__name__}: {exc}")
                continue
            if i >= warmup:
                timed.append(done)
    return timed, failures


def _trace(sink: OtlpSink, task_id: str) -> list[SpanRecord]:
    tagged = sink.find(nlp__task_id=task_id)
    return sink.trace(tagged[0].trace_id) if tagged else []


def _complete(kind: str, names: Names, sink: OtlpSink, request: Timed) -> bool:
    try:
        boundaries(kind, names, _trace(sink, request.task_id), request)
    except IncompleteTraceError:
        return False
    return True


def measure(
    stack: LocalStack,
    sink: OtlpSink,
    kind: str,
    requests: int,
    warmup: int = 5,
    max_tokens: int = 16,
) -> tuple[list[list[float]], list[float], list[str]]:
    """``requests`` sequential requests of ``kind`` through ``stack`` (whose processes
    export every span to ``sink``): each one's stages (ms), the gateway's produce round
    trips (ms) and what failed."""
    timed, failures = asyncio.run(drive(stack, kind, requests, warmup, max_tokens))
    names = stack.settings().names
    topic = f"publish {names.task_topic(kind, LANE)}"
    rows: list[list[float]] = []
    acks: list[float] = []
    for request in timed:
        sink.wait_until(partial(_complete, kind, names, sink, request), TRACE_TIMEOUT_S)
        spans = _trace(sink, request.task_id)
        try:
            rows.append(stages_ms(boundaries(kind, names, spans, request)))
        except IncompleteTraceError as exc:
            failures.append(f"task {request.task_id}: incomplete trace: {exc}")
            continue
        acks += [s.duration_ms for s in spans if s.name == topic and s.service == GATEWAY]
    return rows, acks, failures


# --- output -------------------------------------------------------------------------------


def output(report: HopsReport) -> Output:
    def row(name: str, s: StageStats) -> list[object]:
        return [name, s.mean_ms, s.p50_ms, s.p90_ms, f"{100 * s.share:.0f}%"]

    until = "the first token reaches the client" if report.kind == "generation" else "the reply"
    notes = [
        f"engine / total (means): {report.engine_share:.2f}: the most that a direct/platform "
        "latency ratio can be with this engine time",
        f"the gateway's acks=all produce round trip: {report.produce_ack_mean_ms:.2f} ms "
        "mean (the intake fetches the record while it is under way)",
    ]
    if report.failures:
        notes += [f"{len(report.failures)} failed:", *(f"  {f}" for f in report.failures)]
    stages = Table.of(
        f"where one {report.kind} request's time goes: {report.requests} sequential requests "
        f"on an idle stack, every span traced; stages until {until} (ms)",
        ["stage", "mean", "p50", "p90", "share"],
        [
            *(row(name, s) for name, s in report.stages.items()),
            row("total", report.total),
            row("platform (all but engine)", report.platform),
        ],
        digits=2,
        notes=notes,
    )
    return Output([f"kind: {report.kind}"], [stages])


def main(argv: list[str] | None = None) -> int:
    bench = Bench("hops", __doc__, quick=None, plan=Plan(), out="bench-results/hops-<kind>.json")
    bench.parser.add_argument("--kind", choices=sorted(STAGES), default="generation")
    bench.option("requests", "sequential requests measured")
    bench.option("max_tokens", "generation only")
    bench.option("broker_warmup_s", "seconds of broker traffic first (0: cold)", 0)
    args = bench.parse(argv)
    bench.rename(f"hops-{args.kind}")
    plan, began = bench.plan, time.monotonic()
    with OtlpSink() as sink:
        stack_env = {**TRACING_ENV, **bench.env, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        note(f"starting the stack ({args.kind})")
        with LocalStack(kinds=[args.kind], env=stack_env) as stack:
            if plan.broker_warmup_s > 0:
                note(f"warming the broker for {plan.broker_warmup_s:.0f}s")
                asyncio.run(warm_broker(stack, plan.broker_warmup_s))
            note(f"{plan.requests} sequential requests")
            rows, acks, failures = measure(
                stack, sink, args.kind, plan.requests, max_tokens=plan.max_tokens
            )
    report = summarize(args.kind, rows, acks, failures)
    report.seconds = time.monotonic() - began
    return bench.finish(report, output(report), failed=bool(failures) or not rows)


if __name__ == "__main__":
    sys.exit(main())
