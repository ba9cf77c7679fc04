"""Throughput, batching and latency of every kind: the engine in-process vs. the platform.

    python -m bench.analysis [--quick] [--kinds K1,K2] [--env KEY=VALUE ...] [--out PATH]

For classification, NER and summarization, each over its deterministic corpus
(``bench.corpora``), all in one run so that ratios compare like with like here:

1. direct: the kind's default engine, built as its worker builds it, called in this
   process with batches of 1, 4, 8, 16 and 32, from one thread and from one thread per
   core, taking turns over a few rounds; the best is the baseline. It runs before the
   stack starts, so that no stack process takes CPU from it.
2. saturation: concurrent synchronous RPCs through one ``LocalStack`` (gRPC → Kafka →
   intake → Celery → micro-batcher → Redis), one kind at a time while the others
   idle, at several client counts; the best is saturation. CPU seconds of every stack
   process are read around each level, to show where the time goes.
3. batches and stages: Tasks.Submit + Tasks.Wait at the saturation client count and
   at one client: the size of the micro-batch each task ran in and its stage timings.
4. latency: sequential single RPCs, whose answers are also checked against the
   direct engine's answers for the same documents.

Prints tables (progress goes to stderr) and writes JSON (default
``bench-results/analysis.json``). ``--env`` reaches every stack service, e.g.
``--env NLP_BATCH_MAX_SIZE=32`` to compare worker settings. Every loop is bounded by a
count and a time budget; traffic stays on 127.0.0.1. Exit status 1 when any request
failed (the numbers are suspect then).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench.common import Bench, Getter, Output, Table, cpus_usable, format_errors, note
from bench.corpora import CORPORA, KINDS, SEED, Corpus, KindSpec
from bench.harness import (
    TaskFailedError,
    cpu_delta,
    drive,
    environ,
    fold_cpu,
    machine_cpu_s,
    mean,
    percentiles,
    stack_cpu,
)
from deploy.local.stack import AVAILABLE_KINDS, LocalStack
from nlp.v1 import common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts.settings import WorkerSettings
from shared.runtime.engines import Engine, EngineFactory, StreamingEngine

# Per-RPC deadline: bounds how far a measurement can overrun its time budget.
RPC_TIMEOUT_S = 30.0
# Documents whose direct answers the sequential RPCs are compared with.
CHECKED_DOCS = 100
# Worker settings that shape throughput, reported per kind.
REPORTED_SETTINGS = {
    "default_model",
    "models",
    "concurrency",
    "batch_max_size",
    "batch_max_wait_ms",
    "batch_runners",
    "poll_max_records",
    "queue_high_water",
    "queue_low_water",
}
# CPU columns, in table order; see group_cpu.
CPU_GROUPS = ("gateway", "intake", "worker", "kafka", "redis", "idle", "client", "other")


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to run; every one stops at its count or its budget."""

    corpus_docs: int = 400
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    # Per batch size, over all rounds.
    direct_docs: int = 2000
    direct_budget_s: float = 5.0
    direct_rounds: int = 3
    concurrency: tuple[int, ...] = (8, 32, 64, 128)
    load_docs: int = 5000
    load_budget_s: float = 15.0
    warmup_requests: int = 96
    sample_tasks: int = 400
    sample_budget_s: float = 10.0
    idle_tasks: int = 30
    latency_requests: int = 200
    # Sequential requests take the longest, so latency gets a budget of its own.
    latency_budget_s: float = 15.0
    latency_pause_s: float = 0.02


QUICK = Plan(
    corpus_docs=100,
    direct_docs=300,
    direct_budget_s=1.0,
    direct_rounds=1,
    concurrency=(8, 32, 64),
    load_docs=1000,
    load_budget_s=3.0,
    warmup_requests=32,
    sample_tasks=128,
    sample_budget_s=3.0,
    idle_tasks=10,
    latency_requests=40,
    latency_budget_s=4.0,
)


# --- engines ------------------------------------------------------------------------------


def worker_settings(kind: str, env: Mapping[str, str]) -> WorkerSettings:
    """The kind's worker settings as its services see them with ``env`` applied."""
    with environ(env):
        settings: WorkerSettings = importlib.import_module(f"services.{kind}.settings").Settings()
    return settings


