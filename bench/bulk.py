"""Bulk processing: ``nlp batch run`` (SubmitBatch + StreamBatchResults) vs. single RPCs.

    python -m bench.bulk [--quick] [--docs 50000] [--env KEY=VALUE ...] [--out PATH]

One ``LocalStack`` with the classification worker, short documents from the
classification corpus (cycled, each with its own id), all in one run:

1. single: concurrent synchronous Classify RPCs at several client counts; the best
   sustained rate is the single-request saturation rate.
2. bulk: ``nlp batch run`` as its own process over a JSONL file, for a small batch and
   the full one (``--docs``). The gateway's and the CLI's resident memory is sampled
   throughout; the peak of the full batch over the peak of the small one shows whether
   memory grows with the batch size (it should not: both are bounded by windows).

Prints a table and writes JSON (default ``bench-results/bulk.json``). Exit status 1
when a document did not succeed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc

from bench.common import ROOT, Bench, Output, Table, note
from bench.corpora import CORPORA, SEED
from bench.harness import cpu_delta, drive, stack_cpu
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2, classification_pb2_grpc

KIND = "classification"
LABELS = "sports,politics,technology,finance,health"
RPC_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 0.2


@dataclass(frozen=True)
class Plan:
    corpus_docs: int = 400
    single_concurrency: tuple[int, ...] = (64, 128)
    single_docs: int = 5000
    single_budget_s: float = 20.0
    warmup_requests: int = 200
    small_docs: int = 5000
    docs: int = 50_000
    bulk_timeout_s: float = 3600.0


QUICK = Plan(
    single_concurrency=(64,),
    single_docs=600,
    single_budget_s=5.0,
    warmup_requests=50,
    small_docs=300,
    docs=1500,
    bulk_timeout_s=600.0,
)


@dataclass
class SingleRun:
    concurrency: int
    done: int
    errors: dict[str, int]
    seconds: float
    docs_per_s: float


@dataclass
class BulkRun:
    docs: int
    seconds: float
    docs_per_s: float
    statuses: dict[str, int]
    lines: int
    unique_ids: int
    gateway_rss_before_mb: float
    gateway_peak_rss_mb: float
    cli_peak_rss_mb: float
    cpu_s: dict[str, float]
    cli_summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """What the run found (bench.common's record adds when, where and how it ran)."""

    single: list[SingleRun]
    single_saturation_docs_per_s: float
    bulk: list[BulkRun]
    bulk_vs_single: float
    gateway_rss_growth: float
    cli_rss_growth: float


Results = Report


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Samples the resident memory of processes on a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _rss_mb(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_docs(path: Path, texts: list[str], count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"doc-{i}", "text": texts[i % len(texts)]}) + "\n")


async def run_single(target: str, texts: list[str], plan: Plan) -> list[SingleRun]:
    labels = [classification_pb2.Label(name=n) for n in LABELS.split(",")]
    requests = [classification_pb2.ClassifyRequest(text=t, labels=labels) for t in texts]
    runs = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = classification_pb2_grpc.ClassificationStub(channel)

        async def call(i: int) -> None:
            await stub.Classify(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)

        await drive(call, 32, plan.warmup_requests, plan.single_budget_s)
        for concurrency in plan.single_concurrency:
            driven = await drive(call, concurrency, plan.single_docs, plan.single_budget_s)
            runs.append(
                SingleRun(
                    concurrency, driven.done, dict(driven.errors), driven.seconds, driven.per_s
                )
            )
            note(f"single: {concurrency} clients: {driven.per_s:.1f} docs/s")
    return runs


