"""Priority lanes: interactive latency on an idle stack and beside a saturating bulk
batch of the same kind, and what the interactive traffic costs the batch.

    python -m bench.lanes [--quick] [--kinds classification,generation] [--docs N]
                          [--gen-tasks N] [--interval-s S] [--bulk-lane batch]
                          [--env KEY=VALUE ...]
                          [--out PATH]

Per kind (default: classification, then generation), one ``LocalStack`` with that kind
alone (gRPC gateway → Kafka → intake → Celery → worker → Redis), its broker warmed
(``bench.harness.warm_broker``), then a warm-up of both paths (concurrent interactive
calls, a small batch); then, in this order:

1. idle: sequential interactive calls, one started every ``interval_s`` (0.2 s: 5 calls/s;
   right after the previous when it ran longer), the same offered load in every phase
   and configuration (a faster call does not make more of them): the kind's
   synchronous RPC (``Classification.Classify``; ``Generation.GenerateStream`` for
   generation, timed to its first text: time to first token).
2. bulk alone: one batch through ``Tasks.SubmitBatch`` + ``StreamBatchResults`` with
   the project's bulk client (``shared.client.bulk.BatchRun``, what ``nlp batch run``
   runs), in this process, in the batch lane (``--bulk-lane``); its rate from its first
   acknowledgement to its last result: docs/s (generation: output tokens/s).
3. bulk + interactive: the same batch again and, from just after its first
   acknowledgement (``ramp_s``) until only its last ``tail`` items are left to finish
   (the worker stays saturated until then), the same sequential interactive calls:
   their latency under bulk, and the batch's rate beside them.

Ratios: interactive p50 and p99 under bulk / idle (target: p50 <= 1.5x idle), and the
batch's rate with interactive traffic / alone (target: >= 0.9). CPU seconds of every
stack process are read around each phase, and after each interactive phase its calls'
task stage timings (``Tasks.Get``: queued, waited, ran) show where their time went.

``--env`` reaches every stack service, to compare settings; e.g. the worker's lanes
effectively off: ``--env NLP_RESERVED_INTERACTIVE_SLOTS=0 --env NLP_INTERACTIVE_RUNNERS=0``
(which also leaves the bulk runners at normal priority; ``NLP_BULK_RUNNER_NICE=0`` alone)
(and ``--bulk-lane interactive`` puts the batch in the interactive lane itself, as if
there were one lane). Prints tables (progress goes to stderr) and writes JSON (default
``bench-results/lanes.json``). Every loop is bounded by a count and a time budget;
traffic stays on 127.0.0.1. Exit status 1 when any request or batch item failed.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import grpc

from bench.common import Bench, Getter, Output, Table, format_errors, note
from bench.corpora import CORPORA, KINDS, PROMPTS, SEED
from bench.harness import (
    Driven,
    cpu_delta,
    drive,
    environ,
    fold_cpu,
    mean,
    percentiles,
    stack_cpu,
    warm_broker,
)
from deploy.local.stack import AVAILABLE_KINDS, LocalStack
from nlp.v1 import common_pb2, generation_pb2, generation_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from shared.client.bulk import BatchRun, Doc, Summary
from shared.contracts.names import ALL_LANES, lane_value
from shared.contracts.settings import WorkerSettings

GENERATION = "generation"
# The targets: interactive p50 under bulk at most this many times idle's, and
# the batch's rate beside interactive traffic at least this share of its rate alone.
TARGET_P50_RATIO = 1.5
TARGET_THROUGHPUT_RATIO = 0.9
# CPU columns, in table order (bench.harness.fold_cpu; generation's engine processes
# run in the worker's session and count as the worker).
CPU_GROUPS = ("gateway", "intake", "worker", "kafka", "redis", "client", "other")
# Task stage timings (nlp.v1.Timings) of the interactive calls; batched and inference
# are parts of ran.
STAGES = ("queued", "waited", "batched", "inference", "ran")
# Worker settings that decide how lanes share a worker, reported per kind.
REPORTED_SETTINGS = {
    "concurrency",
    "reserved_interactive_slots",
    "reserved_standard_slots",
    "lane_weights",
    "interactive_runners",
    "batch_runners",
    "batch_max_size",
    "batch_max_wait_ms",
    "queue_high_water",
    "queue_low_water",
}


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run; every loop stops at its count or its budget."""

    corpus_docs: int = 400
    # Seconds of produce/fetch/commit through the fresh broker first (0: cold broker).
    broker_warmup_s: float = 10.0
    # Between sequential interactive calls (lets an idle pipeline go idle in between).
    # Interactive calls start this far apart (or back to back when they take longer).
    interval_s: float = 0.2
    # After each phase, before the next.
    settle_s: float = 2.0
    # Interactive calls under bulk begin this long after the batch's first acknowledgement.
    ramp_s: float = 0.5
    # Each batch: the most it may take (its tasks' start deadline too), then it is cut.
    bulk_timeout_s: float = 900.0
    # The bulk client's window (items in flight at most) and items per stream message,
    # as `nlp batch run`'s defaults.
    window: int = 1000
    chunk: int = 100
    # Analysis kinds (classification): interactive requests are the corpus' documents.
    warmup_requests: int = 64
    warmup_docs: int = 500
    idle_requests: int = 150
    idle_budget_s: float = 35.0
    # The bulk batch: ~50 s at the worker's ~120 docs/s on 2 cores.
    docs: int = 6000
    probe_requests: int = 2000
    # Interactive calls under bulk stop once this few documents are left to finish.
    tail_docs: int = 200
    rpc_timeout_s: float = 30.0
    # Generation: interactive streams of gen_max_tokens; a batch of gen_tasks
    # generations of gen_bulk_max_tokens each (greedy), several times the engine's
    # sequence slots (max_num_seqs, 32).
    gen_warmup_requests: int = 8
    gen_warmup_tasks: int = 32
    gen_max_tokens: int = 16
    gen_idle_requests: int = 30
    gen_idle_budget_s: float = 60.0
    gen_tasks: int = 192
    gen_bulk_max_tokens: int = 64
    gen_probe_requests: int = 200
    gen_tail_tasks: int = 32
    gen_rpc_timeout_s: float = 300.0


