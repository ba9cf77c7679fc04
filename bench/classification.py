"""Classification throughput and latency: in-process engine vs. the whole platform.

    python -m bench.classification [--quick] [--docs N] [--out PATH]

Three measurements over one deterministic corpus, all in one run so that their
ratios compare like with like on this machine:

1. direct: ``ZeroShotClassifier.run_batch`` in this process, batch 1, 8, 32;
2. gateway saturation: concurrent ``Classification.Classify`` RPCs through a
   ``LocalStack`` (gRPC → Kafka → intake → Celery → Redis), at several client counts;
3. gateway low-load latency, and the per-stage timings that task results carry.

Prints a table and writes JSON (default ``bench-results/classification.json``).
Every loop is bounded by a count and a time budget; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    tasks_pb2,
    tasks_pb2_grpc,
)
from services.classification.engine import ZeroShotClassifier
from services.classification.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench-results" / "classification.json"
KIND = "classification"
LABELS = ("sports", "politics", "technology", "finance", "health")
MIN_WORDS, MAX_WORDS = 8, 60
SEED = 20240611
# Per-RPC deadline: bounds how long a measurement can overrun its time budget.
RPC_TIMEOUT_S = 30.0
# Settings of the classification worker that shape its throughput.
REPORTED_SETTINGS = {
    "models",
    "default_model",
    "concurrency",
    "batch_max_size",
    "batch_max_wait_ms",
    "poll_max_records",
    "queue_high_water",
    "queue_low_water",
}


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to run; every one stops at its count or its budget."""

    docs: int = 200
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    warmup_requests: int = 24
    latency_requests: int = 200
    latency_pause_s: float = 0.02
    # Sequential requests take the longest, so latency gets a budget of its own.
    latency_budget_s: float = 40.0
    stage_samples: int = 50
    budget_s: float = 20.0


QUICK = Plan(
    docs=60,
    concurrency=(1, 8, 32),
    warmup_requests=8,
    latency_requests=30,
    latency_budget_s=10.0,
    stage_samples=10,
    budget_s=5.0,
)


# --- corpus -----------------------------------------------------------------------------