def run_bulk(stack: LocalStack, workdir: Path, texts: list[str], docs: int, plan: Plan) -> BulkRun:
    """One ``nlp batch run`` over ``docs`` documents, as its own process."""
    source = workdir / f"docs-{docs}.jsonl"
    output = workdir / f"results-{docs}.jsonl"
    write_docs(source, texts, docs)
    gateway = stack.services["gateway"].proc
    assert gateway is not None
    command = [
        sys.executable,
        "-m",
        "shared.client.cli",
        "--target",
        stack.gateway_target,
        "--json",
        "batch",
        "run",
        "--kind",
        KIND,
        "--labels",
        LABELS,
        "--input",
        str(source),
        "--output",
        str(output),
        "--no-progress",
    ]
    rss_before = _rss_mb(gateway.pid)
    cpu_before = stack_cpu(stack)
    started = time.monotonic()
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT)
    with cli, PeakRss({"gateway": gateway.pid, "cli": cli.pid}) as peak:
        stdout, _ = cli.communicate(timeout=plan.bulk_timeout_s)
    seconds = time.monotonic() - started
    cpu = cpu_delta(cpu_before, stack_cpu(stack))
    statuses: Counter[str] = Counter()
    ids: set[str] = set()
    lines = 0
    with output.open() as results:
        for line in results:
            lines += 1
            record = json.loads(line)
            ids.add(record["id"])
            statuses[record["status"]] += 1
    try:
        summary = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {"unparsed": stdout.decode(errors="replace")[-2000:]}
    run = BulkRun(
        docs,
        seconds,
        statuses["SUCCEEDED"] / seconds,
        dict(statuses),
        lines,
        len(ids),
        rss_before,
        peak.peak["gateway"],
        peak.peak["cli"],
        {k: round(v, 2) for k, v in cpu.items()},
        summary,
    )
    note(
        f"bulk {docs}: {run.docs_per_s:.1f} docs/s, gateway peak {run.gateway_peak_rss_mb:.0f} MB,"
        f" CLI peak {run.cli_peak_rss_mb:.0f} MB"
    )
    return run


def output(report: Report) -> Output:
    saturation = report.single_saturation_docs_per_s
    single = Table.of_items(
        "single synchronous RPCs (saturation = best)",
        {
            "clients": "concurrency",
            "docs": "done",
            "errors": lambda r: sum(r.errors.values()),
            "s": "seconds",
            "docs/s": "docs_per_s",
        },
        report.single,
    )
    bulk = Table.of_items(
        "`nlp batch run` (one process; gateway SubmitBatch + StreamBatchResults)",
        {
            "docs": "docs",
            "s": "seconds",
            "docs/s": "docs_per_s",
            "vs single": lambda r: f"{r.docs_per_s / saturation:.2f}",
            "succeeded": lambda r: r.statuses.get("SUCCEEDED", 0),
            "lines": "lines",
            "unique ids": "unique_ids",
            "gateway RSS MB before/peak": lambda r: (
                f"{r.gateway_rss_before_mb:.0f} / {r.gateway_peak_rss_mb:.0f}"
            ),
            "CLI peak RSS MB": lambda r: f"{r.cli_peak_rss_mb:.0f}",
        },
        report.bulk,
        notes=[
            f"bulk / single saturation: {report.bulk_vs_single:.2f}; peak RSS of the largest "
            f"batch over the smallest: gateway {report.gateway_rss_growth:.2f}, "
            f"CLI {report.cli_rss_growth:.2f}"
        ],
    )
    return Output([f"kind: {KIND}"], [single, bulk])


def main(argv: list[str] | None = None) -> int:
    bench = Bench("bulk", __doc__, plan=Plan(), quick_plan=QUICK)
    bench.option("docs", "documents in the full batch")
    bench.parse(argv)
    plan = bench.plan
    texts = [r.text for r in CORPORA[KIND](plan.corpus_docs, SEED).requests]
    note("starting the local stack (Kafka, Redis, gateway, classification)")
    with (
        TemporaryDirectory(prefix="nlp-bulk-") as tmp,
        LocalStack(kinds=(KIND,), env=bench.env) as stack,
    ):
        single = asyncio.run(run_single(stack.gateway_target, texts, plan))
        bulk = [run_bulk(stack, Path(tmp), texts, n, plan) for n in (plan.small_docs, plan.docs)]
    saturation = max(r.docs_per_s for r in single)
    report = Report(
        single=single,
        single_saturation_docs_per_s=saturation,
        bulk=bulk,
        bulk_vs_single=bulk[-1].docs_per_s / saturation,
        gateway_rss_growth=bulk[-1].gateway_peak_rss_mb / max(bulk[0].gateway_peak_rss_mb, 1e-9),
        cli_rss_growth=bulk[-1].cli_peak_rss_mb / max(bulk[0].cli_peak_rss_mb, 1e-9),
    )
    complete = all(r.statuses.get("SUCCEEDED", 0) == r.docs == r.unique_ids for r in bulk)
    failed = not complete or any(r.errors for r in single)
    return bench.finish(report, output(report), failed=failed)


if __name__ == "__main__":
    sys.exit(main())