QUICK = Plan(
    corpus_docs=100,
    broker_warmup_s=3.0,
    settle_s=1.0,
    bulk_timeout_s=300.0,
    warmup_requests=16,
    warmup_docs=100,
    idle_requests=40,
    idle_budget_s=5.0,
    docs=1200,
    probe_requests=400,
    tail_docs=100,
    gen_warmup_requests=2,
    gen_warmup_tasks=8,
    gen_max_tokens=8,
    gen_idle_requests=4,
    gen_idle_budget_s=30.0,
    gen_tasks=64,
    gen_bulk_max_tokens=32,
    gen_probe_requests=20,
    gen_tail_tasks=16,
    gen_rpc_timeout_s=120.0,
)


# --- results ------------------------------------------------------------------------------


@dataclass
class Latency:
    """Sequential interactive calls of one phase. The measure is the call's latency
    (generation: its time to first token); ``e2e`` is the whole call either way."""

    phase: str
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    e2e_p50_ms: float
    e2e_mean_ms: float
    seconds: float
    # CPU seconds per component (CPU_GROUPS) and the machine's busy and stolen time.
    cpu_s: dict[str, float]
    first_error: str = ""
    # Mean stage timings of the calls' tasks (STAGES, from Tasks.Get after the phase),
    # and of how many calls.
    stages_ms: dict[str, float] = field(default_factory=dict)
    staged: int = 0
    # Every measure in order (ms), to see drift or stalls over the phase.
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class BulkRun:
    """One batch through the bulk client."""

    phase: str
    items: int
    succeeded: int
    statuses: dict[str, int]
    # First acknowledgement → last result (NaN: none came).
    seconds: float
    docs_per_s: float
    # Generation: output tokens of its results, per second of the same span.
    tokens: int
    tokens_per_s: float
    # The bulk client's own count: its call → its end.
    client_elapsed_s: float
    cpu_s: dict[str, float]
    # With interactive traffic: the batch's docs/s while the calls ran, and the share
    # of its span they covered.
    during_probes_docs_per_s: float = float("nan")
    probes_cover: float = float("nan")
    # Why the client stopped early, if it did.
    error: str = ""


@dataclass
class Ratios:
    """Under bulk over idle (lower is better), and with over alone (higher is better)."""

    p50: float
    p99: float
    throughput: float
    unit: str
    meets_p50: bool
    meets_throughput: bool


@dataclass
class Warmup:
    """Concurrent interactive calls, then a small batch, before anything is measured."""

    requests: int
    errors: dict[str, int]
    seconds: float
    batch_items: int
    batch_succeeded: int
    batch_seconds: float
    first_error: str = ""
    batch_error: str = ""


@dataclass
class KindResult:
    kind: str
    # What an interactive call is timed to, and the batch's rate unit.
    measure: str
    unit: str
    stack_start_s: float
    broker_warmup: dict[str, Any]
    warmup: Warmup
    idle: Latency
    under_bulk: Latency
    bulk_alone: BulkRun
    bulk_with: BulkRun
    ratios: Ratios


@dataclass
class Report:
    """What the run found (bench.common's record adds when, where and how it ran)."""

    bulk_lane: str
    settings: dict[str, dict[str, Any]]
    kinds: list[KindResult]
    targets: dict[str, float]
    errors: int = 0