_FILLERS: dict[str, tuple[str, ...]] = {
    "team": ("City", "United", "the Rovers", "Athletic", "the Wanderers", "Real Sociedad"),
    "player": ("Marta Silva", "James Okafor", "Lena Hoffmann", "Diego Ramos", "Aiko Tanaka"),
    "cup": ("league", "cup", "Champions League", "national championship", "Olympic"),
    "score": ("2-1", "3-0", "1-1", "4-2", "0-1"),
    "party": ("the governing coalition", "the opposition", "the Greens", "the Liberals"),
    "minister": ("the finance minister", "the prime minister", "the interior minister"),
    "country": ("Germany", "Brazil", "India", "Canada", "Kenya", "Japan"),
    "company": ("Northwind", "Contoso", "Globex", "Initech", "Umbrella Systems"),
    "product": ("smartphone", "cloud database", "AI assistant", "laptop", "chip"),
    "pct": ("0.5", "1.2", "3", "4.8", "7", "12"),
    "amount": ("40", "120", "350", "900", "2.5 billion"),
    "condition": ("measles", "type 2 diabetes", "influenza", "heart disease", "asthma"),
    "agency": ("the health ministry", "the WHO", "the regulator", "the disease control agency"),
}

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sports": (
        "{team} beat their rivals {score} on Saturday in front of a sold-out crowd.",
        "{player} scored twice in the second half to send {team} into the {cup} final.",
        "The coach said he would rotate the squad ahead of the {cup} quarter-final next week.",
        "{player} signed a three-year contract extension worth a reported {amount} million.",
        "An injury to the starting goalkeeper forced a late change to the lineup.",
        "Tickets for the {cup} final sold out within hours of going on sale.",
        "After the match the captain praised the defence and the travelling fans.",
        "Fans celebrated the late winner long into the night.",
    ),
    "politics": (
        "{party} won a narrow majority in the regional election held on Sunday.",
        "Lawmakers in {country} debated the new immigration bill late into the night.",
        "{minister} resigned after weeks of pressure over a lobbying scandal.",
        "The senate voted to delay the budget until the coalition agrees on tax reform.",
        "Polls suggest {party} will lose seats in the capital at the next election.",
        "The president met leaders from {country} to discuss sanctions and border security.",
        "Opposition members walked out of parliament in protest at the emergency decree.",
        "The cabinet will meet again on Monday morning.",
    ),
    "technology": (
        "{company} unveiled a new {product} that runs large language models on the device.",
        "Researchers found a security flaw that lets attackers bypass the login screen.",
        "The update improves battery life and adds support for faster wireless charging.",
        "{company} will open a data centre in {country} to cut latency for its cloud users.",
        "Engineers rewrote the scheduler in Rust to reduce memory use by {pct} percent.",
        "The open-source release lets developers train the model on their own hardware.",
        "Reviewers praised the new {product} but said the software still feels unfinished.",
        "The new {product} ships to customers next month.",
    ),
    "finance": (
        "Shares of {company} fell {pct} percent after quarterly earnings missed forecasts.",
        "The central bank raised interest rates by a quarter point to fight inflation.",
        "Bond yields climbed as investors priced in slower growth in {country}.",
        "{company} agreed to buy a rival payments firm for {amount} million dollars.",
        "Analysts expect the stock market to stay volatile until the inflation data is out.",
        "The fund reported a {pct} percent return after shifting from equities into bonds.",
        "Banks tightened lending standards as mortgage defaults rose for a third quarter.",
        "Oil prices slipped as the dollar strengthened again.",
    ),
    "health": (
        "Cases of {condition} rose sharply this winter, according to {agency}.",
        "A new trial shows the drug lowers the risk of {condition} by {pct} percent.",
        "Doctors recommend thirty minutes of exercise a day to protect heart health.",
        "{agency} approved a vaccine for children after reviewing the safety data.",
        "Hospitals in {country} report long waiting lists for routine surgery and scans.",
        "The study links poor sleep to a higher risk of {condition} in older adults.",
        "Nurses warned that staff shortages are delaying treatment in emergency wards.",
        "Flu vaccination clinics open to everyone next week.",
    ),
}


def build_corpus(docs: int, seed: int = SEED) -> list[tuple[str, str]]:
    """``docs`` (topic, text) pairs, topics in turn, each 8-60 words; same seed, same corpus."""
    rng = random.Random(seed)
    corpus = []
    for i in range(docs):
        topic = LABELS[i % len(LABELS)]
        target = rng.randint(MIN_WORDS, MAX_WORDS)
        sentences = [
            template.format(**{k: rng.choice(v) for k, v in _FILLERS.items()}).split()
            for template in rng.sample(_TEMPLATES[topic], len(_TEMPLATES[topic]))
        ]
        # Greedy fill up to the target; sentences that would overshoot it are skipped.
        words: list[str] = []
        for sentence in sentences:
            if len(words) + len(sentence) <= target:
                words += sentence
        # A target below every sentence's length gets the shortest sentence.
        words = words or min(sentences, key=len)
        corpus.append((topic, " ".join(words)))
    return corpus


def classify_requests(
    corpus: Iterable[tuple[str, str]],
) -> list[classification_pb2.ClassifyRequest]:
    labels = [classification_pb2.Label(name=name) for name in LABELS]
    return [classification_pb2.ClassifyRequest(text=text, labels=labels) for _, text in corpus]


# --- results ----------------------------------------------------------------------------


@dataclass
class DirectRun:
    batch_size: int
    docs: int
    seconds: float
    docs_per_s: float


@dataclass
class Driven:
    """What :func:`drive` did: completed jobs, failures by cause, elapsed time."""

    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


@dataclass
class LoadRun:
    concurrency: int
    docs: int
    errors: dict[str, int]
    seconds: float
    docs_per_s: float