def load_engine(kind: str, env: Mapping[str, str]) -> Engine:
    """The kind's default engine, built as its worker builds it."""
    settings = worker_settings(kind, env)
    factories: Mapping[str, EngineFactory] = importlib.import_module(
        f"services.{kind}.engine"
    ).FACTORIES
    spec = settings.models[settings.default_model]
    # Under env too: an override such as OMP_NUM_THREADS must shape this engine as well.
    with environ(env):
        engine = factories[spec.engine](settings.default_model, spec)
    # The analysis kinds batch through run_batch; streaming engines are generation's.
    assert not isinstance(engine, StreamingEngine), kind
    return engine


# --- results ------------------------------------------------------------------------------


@dataclass
class DirectRun:
    batch_size: int
    # Threads calling run_batch at once (the worker's batch runners do the same).
    callers: int
    docs: int
    seconds: float
    docs_per_s: float
    # CPU of this process per wall second (above 1: the engine used several cores).
    cpu_cores: float
    cpu_ms_per_doc: float
    # CPU the rest of the machine used meanwhile (another program's load skews the run).
    other_cores: float


@dataclass
class DirectResult:
    kind: str
    model: str
    model_version: str
    load_s: float
    check: dict[str, float]
    runs: list[DirectRun]
    best_batch_size: int
    best_callers: int
    best_docs_per_s: float


@dataclass
class LoadRun:
    concurrency: int
    docs: int
    errors: dict[str, int]
    seconds: float
    docs_per_s: float
    # CPU seconds per component (CPU_GROUPS) and the machine's total busy and stolen time.
    cpu_s: dict[str, float]


@dataclass
class StageSample:
    """Tasks.Submit + Tasks.Wait at one client count: stages and the batches tasks ran in."""

    concurrency: int
    tasks: int
    errors: dict[str, int]
    docs_per_s: float
    queued_ms: float
    waited_ms: float
    ran_ms: float
    # Client-side Submit → Wait answer; the remainder is the gateway, Kafka acks, Redis, gRPC.
    end_to_end_ms: float
    other_ms: float
    # Batch size → tasks that reported it.
    batch_sizes: dict[int, int]
    # Mean size of the batch a task ran in (a batch of 16 counts 16 times).
    batch_mean_per_task: float
    # Tasks / batches, each batch of size s having contributed s tasks (edges approximate).
    batch_mean_per_batch: float
    batch_max: int


@dataclass
class Latency:
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # Fraction of answers equal (by the kind's key) to the direct engine's for the same doc.
    agreement: float
    compared: int
    seconds: float
    # As LoadRun.cpu_s: what an idle platform spends per request, and whether
    # something else on the machine was busy meanwhile.
    cpu_s: dict[str, float]
    # Every latency in order, to see drift or periodic stalls over the run.
    samples_ms: list[float]


@dataclass
class GatewayResult:
    kind: str
    warmup: dict[str, Any]
    load: list[LoadRun]
    saturation_concurrency: int
    saturation_docs_per_s: float
    at_saturation: StageSample
    idle: StageSample
    latency: Latency
    first_error: str


@dataclass
class Summary:
    kind: str
    direct_docs_per_s: float
    direct_batch_size: int
    direct_callers: int
    gateway_docs_per_s: float
    gateway_clients: int
    ratio: float
    batch_mean: float
    batch_max: int
    p50_ms: float
    p99_ms: float
    # CPU per doc of the best direct run, and of the stack's processes at saturation
    # (gateway, intake, worker, Kafka, Redis, idle kinds; not the client, not others).
    direct_cpu_ms_per_doc: float
    stack_cpu_ms_per_doc: float


@dataclass
class Report:
    """What the run found (bench.common's record adds when, where and how it ran)."""

    settings: dict[str, dict[str, Any]]
    corpora: dict[str, dict[str, Any]]
    direct: list[DirectResult]
    stack_start_s: float
    gateway: list[GatewayResult]
    summary: list[Summary]
    errors: int = 0