Results = Report


# --- the pure parts -----------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is not a positive finite number."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return float("nan")
    return numerator / denominator


def span_rate(first_ack: float | None, finished: Sequence[float]) -> tuple[float, float]:
    """(seconds, items/s) from the first acknowledgement to the last result."""
    if first_ack is None or not finished:
        return float("nan"), float("nan")
    seconds = max(finished) - first_ack
    return seconds, len(finished) / seconds if seconds > 0 else float("nan")


def rate_between(finished: Sequence[float], start: float, end: float) -> float:
    """Items per second that finished within [start, end]."""
    if not end > start:
        return float("nan")
    return sum(start <= t <= end for t in finished) / (end - start)


def cover(start: float, end: float, first_ack: float | None, finished: Sequence[float]) -> float:
    """Share of a batch's span (first ack → last result) that [start, end] covers."""
    if first_ack is None or not finished or not end > start:
        return float("nan")
    last = max(finished)
    overlap = min(end, last) - max(start, first_ack)
    return max(0.0, overlap) / (last - first_ack) if last > first_ack else float("nan")


def throughput(run: BulkRun, unit: str) -> float:
    return run.tokens_per_s if unit == "tok/s" else run.docs_per_s


def compare(idle: Latency, under: Latency, alone: BulkRun, beside: BulkRun, unit: str) -> Ratios:
    """The ratios and whether they meet the targets (NaN meets none)."""
    p50 = ratio(under.p50_ms, idle.p50_ms)
    rate = ratio(throughput(beside, unit), throughput(alone, unit))
    return Ratios(
        p50=p50,
        p99=ratio(under.p99_ms, idle.p99_ms),
        throughput=rate,
        unit=unit,
        meets_p50=p50 <= TARGET_P50_RATIO,
        meets_throughput=rate >= TARGET_THROUGHPUT_RATIO,
    )


def latency(
    phase: str,
    measures: Sequence[float],
    totals: Sequence[float],
    driven: Driven,
    cpu_s: Mapping[str, float],
) -> Latency:
    """A phase's percentiles; a NaN measure (a generation that produced no text) is
    left out of them."""
    kept = [m for m in measures if not math.isnan(m)]
    p50, p90, p99 = percentiles(kept)
    e2e, _, _ = percentiles(totals)
    return Latency(
        phase=phase,
        requests=len(totals),
        errors=dict(driven.errors),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=max(kept, default=float("nan")),
        mean_ms=mean(kept),
        e2e_p50_ms=e2e,
        e2e_mean_ms=mean(totals),
        seconds=driven.seconds,
        cpu_s=dict(cpu_s),
        first_error=driven.first_error,
        samples_ms=[round(m, 1) for m in measures],
    )