@dataclass
class Latency:
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass
class Stages:
    """Mean per-stage time of tasks sent through Tasks.Submit + Tasks.Wait."""

    concurrency: int
    tasks: int
    errors: dict[str, int]
    queued_ms: float
    waited_ms: float
    ran_ms: float
    # Client-side Submit → Wait answer; the remainder is the gateway, gRPC and Redis.
    end_to_end_ms: float
    other_ms: float


@dataclass
class GatewayResults:
    stack_start_s: float
    saturation: list[LoadRun]
    latency: Latency
    stages: list[Stages]
    first_error: str


@dataclass
class Report:
    benchmark: str
    timestamp: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    corpus: dict[str, Any]
    direct: list[DirectRun]
    gateway: GatewayResults
    saturation_docs_per_s: float
    saturation_concurrency: int
    ratios: dict[str, float]
    wall_s: float


class TaskFailedError(Exception):
    """A task ended in a status other than SUCCEEDED."""


# --- direct baseline --------------------------------------------------------------------


def run_direct(
    requests: Sequence[classification_pb2.ClassifyRequest], plan: Plan
) -> tuple[list[DirectRun], str]:
    """Docs/s of the engine in this process per batch size, and the model version."""
    settings = Settings()
    engine = ZeroShotClassifier(settings.default_model, settings.models[settings.default_model])
    # Warm-up: onnxruntime allocates on the first runs; label embeddings get cached
    # (the worker's engine caches them too, so steady state is the fair comparison).
    engine.run_batch(requests[: max(plan.batch_sizes)])
    runs = []
    for batch_size in plan.batch_sizes:
        done = 0
        started = time.perf_counter()
        while done < plan.docs and time.perf_counter() - started < plan.budget_s:
            engine.run_batch([requests[(done + k) % len(requests)] for k in range(batch_size)])
            done += batch_size
        seconds = time.perf_counter() - started
        runs.append(DirectRun(batch_size, done, seconds, done / seconds))
        note(f"direct batch {batch_size}: {done / seconds:.1f} docs/s")
    return runs, engine.info.version


# --- through the gateway ----------------------------------------------------------------