Results = Report


# --- direct baseline ----------------------------------------------------------------------


def _call_concurrently(
    engine: Engine,
    requests: Sequence[Any],
    batch_size: int,
    callers: int,
    start: int,
    limit: int,
    budget_s: float,
) -> int:
    """Batches from ``requests`` (cyclically, from ``start``) on ``callers`` threads until
    ``limit`` documents or ``budget_s``; returns the documents done."""
    lock = threading.Lock()
    position = start
    t0 = time.perf_counter()

    def loop() -> None:
        nonlocal position
        while time.perf_counter() - t0 < budget_s:
            with lock:
                if position >= limit:
                    return
                first, position = position, position + batch_size
            engine.run_batch([requests[(first + k) % len(requests)] for k in range(batch_size)])

    threads = [threading.Thread(target=loop) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return position - start


def run_direct(
    spec: KindSpec, corpus: Corpus, plan: Plan, env: Mapping[str, str]
) -> tuple[DirectResult, list[object]]:
    """Docs/s of the engine in this process per batch size; also the answers' keys for
    the first :data:`CHECKED_DOCS` documents."""
    started = time.perf_counter()
    engine = load_engine(spec.name, env)
    load_s = time.perf_counter() - started
    requests = corpus.requests
    # Warm-up and answers to check: runtimes allocate on first runs, and label
    # embeddings get cached (the worker's engine caches them too: steady state is fair).
    checked = requests[:CHECKED_DOCS]
    step = max(plan.batch_sizes)
    outputs = [
        o for i in range(0, len(checked), step) for o in engine.run_batch(checked[i : i + step])
    ]
    for batch_size in plan.batch_sizes:
        engine.run_batch(requests[:batch_size])  # each batch shape once, untimed
    # Each batch size with one caller and with one per core, since an engine may go
    # faster as several concurrent calls than as one call on every core (the ONNX
    # engines do): the baseline is the best the engine can do in one process.
    # The setups take turns over several rounds, so that drift in the machine's speed
    # (a shared host) spreads over all of them instead of favouring one.
    setups = [(b, c) for b in plan.batch_sizes for c in sorted({1, cpus_usable()})]
    docs = dict.fromkeys(setups, 0)
    # Per setup: seconds, own CPU seconds, the machine's busy seconds.
    spent = {setup: [0.0, 0.0, 0.0] for setup in setups}
    docs_per_round = -(-plan.direct_docs // plan.direct_rounds)
    budget_s = plan.direct_budget_s / plan.direct_rounds
    for _ in range(plan.direct_rounds):
        for setup in setups:
            batch_size, callers = setup
            start, limit = docs[setup], docs[setup] + docs_per_round
            cpu0, (busy0, _) = time.process_time(), machine_cpu_s()
            t0 = time.perf_counter()
            done = _call_concurrently(engine, requests, batch_size, callers, start, limit, budget_s)
            docs[setup] = start + done
            totals = spent[setup]
            totals[0] += time.perf_counter() - t0
            totals[1] += time.process_time() - cpu0
            totals[2] += machine_cpu_s()[0] - busy0
    runs = []
    for (batch_size, callers), (seconds, cpu, busy) in spent.items():
        done = docs[batch_size, callers]
        runs.append(
            DirectRun(
                batch_size,
                callers,
                done,
                seconds,
                done / seconds,
                cpu / seconds,
                cpu * 1000 / done,
                max(0.0, busy - cpu) / seconds,
            )
        )
        note(f"{spec.name}: direct batch {batch_size} x{callers}: {done / seconds:.1f} docs/s")
    best = max(runs, key=lambda r: r.docs_per_s)
    result = DirectResult(
        spec.name,
        engine.info.name,
        engine.info.version,
        load_s,
        spec.check(corpus, outputs),
        runs,
        best.batch_size,
        best.callers,
        best.docs_per_s,
    )
    return result, [spec.key(o) for o in outputs]


# --- through the gateway ------------------------------------------------------------------


def group_cpu(delta: Mapping[str, float], kind: str) -> dict[str, float]:
    """Per-process CPU seconds folded into CPU_GROUPS (``idle``: the other kinds' services)."""
    return fold_cpu(delta, kind, CPU_GROUPS)


def batch_stats(sizes: Counter[int]) -> tuple[float, float, int]:
    """Mean batch size per task, per batch, and the largest."""
    tasks = sum(sizes.values())
    if not tasks:
        return float("nan"), float("nan"), 0
    batches = sum(count / size for size, count in sizes.items() if size > 0)
    per_task = sum(size * count for size, count in sizes.items()) / tasks
    return per_task, tasks / batches if batches else float("nan"), max(sizes)


async def stage_sample(
    tasks: tasks_pb2_grpc.TasksAsyncStub,
    kind: str,
    requests: Sequence[Any],
    concurrency: int,
    total: int,
    budget_s: float,
) -> tuple[StageSample, str]:
    """Submit + Wait ``total`` tasks on ``concurrency`` clients; stage means and batch sizes."""
    samples: list[tuple[float, float, float, float]] = []
    sizes: Counter[int] = Counter()

    async def job(i: int) -> None:
        started = time.perf_counter()
        submit = tasks_pb2.SubmitRequest()
        getattr(submit, kind).CopyFrom(requests[i % len(requests)])
        submitted = await tasks.Submit(submit, timeout=RPC_TIMEOUT_S)
        result = await tasks.Wait(
            tasks_pb2.WaitTaskRequest(
                task_id=submitted.task_id, timeout_ms=int(RPC_TIMEOUT_S * 1000)
            ),
            timeout=RPC_TIMEOUT_S + 5,
        )
        if result.status != common_pb2.TASK_STATUS_SUCCEEDED:
            raise TaskFailedError(common_pb2.TaskStatus.Name(result.status))
        t = result.timings
        samples.append((t.queued_ms, t.waited_ms, t.ran_ms, (time.perf_counter() - started) * 1000))
        sizes[result.batch_size] += 1

    # At least two tasks per client, so that every client waits for a batch at least once.
    driven = await drive(job, concurrency, max(total, 2 * concurrency), budget_s)
    queued, waited, ran, end_to_end = (mean(s[k] for s in samples) for k in range(4))
    per_task, per_batch, largest = batch_stats(sizes)
    sample = StageSample(
        concurrency,
        len(samples),
        dict(driven.errors),
        driven.per_s,
        queued,
        waited,
        ran,
        end_to_end,
        end_to_end - queued - waited - ran,
        dict(sorted(sizes.items())),
        per_task,
        per_batch,
        largest,
    )
    return sample, driven.first_error


async def run_gateway(
    stack: LocalStack,
    channel: grpc.aio.Channel,
    spec: KindSpec,
    corpus: Corpus,
    plan: Plan,
    direct_keys: Sequence[object],
) -> GatewayResult:
    """Saturation, batches, stages and latency of one kind through the stack's gateway."""
    rpc = spec.rpc(channel)
    tasks = tasks_pb2_grpc.TasksStub(channel)
    requests = corpus.requests
    first_errors: list[str] = []

    async def call(i: int) -> None:
        await rpc(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)

    # Warm-up at several batch sizes: connections, the Kafka producer's metadata, the
    # worker's caches and runtime allocations for new shapes.
    warm = await drive(
        call, min(32, plan.warmup_requests), plan.warmup_requests, plan.load_budget_s
    )
    first_errors.append(warm.first_error)

    load = []
    for concurrency in plan.concurrency:
        before = stack_cpu(stack)
        # At least a few requests per client, so that ramp-up does not dominate.
        driven = await drive(
            call, concurrency, max(plan.load_docs, 4 * concurrency), plan.load_budget_s
        )
        cpu = group_cpu(cpu_delta(before, stack_cpu(stack)), spec.name)
        first_errors.append(driven.first_error)
        load.append(
            LoadRun(
                concurrency, driven.done, dict(driven.errors), driven.seconds, driven.per_s, cpu
            )
        )
        note(
            f"{spec.name}: gateway, {concurrency} clients: {driven.per_s:.1f} docs/s, "
            f"{cpu['machine'] / driven.seconds:.2f} cores busy"
        )
    best = max(load, key=lambda r: r.docs_per_s)

    at_saturation, error = await stage_sample(
        tasks, spec.name, requests, best.concurrency, plan.sample_tasks, plan.sample_budget_s
    )
    first_errors.append(error)
    note(
        f"{spec.name}: batches at {best.concurrency} clients: mean "
        f"{at_saturation.batch_mean_per_task:.1f} per task, max {at_saturation.batch_max}"
    )
    idle, error = await stage_sample(
        tasks, spec.name, requests, 1, plan.idle_tasks, plan.sample_budget_s
    )
    first_errors.append(error)

    latencies: list[float] = []
    agreed = Counter[bool]()

    async def timed(i: int) -> None:
        await asyncio.sleep(plan.latency_pause_s)  # lets the pipeline go idle in between
        started = time.perf_counter()
        response = await rpc(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)
        latencies.append((time.perf_counter() - started) * 1000)
        if i < len(direct_keys):
            agreed[spec.key(response) == direct_keys[i]] += 1

    before = stack_cpu(stack)
    driven = await drive(timed, 1, plan.latency_requests, plan.latency_budget_s)
    cpu = group_cpu(cpu_delta(before, stack_cpu(stack)), spec.name)
    first_errors.append(driven.first_error)
    p50, p90, p99 = percentiles(latencies)
    compared = agreed.total()
    latency = Latency(
        len(latencies),
        dict(driven.errors),
        p50,
        p90,
        p99,
        max(latencies, default=float("nan")),
        mean(latencies),
        agreed[True] / compared if compared else float("nan"),
        compared,
        driven.seconds,
        cpu,
        [round(v, 1) for v in latencies],
    )
    note(f"{spec.name}: latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return GatewayResult(
        spec.name,
        {"requests": warm.done, "errors": dict(warm.errors), "seconds": warm.seconds},
        load,
        best.concurrency,
        best.docs_per_s,
        at_saturation,
        idle,
        latency,
        next((e for e in first_errors if e), ""),
    )


async def run_all_gateway(
    stack: LocalStack,
    specs: Sequence[KindSpec],
    corpora: Mapping[str, Corpus],
    plan: Plan,
    direct_keys: Mapping[str, Sequence[object]],
) -> list[GatewayResult]:
    """:func:`run_gateway` for each kind in turn over one channel."""
    results = []
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=RPC_TIMEOUT_S)
        for spec in specs:
            results.append(
                await run_gateway(
                    stack, channel, spec, corpora[spec.name], plan, direct_keys[spec.name]
                )
            )
    return results


# --- output -------------------------------------------------------------------------------


def _cpu_rows(gw: GatewayResult) -> list[list[object]]:
    """Per client count, then sequential: CPU ms per doc of each component, cores in use."""
    lat = gw.latency
    runs = [(str(r.concurrency), r.docs, r.seconds, r.cpu_s) for r in gw.load]
    rows: list[list[object]] = []
    for label, docs, seconds, cpu_s in [*runs, ("seq", lat.requests, lat.seconds, lat.cpu_s)]:
        per_doc = [cpu_s[g] * 1000 / docs if docs else float("nan") for g in CPU_GROUPS]
        total = cpu_s["machine"] * 1000 / docs if docs else float("nan")
        busy, steal = cpu_s["machine"] / seconds, cpu_s["steal"] / seconds
        rows.append([label, *per_doc, total, f"{busy:.2f}", f"{steal:.2f}"])
    return rows


def stack_cpu_ms_per_doc(run: LoadRun) -> float:
    """CPU ms per doc of the platform's own processes during one load run."""
    ours = sum(run.cpu_s[g] for g in CPU_GROUPS if g not in ("client", "other"))
    return ours * 1000 / run.docs if run.docs else float("nan")


def _settings_line(settings: Mapping[str, Any]) -> str:
    keys = ("batch_max_size", "batch_max_wait_ms", "batch_runners", "concurrency")
    return " ".join(f"{k}={settings[k]}" for k in keys)


def kind_tables(report: Report, direct: DirectResult, gw: GatewayResult) -> list[Table]:
    """The tables of one kind."""
    c = report.corpora[direct.kind]
    extra = ""
    if "names_mean" in c:
        extra = f", {c['names_mean']:.1f} planted names per doc"
    if "sentences_min" in c:
        extra = f", {c['sentences_min']}-{c['sentences_max']} sentences"
    check = ", ".join(f"{k} {v:.2f}" for k, v in direct.check.items())
    sat, lat = gw.at_saturation, gw.latency
    stage_columns: dict[str, Getter] = {
        "clients": "concurrency",
        "tasks": "tasks",
        "docs/s": "docs_per_s",
        "queued": "queued_ms",
        "waited": "waited_ms",
        "ran": "ran_ms",
        "other": "other_ms",
        "end-to-end": "end_to_end_ms",
        "batch/task": "batch_mean_per_task",
        "batch/batch": "batch_mean_per_batch",
        "max": "batch_max",
        "errors": lambda s: format_errors(s.errors),
    }
    return [
        Table.of_items(
            f"direct: run_batch in-process (engine loaded in {direct.load_s:.1f}s; {check})",
            {
                "batch": "batch_size",
                "callers": "callers",
                "docs": "docs",
                "seconds": "seconds",
                "docs/s": "docs_per_s",
                "cpu cores": lambda r: f"{r.cpu_cores:.2f}",
                "ms cpu/doc": "cpu_ms_per_doc",
                "other cores": lambda r: f"{r.other_cores:.2f}",
            },
            direct.runs,
            notes=[
                f"best: {direct.best_docs_per_s:.1f} docs/s at batch {direct.best_batch_size}"
                f" x{direct.best_callers} callers"
            ],
            section=f"{direct.kind}: {direct.model} ({direct.model_version})",
            about=[
                f"worker: {_settings_line(report.settings[direct.kind])}",
                f"corpus: {c['docs']} docs, {c['words_min']}-{c['words_max']} words "
                f"(mean {c['words_mean']:.0f}){extra}",
            ],
        ),
        Table.of_items(
            "gateway: concurrent sync RPCs",
            {
                "clients": "concurrency",
                "docs": "docs",
                "errors": lambda r: format_errors(r.errors),
                "seconds": "seconds",
                "docs/s": "docs_per_s",
            },
            gw.load,
            notes=[
                f"saturation: {gw.saturation_docs_per_s:.1f} docs/s at "
                f"{gw.saturation_concurrency} clients"
            ],
        ),
        Table.of(
            "cpu ms per doc by component (idle: the other kinds' services; other: not ours; "
            "seq: the latency run)",
            ["clients", *CPU_GROUPS, "total", "cores busy", "steal"],
            _cpu_rows(gw),
        ),
        Table.of_items(
            "stages: Tasks.Submit + Tasks.Wait, mean ms (other: gateway, Kafka ack, Redis, "
            "gRPC); batch: size tasks ran in",
            stage_columns,
            [gw.idle, sat],
            notes=[
                f"batch sizes at {sat.concurrency} clients (size:tasks): "
                + " ".join(f"{k}:{v}" for k, v in sat.batch_sizes.items())
            ],
        ),
        Table.of_items(
            f"latency: sequential sync RPCs, {lat.requests} requests (ms); agreement with "
            f"direct on {lat.compared} docs",
            {
                "p50": "p50_ms",
                "p90": "p90_ms",
                "p99": "p99_ms",
                "max": "max_ms",
                "mean": "mean_ms",
                "agreement": lambda r: f"{r.agreement:.3f}",
                "errors": lambda r: format_errors(r.errors),
            },
            [lat],
            notes=[f"first error: {gw.first_error}"] if gw.first_error else [],
        ),
    ]


def output(report: Report) -> Output:
    """Every kind's tables, then the summary."""
    tables = [
        t
        for direct, gw in zip(report.direct, report.gateway, strict=True)
        for t in kind_tables(report, direct, gw)
    ]
    summary = Table.of_items(
        "== summary (ratio: gateway saturation / best direct; batch: mean size per task at "
        "saturation; p50/p99: sequential latency, ms; cpu/doc: ms, stack without the client)",
        {
            "kind": "kind",
            "direct docs/s": "direct_docs_per_s",
            "@batch": "direct_batch_size",
            "x callers": "direct_callers",
            "gateway docs/s": "gateway_docs_per_s",
            "@clients": "gateway_clients",
            "ratio": lambda s: f"{s.ratio:.2f}",
            "batch": "batch_mean",
            "max": "batch_max",
            "p50": "p50_ms",
            "p99": "p99_ms",
            "cpu/doc direct": "direct_cpu_ms_per_doc",
            "cpu/doc stack": "stack_cpu_ms_per_doc",
        },
        report.summary,
    )
    return Output([f"stack ready in {report.stack_start_s:.1f}s"], [*tables, summary])


def _errors_of(gw: GatewayResult) -> int:
    counts = [r.errors for r in gw.load] + [
        gw.at_saturation.errors,
        gw.idle.errors,
        gw.latency.errors,
        gw.warmup["errors"],
    ]
    return sum(sum(c.values()) for c in counts)


def summarize(direct: DirectResult, gw: GatewayResult) -> Summary:
    """One kind's line of the summary."""
    best = (direct.best_batch_size, direct.best_callers)
    return Summary(
        direct.kind,
        direct.best_docs_per_s,
        direct.best_batch_size,
        direct.best_callers,
        gw.saturation_docs_per_s,
        gw.saturation_concurrency,
        gw.saturation_docs_per_s / direct.best_docs_per_s,
        gw.at_saturation.batch_mean_per_task,
        gw.at_saturation.batch_max,
        gw.latency.p50_ms,
        gw.latency.p99_ms,
        next(r.cpu_ms_per_doc for r in direct.runs if (r.batch_size, r.callers) == best),
        stack_cpu_ms_per_doc(
            next(r for r in gw.load if r.concurrency == gw.saturation_concurrency)
        ),
    )


def main(argv: list[str] | None = None) -> int:
    bench = Bench(
        "analysis",
        __doc__,
        env="environment for every stack service, e.g. NLP_BATCH_MAX_SIZE=32 (repeatable)",
        plan=Plan(),
        quick_plan=QUICK,
        load_hint="see the 'other cores' and 'other' CPU columns",
    )
    benched = [k for k in KINDS if k in AVAILABLE_KINDS]
    bench.parser.add_argument(
        "--kinds", default=",".join(benched), help=f"comma-separated (default: {','.join(benched)})"
    )
    args = bench.parse(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in benched for k in kinds):
        bench.error(f"--kinds: choose from {', '.join(benched)}")
    env, plan = bench.env, bench.plan
    specs = [KINDS[k] for k in kinds]
    settings = {
        k: worker_settings(k, env).model_dump(mode="json", include=REPORTED_SETTINGS) for k in kinds
    }
    corpora = {k: CORPORA[k](plan.corpus_docs, SEED) for k in kinds}

    # Every direct run first: the stack's processes would take CPU from it.
    direct: list[DirectResult] = []
    keys: dict[str, list[object]] = {}
    for spec in specs:
        result, keys[spec.name] = run_direct(spec, corpora[spec.name], plan, env)
        direct.append(result)
        gc.collect()  # the engine is dropped: its memory should not crowd the stack

    note(f"starting the local stack for {', '.join(kinds)} (Kafka, Redis, gateway, services)")
    stack_started = time.monotonic()
    with LocalStack(kinds=tuple(kinds), env=env) as stack:
        stack_start_s = time.monotonic() - stack_started
        gateway = asyncio.run(run_all_gateway(stack, specs, corpora, plan, keys))

    report = Report(
        settings=settings,
        corpora={k: {**c.stats(), "seed": SEED} for k, c in corpora.items()},
        direct=direct,
        stack_start_s=stack_start_s,
        gateway=gateway,
        summary=[summarize(d, g) for d, g in zip(direct, gateway, strict=True)],
        errors=sum(_errors_of(g) for g in gateway),
    )
    return bench.finish(report, output(report), failed=report.errors > 0)


if __name__ == "__main__":
    sys.exit(main())