def stage_means(timings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each stage's mean over the tasks (STAGES, in order)."""
    return {k: mean(t[k] for t in timings) for k in STAGES} if timings else {}


def rest_ms(found: Latency) -> float:
    """What the stages leave of a whole call: gRPC, the gateway, Kafka, Redis, relays."""
    stages = found.stages_ms
    if not stages:
        return float("nan")
    return found.e2e_mean_ms - stages["queued"] - stages["waited"] - stages["ran"]


def errors_of(result: KindResult) -> int:
    """Failed interactive calls (warm-up included) and batch items that did not succeed."""
    warm = result.warmup
    calls = [result.idle.errors, result.under_bulk.errors, warm.errors]
    failed = sum(sum(c.values()) for c in calls)
    for run in (result.bulk_alone, result.bulk_with):
        failed += run.items - run.succeeded + bool(run.error)
    return failed + warm.batch_items - warm.batch_succeeded + bool(warm.batch_error)


# --- the batch ----------------------------------------------------------------------------


T = TypeVar("T")


class BatchClock:
    """When a batch's first acknowledgement and each result came (perf_counter), and
    its results' output tokens. Written by the bulk client's threads, read by the loop."""

    def __init__(self) -> None:
        self.first_ack: float | None = None
        self.finished: list[float] = []
        self.tokens = 0
        # Set (on the loop that made the clock) at the first acknowledgement.
        self.acked = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def ack(self, response: tasks_pb2.SubmitBatchResponse) -> None:
        if self.first_ack is None and any(a.task_id for a in response.acks):
            self.first_ack = time.perf_counter()
            self._loop.call_soon_threadsafe(self.acked.set)

    def result(self, item: tasks_pb2.BatchResult) -> None:
        if item.result.WhichOneof("output") == GENERATION:
            self.tokens += item.result.generation.completion_tokens
        self.finished.append(time.perf_counter())

    @property
    def done(self) -> int:
        return len(self.finished)


class Discard(io.StringIO):
    """The bulk client's output file: its result lines are not kept."""

    def write(self, s: str) -> int:
        return len(s)


class _Observed(Generic[T]):
    """A streaming call's responses, each shown to ``see`` on its way; cancellable."""

    def __init__(self, call: Any, see: Callable[[T], None]) -> None:
        self._call, self._items, self._see = call, iter(call), see

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item: T = next(self._items)
        self._see(item)
        return item

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class ObservedTasks:
    """The two Tasks RPCs the bulk client calls, their responses seen by a clock."""

    def __init__(self, stub: tasks_pb2_grpc.TasksStub, clock: BatchClock) -> None:
        self.stub, self.clock = stub, clock

    def SubmitBatch(  # noqa: N802
        self, messages: Iterator[tasks_pb2.SubmitBatchRequest]
    ) -> _Observed[tasks_pb2.SubmitBatchResponse]:
        return _Observed(self.stub.SubmitBatch(messages), self.clock.ack)

    def StreamBatchResults(  # noqa: N802
        self, request: tasks_pb2.StreamBatchResultsRequest
    ) -> _Observed[tasks_pb2.BatchResult]:
        return _Observed(self.stub.StreamBatchResults(request), self.clock.result)


async def run_batch(
    target: str,
    make_task: Callable[[str], tasks_pb2.SubmitRequest],
    docs: Sequence[Doc],
    plan: Plan,
    clock: BatchClock,
) -> Summary:
    """``docs`` through BatchRun on its own channel and threads; cut (the channel
    closed: the client stops and says why) after ``plan.bulk_timeout_s``."""
    channel = grpc.insecure_channel(target)
    runner = BatchRun(
        cast(tasks_pb2_grpc.TasksStub, ObservedTasks(tasks_pb2_grpc.TasksStub(channel), clock)),
        make_task,
        Discard(),
        window=plan.window,
        chunk=plan.chunk,
    )
    try:
        running = asyncio.get_running_loop().run_in_executor(None, runner.run, iter(docs))
        try:
            return await asyncio.wait_for(asyncio.shield(running), plan.bulk_timeout_s)
        except TimeoutError:
            note(f"batch not complete after {plan.bulk_timeout_s:g}s: cut")
            channel.close()
            return await running
    finally:
        channel.close()


# --- the interactive calls ----------------------------------------------------------------


# One interactive call i: its measure and its whole time (ms), and its task's id.
Call = Callable[[int], Awaitable[tuple[float, float, str]]]


def _ms_since(began: float) -> float:
    return (time.perf_counter() - began) * 1000


async def sequential(
    job: Callable[[int], Awaitable[None]],
    total: int,
    budget_s: float,
    interval_s: float,
    until: Callable[[], bool] | None = None,
) -> Driven:
    """``job(0)`` … one at a time, each started ``interval_s`` after the previous one
    started (at once when that one took longer), until ``total``, ``budget_s`` or
    ``until()``; RPC errors and failed tasks counted as bench.harness.drive does."""
    out = Driven()
    started = time.perf_counter()
    for i in range(total):
        began = time.perf_counter()
        if began - started > budget_s or (until is not None and until()):
            break
        await out.attempt(job, i)
        await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - began)))
    out.seconds = time.perf_counter() - started
    return out


@dataclass(frozen=True)
class Workload:
    """One kind's interactive call, its batch items and its sizes from the plan."""

    kind: str
    measure: str
    unit: str
    call: Callable[[grpc.aio.Channel], Call]
    texts: list[str]
    make_task: Callable[[str], tasks_pb2.SubmitRequest]
    warmup_requests: int
    warmup_items: int
    idle_requests: int
    idle_budget_s: float
    items: int
    probe_requests: int
    tail: int
    rpc_timeout_s: float


def _template(plan: Plan, lane: str) -> tasks_pb2.SubmitRequest:
    return tasks_pb2.SubmitRequest(
        lane=lane_value(lane), deadline_ms=int(plan.bulk_timeout_s * 1000)
    )


def analysis_workload(kind: str, plan: Plan, lane: str) -> Workload:
    """An analysis kind over its corpus: the synchronous RPC, timed whole."""
    corpus = CORPORA[kind](plan.corpus_docs, SEED)
    requests = corpus.requests
    by_text = {r.text: r for r in requests}
    spec = KINDS[kind]

    def make_task(text: str) -> tasks_pb2.SubmitRequest:
        task = _template(plan, lane)
        getattr(task, kind).CopyFrom(by_text[text])
        return task

    def call(channel: grpc.aio.Channel) -> Call:
        rpc = spec.rpc(channel)

        async def one(i: int) -> tuple[float, float, str]:
            began = time.perf_counter()
            response = await rpc(requests[i % len(requests)], timeout=plan.rpc_timeout_s)
            ms = _ms_since(began)
            return ms, ms, str(getattr(response, "task_id", ""))

        return one

    return Workload(
        kind,
        "latency",
        "docs/s",
        call,
        list(corpus.texts),
        make_task,
        plan.warmup_requests,
        plan.warmup_docs,
        plan.idle_requests,
        plan.idle_budget_s,
        plan.docs,
        plan.probe_requests,
        plan.tail_docs,
        plan.rpc_timeout_s,
    )