async def drive(
    job: Callable[[int], Awaitable[None]], concurrency: int, total: int, budget_s: float
) -> Driven:
    """Run ``job(0)`` … ``job(total - 1)`` on ``concurrency`` loops, until ``budget_s``.

    Loops take no new job once the budget is spent; jobs in flight finish (their RPC
    deadlines bound them). RPC errors and failed tasks are counted, not raised.
    """
    out = Driven()
    indices = iter(range(total))  # shared: each index is taken by exactly one loop
    started = time.perf_counter()

    async def loop() -> None:
        for i in indices:
            if time.perf_counter() - started > budget_s:
                return
            try:
                await job(i)
            except grpc.aio.AioRpcError as exc:
                out.errors[exc.code().name] += 1
                out.first_error = out.first_error or f"{exc.code().name}: {exc.details()}"
            except TaskFailedError as exc:
                out.errors[str(exc)] += 1
                out.first_error = out.first_error or f"task ended {exc}"
            else:
                out.done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - started
    return out


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p90, p99 (inclusive method; one value is its own percentiles)."""
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


async def run_gateway(
    target: str, requests: Sequence[classification_pb2.ClassifyRequest], plan: Plan
) -> tuple[list[LoadRun], Latency, list[Stages], str]:
    """Saturation per client count, low-load latency and stage timings through ``target``."""
    first_errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=RPC_TIMEOUT_S)
        classification = classification_pb2_grpc.ClassificationStub(channel)
        tasks = tasks_pb2_grpc.TasksStub(channel)

        async def classify(i: int) -> None:
            await classification.Classify(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)

        # Warm-up: connections, the Kafka producer's metadata, the worker's label cache.
        await drive(classify, min(8, plan.warmup_requests), plan.warmup_requests, plan.budget_s)

        saturation = []
        for concurrency in plan.concurrency:
            # At least a few requests per client, so that ramp-up does not dominate.
            driven = await drive(
                classify, concurrency, max(plan.docs, 4 * concurrency), plan.budget_s
            )
            first_errors.append(driven.first_error)
            saturation.append(
                LoadRun(concurrency, driven.done, dict(driven.errors), driven.seconds, driven.per_s)
            )
            note(f"gateway, {concurrency} clients: {driven.per_s:.1f} docs/s")

        latencies: list[float] = []

        async def timed(i: int) -> None:
            await asyncio.sleep(plan.latency_pause_s)  # lets the pipeline go idle in between
            started = time.perf_counter()
            await classify(i)
            latencies.append((time.perf_counter() - started) * 1000)

        driven = await drive(timed, 1, plan.latency_requests, plan.latency_budget_s)
        first_errors.append(driven.first_error)
        p50, p90, p99 = percentiles(latencies)
        latency = Latency(
            len(latencies),
            dict(driven.errors),
            p50,
            p90,
            p99,
            max(latencies, default=float("nan")),
            _mean(latencies),
        )
        note(f"gateway latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms")

        samples: list[tuple[float, float, float, float]] = []

        async def staged(i: int) -> None:
            started = time.perf_counter()
            submitted = await tasks.Submit(
                tasks_pb2.SubmitRequest(classification=requests[i % len(requests)]),
                timeout=RPC_TIMEOUT_S,
            )
            result = await tasks.Wait(
                tasks_pb2.WaitTaskRequest(
                    task_id=submitted.task_id, timeout_ms=int(RPC_TIMEOUT_S * 1000)
                ),
                timeout=RPC_TIMEOUT_S + 5,
            )
            if result.status != common_pb2.TASK_STATUS_SUCCEEDED:
                raise TaskFailedError(common_pb2.TaskStatus.Name(result.status))
            t = result.timings
            samples.append(
                (t.queued_ms, t.waited_ms, t.ran_ms, (time.perf_counter() - started) * 1000)
            )

        # Idle, then at the busiest client count: where the time goes, and where it queues.
        stages = []
        best = max(saturation, key=lambda r: r.docs_per_s).concurrency
        for concurrency in sorted({1, best}):
            samples.clear()
            driven = await drive(
                staged, concurrency, max(plan.stage_samples, 2 * concurrency), plan.budget_s
            )
            first_errors.append(driven.first_error)
            queued, waited, ran, total = (_mean([s[k] for s in samples]) for k in range(4))
            stages.append(
                Stages(
                    concurrency,
                    len(samples),
                    dict(driven.errors),
                    queued,
                    waited,
                    ran,
                    total,
                    total - queued - waited - ran,
                )
            )
    return saturation, latency, stages, next((e for e in first_errors if e), "")


# --- report -----------------------------------------------------------------------------


def note(message: str) -> None:
    """Progress on stderr, so that a long run is not silent and stdout stays the table."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Right-aligned plain-text columns; floats with one decimal."""
    cells = [list(headers)] + [
        [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def _errors(errors: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"


def render(report: Report) -> str:
    gw = report.gateway
    m, c = report.machine, report.corpus
    lat = gw.latency
    parts = [
        f"classification benchmark  {report.timestamp}",
        f"  {m['cpu_count']} CPUs, Python {m['python']}, {m['platform']}",
        f"  load average (1 min): {m['load_avg_1m_at_start']:.2f} at start, "
        f"{m['load_avg_1m_at_end']:.2f} at end",
        f"  corpus: {c['docs']} docs, {c['words_min']}-{c['words_max']} words "
        f"(mean {c['words_mean']:.0f}), labels {','.join(LABELS)}",
        "",
        "direct: ZeroShotClassifier.run_batch in-process",
        table(
            ["batch", "docs", "seconds", "docs/s"],
            [[r.batch_size, r.docs, r.seconds, r.docs_per_s] for r in report.direct],
        ),
        "",
        f"gateway saturation: concurrent Classify RPCs (stack ready in {gw.stack_start_s:.0f}s)",
        table(
            ["clients", "docs", "errors", "seconds", "docs/s"],
            [
                [r.concurrency, r.docs, _errors(r.errors), r.seconds, r.docs_per_s]
                for r in gw.saturation
            ],
        ),
        f"  saturation: {report.saturation_docs_per_s:.1f} docs/s "
        f"at {report.saturation_concurrency} clients",
        "",
        f"gateway latency: sequential Classify, {lat.requests} requests (ms)",
        table(
            ["p50", "p90", "p99", "max", "mean", "errors"],
            [[lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms, lat.mean_ms, _errors(lat.errors)]],
        ),
        "",
        "stages: Tasks.Submit + Tasks.Wait, mean ms (other = gateway, gRPC, Redis)",
        table(
            ["clients", "tasks", "queued", "waited", "ran", "other", "end-to-end", "errors"],
            [
                [
                    s.concurrency,
                    s.tasks,
                    s.queued_ms,
                    s.waited_ms,
                    s.ran_ms,
                    s.other_ms,
                    s.end_to_end_ms,
                    _errors(s.errors),
                ]
                for s in gw.stages
            ],
        ),
        "",
        "ratios (gateway saturation / direct)",
        table(["vs", "ratio"], [[k, f"{v:.3f}"] for k, v in report.ratios.items()]),
    ]
    if gw.first_error:
        parts += ["", f"first error: {gw.first_error}"]
    return "\n".join(parts)


def machine_info(load_at_start: float) -> dict[str, Any]:
    """What the numbers depend on. The load at start shows whether something else was
    running; the one at the end includes this run's own stack.
    """
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_avg_1m_at_start": load_at_start,
        "load_avg_1m_at_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.classification",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--docs", type=int, help="corpus size and docs per measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.docs is not None:
        if args.docs < 1:
            parser.error("--docs must be at least 1")
        plan = replace(plan, docs=args.docs)

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    corpus = build_corpus(plan.docs)
    requests = classify_requests(corpus)
    direct, model_version = run_direct(requests, plan)

    note("starting the local stack (Kafka, Redis, gateway, classification intake + worker)")
    stack_started = time.monotonic()
    with LocalStack(kinds=(KIND,)) as stack:
        stack_start_s = time.monotonic() - stack_started
        saturation, latency, stages, first_error = asyncio.run(
            run_gateway(stack.gateway_target, requests, plan)
        )

    best = max(saturation, key=lambda r: r.docs_per_s)
    direct_by_batch = {r.batch_size: r.docs_per_s for r in direct}
    words = [len(text.split()) for _, text in corpus]
    report = Report(
        benchmark=KIND,
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(load_at_start),
        settings={
            "plan": asdict(plan),
            "quick": args.quick,
            "seed": SEED,
            "rpc_timeout_s": RPC_TIMEOUT_S,
            "model_version": model_version,
            "classification": Settings().model_dump(mode="json", include=REPORTED_SETTINGS),
        },
        corpus={
            "docs": len(corpus),
            "labels": list(LABELS),
            "words_min": min(words),
            "words_max": max(words),
            "words_mean": statistics.fmean(words),
        },
        direct=direct,
        gateway=GatewayResults(stack_start_s, saturation, latency, stages, first_error),
        saturation_docs_per_s=best.docs_per_s,
        saturation_concurrency=best.concurrency,
        ratios={
            f"saturation_vs_direct_batch_{b}": best.docs_per_s / direct_by_batch[b]
            for b in (1, 32)
            if b in direct_by_batch
        },
        wall_s=time.monotonic() - started,
    )
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    note(f"wrote {args.out}")
    # Numbers from a run with failed requests are suspect: say so in the exit status.
    errors = [r.errors for r in saturation] + [latency.errors] + [s.errors for s in stages]
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