def generation_workload(plan: Plan, lane: str) -> Workload:
    """Generation over the fixed prompts, greedy: GenerateStream timed to its first text;
    batch items of gen_bulk_max_tokens."""

    def make_task(text: str) -> tasks_pb2.SubmitRequest:
        task = _template(plan, lane)
        task.generation.prompt = text
        task.generation.sampling.max_tokens = plan.gen_bulk_max_tokens
        task.generation.sampling.temperature = 0.0
        return task

    def call(channel: grpc.aio.Channel) -> Call:
        stub = generation_pb2_grpc.GenerationStub(channel)

        async def one(i: int) -> tuple[float, float, str]:
            message = generation_pb2.GenerateRequest(
                prompt=PROMPTS[i % len(PROMPTS)],
                sampling=generation_pb2.SamplingParams(
                    max_tokens=plan.gen_max_tokens, temperature=0.0
                ),
            )
            began = time.perf_counter()
            first = float("nan")
            task_id = ""
            async for chunk in stub.GenerateStream(message, timeout=plan.gen_rpc_timeout_s):
                task_id = task_id or chunk.task_id
                if chunk.delta and math.isnan(first):
                    first = _ms_since(began)
            return first, _ms_since(began), task_id

        return one

    return Workload(
        GENERATION,
        "time to first token",
        "tok/s",
        call,
        list(PROMPTS),
        make_task,
        plan.gen_warmup_requests,
        plan.gen_warmup_tasks,
        plan.gen_idle_requests,
        plan.gen_idle_budget_s,
        plan.gen_tasks,
        plan.gen_probe_requests,
        plan.gen_tail_tasks,
        plan.gen_rpc_timeout_s,
    )


# --- one kind -----------------------------------------------------------------------------


def group_cpu(delta: Mapping[str, float], kind: str) -> dict[str, float]:
    return {k: round(v, 2) for k, v in fold_cpu(delta, kind, CPU_GROUPS).items()}


def _docs(phase: str, texts: Sequence[str], count: int) -> list[Doc]:
    return [Doc(f"{phase}-{i}", texts[i % len(texts)]) for i in range(count)]


class KindRun:
    """The phases of one kind on its stack."""

    def __init__(self, stack: LocalStack, work: Workload, plan: Plan) -> None:
        self.stack, self.work, self.plan = stack, work, plan

    def cpu(self) -> dict[str, float]:
        return stack_cpu(self.stack)

    async def batch(
        self, phase: str, items: int, clock: BatchClock
    ) -> tuple[Summary, dict[str, float]]:
        before = self.cpu()
        summary = await run_batch(
            self.stack.gateway_target,
            self.work.make_task,
            _docs(phase, self.work.texts, items),
            self.plan,
            clock,
        )
        return summary, group_cpu(cpu_delta(before, self.cpu()), self.work.kind)

    def bulk_run(
        self,
        phase: str,
        items: int,
        summary: Summary,
        clock: BatchClock,
        cpu_s: dict[str, float],
        probes: tuple[float, float] | None = None,
    ) -> BulkRun:
        seconds, per_s = span_rate(clock.first_ack, clock.finished)
        run = BulkRun(
            phase=phase,
            items=items,
            succeeded=summary.succeeded,
            statuses=dict(summary.statuses),
            seconds=seconds,
            docs_per_s=per_s,
            tokens=clock.tokens,
            tokens_per_s=ratio(float(clock.tokens), seconds),
            client_elapsed_s=summary.elapsed_s,
            cpu_s=cpu_s,
            error=summary.error,
        )
        if probes is not None:
            start, end = probes
            run.during_probes_docs_per_s = rate_between(clock.finished, start, end)
            run.probes_cover = cover(start, end, clock.first_ack, clock.finished)
        rate = f"{run.docs_per_s:.1f} docs/s" + (
            f", {run.tokens_per_s:.1f} tok/s" if self.work.unit == "tok/s" else ""
        )
        note(
            f"{self.work.kind}: bulk {phase}: {run.succeeded}/{items} in {seconds:.1f}s, {rate}"
            + (f" (stopped: {run.error})" if run.error else "")
        )
        return run

    async def probes(
        self,
        channel: grpc.aio.Channel,
        phase: str,
        total: int,
        budget_s: float,
        until: Callable[[], bool] | None = None,
    ) -> tuple[Latency, float, float]:
        """Sequential interactive calls; also when the first began and the last ended."""
        call = self.work.call(channel)
        measures: list[float] = []
        totals: list[float] = []
        task_ids: list[str] = []
        bounds: list[float] = []

        async def job(i: int) -> None:
            bounds.append(time.perf_counter())
            try:
                measure, whole, task_id = await call(i)
            finally:
                bounds.append(time.perf_counter())
            measures.append(measure)
            totals.append(whole)
            task_ids.append(task_id)

        before = self.cpu()
        driven = await sequential(job, total, budget_s, self.plan.interval_s, until)
        cpu_s = group_cpu(cpu_delta(before, self.cpu()), self.work.kind)
        result = latency(phase, measures, totals, driven, cpu_s)
        timings = await self.timings(channel, task_ids)
        result.stages_ms, result.staged = stage_means(timings), len(timings)
        note(
            f"{self.work.kind}: interactive {phase}: {result.requests} calls, {self.work.measure} "
            f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
        )
        start, end = (bounds[0], bounds[-1]) if bounds else (math.nan, math.nan)
        return result, start, end

    async def timings(
        self, channel: grpc.aio.Channel, task_ids: Sequence[str]
    ) -> list[dict[str, float]]:
        """The stage timings of each task that Tasks.Get still finds (after the phase,
        so that the lookups do not load it)."""
        tasks = tasks_pb2_grpc.TasksStub(channel)
        out = []
        for task_id in filter(None, task_ids):
            try:
                found = await tasks.Get(
                    tasks_pb2.GetTaskRequest(task_id=task_id), timeout=self.work.rpc_timeout_s
                )
            except grpc.aio.AioRpcError:
                continue
            if found.status == common_pb2.TASK_STATUS_SUCCEEDED:
                t = found.timings
                out.append({k: float(getattr(t, f"{k}_ms")) for k in STAGES})
        return out

    async def run(self, stack_start_s: float) -> KindResult:
        work, plan = self.work, self.plan
        broker: dict[str, Any] = {}
        if plan.broker_warmup_s > 0:
            warmed = await warm_broker(self.stack, plan.broker_warmup_s)
            broker = {"seconds": warmed.seconds, "produced": warmed.produced}
        async with grpc.aio.insecure_channel(self.stack.gateway_target) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=work.rpc_timeout_s)
            call = work.call(channel)

            async def warm_call(i: int) -> None:
                await call(i)

            warm = await drive(
                warm_call,
                min(16, work.warmup_requests),
                work.warmup_requests,
                plan.idle_budget_s + work.rpc_timeout_s,
            )
            clock = BatchClock()
            warm_summary, _ = await self.batch("warmup", work.warmup_items, clock)
            warmup = Warmup(
                warm.done,
                dict(warm.errors),
                warm.seconds,
                work.warmup_items,
                warm_summary.succeeded,
                warm_summary.elapsed_s,
                warm.first_error,
                warm_summary.error,
            )
            note(
                f"{work.kind}: warmed up ({warm.done} calls, batch of "
                f"{warm_summary.succeeded}/{work.warmup_items})"
            )
            await asyncio.sleep(plan.settle_s)

            idle, _, _ = await self.probes(channel, "idle", work.idle_requests, work.idle_budget_s)
            await asyncio.sleep(plan.settle_s)

            clock = BatchClock()
            summary, cpu_s = await self.batch("alone", work.items, clock)
            alone = self.bulk_run("alone", work.items, summary, clock, cpu_s)
            await asyncio.sleep(plan.settle_s)

            clock = BatchClock()
            batch = asyncio.create_task(self.batch("with", work.items, clock))
            acked = asyncio.create_task(clock.acked.wait())
            await asyncio.wait([batch, acked], return_when=asyncio.FIRST_COMPLETED)
            acked.cancel()
            # The first items reach the worker, which is then full (window items in flight).
            await asyncio.sleep(plan.ramp_s)

            def draining() -> bool:
                return batch.done() or work.items - clock.done <= work.tail

            under, start, end = await self.probes(
                channel, "under bulk", work.probe_requests, plan.bulk_timeout_s, draining
            )
            summary, cpu_s = await batch
            beside = self.bulk_run("with", work.items, summary, clock, cpu_s, (start, end))
        return KindResult(
            kind=work.kind,
            measure=work.measure,
            unit=work.unit,
            stack_start_s=stack_start_s,
            broker_warmup=broker,
            warmup=warmup,
            idle=idle,
            under_bulk=under,
            bulk_alone=alone,
            bulk_with=beside,
            ratios=compare(idle, under, alone, beside, work.unit),
        )


def run_kind(work: Workload, plan: Plan, env: Mapping[str, str]) -> KindResult:
    note(f"starting the local stack for {work.kind} (Kafka, Redis, gateway, intake, worker)")
    began = time.monotonic()
    with LocalStack(kinds=(work.kind,), env=env) as stack:
        stack_start_s = time.monotonic() - began
        note(f"stack ready in {stack_start_s:.1f}s")
        result = asyncio.run(KindRun(stack, work, plan).run(stack_start_s))
    r = result.ratios
    note(
        f"{work.kind}: p50 under bulk / idle {r.p50:.2f}, p99 {r.p99:.2f}; "
        f"bulk {r.unit} with / alone {r.throughput:.2f}"
    )
    return result


def worker_settings(kind: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The kind's worker settings (lanes' share of it) as its services see them."""
    with environ(env):
        settings: WorkerSettings = importlib.import_module(f"services.{kind}.settings").Settings()
    return settings.model_dump(mode="json", include=REPORTED_SETTINGS)


# --- output -------------------------------------------------------------------------------


def _blank_nan(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _stage(name: str) -> Callable[[Latency], float]:
    return lambda r: r.stages_ms.get(name, float("nan"))


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _settings_line(settings: Mapping[str, Any]) -> str:
    keys = (
        "concurrency",
        "reserved_interactive_slots",
        "reserved_standard_slots",
        "interactive_runners",
        "batch_runners",
        "lane_weights",
        "queue_high_water",
    )
    return " ".join(f"{k}={settings[k]}" for k in keys if k in settings)


def _lanes_of(weights: object) -> str:
    if isinstance(weights, Mapping):
        return "/".join(str(weights.get(lane, "?")) for lane in ALL_LANES)
    return str(weights)


def kind_tables(report: Report, result: KindResult) -> list[Table]:
    settings = report.settings.get(result.kind, {})
    shown = {k: _lanes_of(v) if isinstance(v, Mapping) else v for k, v in settings.items()}
    tokens = result.unit == "tok/s"
    bulk_columns: dict[str, Getter] = {
        "batch": "phase",
        "items": "items",
        "succeeded": "succeeded",
        "s": "seconds",
        "docs/s": "docs_per_s",
        **({"tokens": "tokens", "tok/s": "tokens_per_s"} if tokens else {}),
        "docs/s during calls": lambda r: _blank_nan(r.during_probes_docs_per_s),
        "calls cover": lambda r: "" if math.isnan(r.probes_cover) else f"{r.probes_cover:.0%}",
        "client s": "client_elapsed_s",
        "not succeeded": lambda r: (
            format_errors({k: v for k, v in r.statuses.items() if k != "SUCCEEDED"})
            + (f" ({r.error})" if r.error else "")
        ),
    }
    phases = [
        (f"interactive {r.phase}", r.seconds, r.cpu_s) for r in (result.idle, result.under_bulk)
    ] + [(f"bulk {r.phase}", r.seconds, r.cpu_s) for r in (result.bulk_alone, result.bulk_with)]
    cpu_rows = [
        [
            label,
            *(cpu.get(g, 0.0) for g in CPU_GROUPS),
            f"{cpu.get('machine', 0.0) / seconds:.2f}" if seconds > 0 else "nan",
        ]
        for label, seconds, cpu in phases
    ]
    first_errors = [r.first_error for r in (result.idle, result.under_bulk) if r.first_error]
    return [
        Table.of_items(
            f"interactive: sequential calls, {result.measure} (ms; e2e: the whole call)",
            {
                "phase": "phase",
                "calls": "requests",
                "calls/s": lambda r: f"{r.requests / r.seconds:.1f}" if r.seconds else "nan",
                "p50": "p50_ms",
                "p90": "p90_ms",
                "p99": "p99_ms",
                "max": "max_ms",
                "mean": "mean_ms",
                "e2e p50": "e2e_p50_ms",
                "errors": lambda r: format_errors(r.errors),
            },
            [result.idle, result.under_bulk],
            notes=[f"first error: {first_errors[0]}"] if first_errors else [],
            section=f"{result.kind}",
            about=[
                f"worker: {_settings_line(shown)}",
                f"bulk: {result.bulk_alone.items} items in the {report.bulk_lane} lane; "
                f"stack ready in {result.stack_start_s:.1f}s",
            ],
        ),
        Table.of_items(
            "interactive calls, where the time went (means, ms, of the calls' tasks from "
            "Tasks.Get: queued: gateway → intake hand-off; waited: → the worker started it; "
            "ran: in the worker, of it batched: waiting for a micro-batch, inference: the "
            "model run; rest: the whole call's remainder: gRPC, gateway, Kafka, Redis)",
            {
                "phase": "phase",
                "tasks": "staged",
                "e2e": "e2e_mean_ms",
                **{stage: _stage(stage) for stage in STAGES},
                "rest": rest_ms,
            },
            [result.idle, result.under_bulk],
        ),
        Table.of_items(
            "bulk: one batch through Tasks.SubmitBatch (the bulk client), first ack → last "
            "result; calls cover: share of that span the interactive calls ran",
            bulk_columns,
            [result.bulk_alone, result.bulk_with],
        ),
        Table.of(
            "cpu seconds by component per phase (generation's engine counts as the worker)",
            ["phase", *CPU_GROUPS, "cores busy"],
            cpu_rows,
            digits=2,
        ),
    ]


def output(report: Report) -> Output:
    tables = [t for result in report.kinds for t in kind_tables(report, result)]
    summary = Table.of(
        f"== summary (interactive under bulk / idle: target p50 <= {TARGET_P50_RATIO:g}x; "
        f"bulk with interactive / alone: target >= {TARGET_THROUGHPUT_RATIO:g})",
        [
            "kind",
            "measure",
            "idle p50",
            "bulk p50",
            "ratio",
            "idle p99",
            "bulk p99",
            "ratio",
            "bulk alone",
            "with calls",
            "ratio",
            "unit",
            "p50 target",
            "rate target",
        ],
        [
            [
                r.kind,
                r.measure,
                r.idle.p50_ms,
                r.under_bulk.p50_ms,
                f"{r.ratios.p50:.2f}",
                r.idle.p99_ms,
                r.under_bulk.p99_ms,
                f"{r.ratios.p99:.2f}",
                throughput(r.bulk_alone, r.unit),
                throughput(r.bulk_with, r.unit),
                f"{r.ratios.throughput:.2f}",
                r.unit,
                _yes(r.ratios.meets_p50),
                _yes(r.ratios.meets_throughput),
            ]
            for r in report.kinds
        ],
    )
    return Output([f"bulk lane: {report.bulk_lane}"], [*tables, summary])


def main(argv: list[str] | None = None) -> int:
    bench = Bench(
        "lanes",
        __doc__,
        env="environment for every stack service, e.g. NLP_INTERACTIVE_RUNNERS=0 (repeatable)",
        plan=Plan(),
        quick_plan=QUICK,
        load_hint="see the 'other' CPU column",
    )
    bench.option("docs", "documents in each analysis batch")
    bench.option("idle_requests", "sequential interactive calls on the idle stack (analysis)")
    bench.option("interval_s", "seconds from one interactive call's start to the next's", 0)
    bench.option("gen_tasks", "generations in each generation batch")
    bench.option("gen_bulk_max_tokens", "max_tokens of each batch generation")
    bench.option("broker_warmup_s", "seconds of Kafka traffic warming each stack's broker", 0)
    benched = [k for k in (*KINDS, GENERATION) if k in AVAILABLE_KINDS]
    default = [k for k in ("classification", GENERATION) if k in benched]
    bench.parser.add_argument(
        "--kinds",
        default=",".join(default),
        help=f"comma-separated, of {','.join(benched)} (default: {','.join(default)})",
    )
    bench.parser.add_argument(
        "--bulk-lane",
        choices=ALL_LANES,
        default="batch",
        help="the lane of the batch items (default: batch, SubmitBatch's own default)",
    )
    args = bench.parse(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in benched for k in kinds):
        bench.error(f"--kinds: choose from {', '.join(benched)}")
    plan, env = bench.plan, bench.env
    settings = {k: worker_settings(k, env) for k in kinds}
    results = []
    for kind in kinds:
        work = (
            generation_workload(plan, args.bulk_lane)
            if kind == GENERATION
            else analysis_workload(kind, plan, args.bulk_lane)
        )
        results.append(run_kind(work, plan, env))
    report = Report(
        bulk_lane=args.bulk_lane,
        settings=settings,
        kinds=results,
        targets={
            "p50_ratio_max": TARGET_P50_RATIO,
            "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
        },
        errors=sum(errors_of(r) for r in results),
    )
    notes = [
        "one stack per kind, that kind alone; the bulk client runs in this process (its "
        "threads), the interactive calls on this process's event loop",
        f"interactive calls under bulk start {plan.ramp_s:g}s after the batch's first "
        "acknowledgement and stop when only its last items are left to finish (the worker "
        "is no longer saturated then)",
    ]
    if plan.broker_warmup_s > 0:
        notes.append(
            f"each stack's Kafka broker first carried {plan.broker_warmup_s:g}s of traffic on "
            "a scratch topic (--broker-warmup-s 0: cold)"
        )
    return bench.finish(report, output(report), notes=notes, failed=report.errors > 0)


if __name__ == "__main__":
    sys.exit(main())
