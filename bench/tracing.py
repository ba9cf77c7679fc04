"""What tracing costs: the same stack and load with the OpenTelemetry SDK off and on.

    python -m bench.tracing [--quick] [--rounds 2] [--env KEY=VALUE ...] [--out PATH]

One ``LocalStack`` with the classification worker per mode and round, taking turns
(off, sampled, on, off, …) so that drift of this shared machine hits all alike:

- off: no ``OTEL_*`` endpoint (the SDK is not installed; the API is a no-op);
- sampled: every process traces, ``parentbased_traceidratio`` at 0.1 (what the compose
  file and manifests suggest for production);
- on: every process exports every span (``parentbased_always_on``).

Spans go over OTLP/gRPC to a receiver in this process that counts them (its CPU is in
the ``client`` column, with the load generator's).

For each: saturation throughput of concurrent Classify RPCs (the best of the client
counts), latency of sequential single RPCs, spans exported per task, and CPU per
document of each stack process. The ratio to off of the best round of each mode is the
headline. Prints a table and writes JSON (default ``bench-results/tracing.json``);
exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.corpora import CORPORA, SEED
from bench.harness import (
    add_env_argument,
    cpu_delta,
    drive,
    fold_cpu,
    format_errors,
    machine_info,
    note,
    parse_env,
    percentiles,
    stack_cpu,
    table,
)
from deploy.local.kafka import interrupt_on_termination
from deploy.local.otlp import OtlpSink
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2, classification_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench-results" / "tracing.json"
KIND = "classification"
RPC_TIMEOUT_S = 30.0
MODES: dict[str, dict[str, str]] = {
    "off": {},
    "sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "on": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}
# Export every second (the SDK's default is 5 s): spans leave during the run, not after it.
EXPORT_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "1000"}


@dataclass
class Plan:
    rounds: int = 2
    corpus_docs: int = 400
    concurrency: tuple[int, ...] = (64,)
    docs: int = 4000
    budget_s: float = 20.0
    warmup_requests: int = 300
    latency_requests: int = 150


QUICK = Plan(
    rounds=1, docs=600, budget_s=5.0, warmup_requests=60, latency_requests=30
)  # fmt: skip


@dataclass
class ModeRun:
    mode: str
    round: int
    docs_per_s: float
    clients: int
    done: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    spans: int
    spans_per_task: float
    cpu_ms_per_doc: dict[str, float] = field(default_factory=dict)


@dataclass
class ModesReport:
    """Runs of one stack in several modes, each compared with the ``baseline`` mode."""

    benchmark: str
    timestamp: str
    argv: list[str]
    quick: bool
    plan: dict[str, Any]
    env: dict[str, str]
    machine: dict[str, Any]
    baseline: str
    runs: list[ModeRun]
    best_docs_per_s: dict[str, float]
    throughput_vs_baseline: dict[str, float]
    p50_vs_baseline: dict[str, float]
    wall_s: float

    @classmethod
    def of(
        cls,
        benchmark: str,
        runs: list[ModeRun],
        baseline: str,
        plan: Plan,
        env: dict[str, str],
        quick: bool,
        began: float,
    ) -> ModesReport:
        modes = list(dict.fromkeys(r.mode for r in runs))
        best = {m: max(r.docs_per_s for r in runs if r.mode == m) for m in modes}
        p50 = {m: min(r.p50_ms for r in runs if r.mode == m) for m in modes}
        return cls(
            benchmark=benchmark,
            timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
            argv=sys.argv,
            quick=quick,
            plan=asdict(plan),
            env=env,
            machine=machine_info(),
            baseline=baseline,
            runs=runs,
            best_docs_per_s=best,
            throughput_vs_baseline={m: best[m] / best[baseline] for m in modes},
            p50_vs_baseline={m: p50[m] / p50[baseline] for m in modes},
            wall_s=time.monotonic() - began,
        )

    def render(self, title: str, spans: bool) -> str:
        rows = [
            [
                r.mode,
                r.round,
                r.docs_per_s,
                r.clients,
                r.p50_ms,
                r.p99_ms,
                *([r.spans_per_task] if spans else []),
                *(r.cpu_ms_per_doc[k] for k in CPU_GROUPS),
                format_errors(r.errors),
            ]
            for r in self.runs
        ]
        headers = [
            "mode",
            "round",
            "docs/s",
            "clients",
            "p50 ms",
            "p99 ms",
            *(["spans/task"] if spans else []),
            *CPU_GROUPS,
            "errors",
        ]
        return "\n".join(
            [
                f"{title} (classification, Classify RPCs at saturation; CPU in ms/doc)",
                table(headers, rows, digits=2),
                *(
                    f"  {mode}: best {best:.1f} docs/s, throughput vs {self.baseline} "
                    f"{self.throughput_vs_baseline[mode]:.2f}, single-request p50 vs "
                    f"{self.baseline} {self.p50_vs_baseline[mode]:.2f}"
                    for mode, best in self.best_docs_per_s.items()
                ),
            ]
        )

    def write(self, out: Path) -> int:
        """Write the JSON; the exit status (1 when any request failed)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(self), indent=2))
        note(f"wrote {out}")
        return 1 if any(r.errors for r in self.runs) else 0


CPU_GROUPS = ("gateway", "intake", "worker", "kafka", "redis", "client")


async def measure(
    stack: LocalStack,
    requests: list[classification_pb2.ClassifyRequest],
    plan: Plan,
    sink: OtlpSink | None,
    mode: str,
    rnd: int,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ModeRun:
    """Saturation throughput, sequential latency and CPU per document of one stack (TLS
    with ``credentials``, ``metadata`` on every call)."""
    channel = (
        grpc.aio.insecure_channel(stack.gateway_target)
        if credentials is None
        else grpc.aio.secure_channel(stack.gateway_target, credentials)
    )
    async with channel:
        stub = classification_pb2_grpc.ClassificationStub(channel)

        async def call(i: int) -> None:
            await stub.Classify(
                requests[i % len(requests)], timeout=RPC_TIMEOUT_S, metadata=metadata
            )

        await drive(call, 32, plan.warmup_requests, plan.budget_s)
        best = None
        for clients in plan.concurrency:
            spans_before = sink.count if sink is not None else 0
            before = stack_cpu(stack)
            driven = await drive(call, clients, plan.docs, plan.budget_s)
            after = stack_cpu(stack)
            if sink is not None:  # what the processes still buffer arrives within ~1 s
                await asyncio.sleep(2.5)
            spans = (sink.count - spans_before) if sink is not None else 0
            note(f"{mode} round {rnd}: {clients} clients: {driven.per_s:.1f} docs/s")
            if best is None or driven.per_s > best[1].per_s:
                best = (clients, driven, cpu_delta(before, after), spans)
        assert best is not None
        clients, driven, cpu, spans = best
        latencies = []
        for i in range(plan.latency_requests):
            began = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - began) * 1000)
    p50, _, p99 = percentiles(latencies)
    groups = fold_cpu(cpu, KIND, CPU_GROUPS)
    per_doc = {k: groups[k] * 1000 / max(driven.done, 1) for k in CPU_GROUPS}
    return ModeRun(
        mode=mode,
        round=rnd,
        docs_per_s=driven.per_s,
        clients=clients,
        done=driven.done,
        errors=dict(driven.errors),
        p50_ms=p50,
        p99_ms=p99,
        spans=spans,
        spans_per_task=spans / max(driven.done, 1),
        cpu_ms_per_doc=per_doc,
    )


def run_mode(
    mode: str,
    rnd: int,
    requests: list[classification_pb2.ClassifyRequest],
    plan: Plan,
    env: dict[str, str],
) -> ModeRun:
    if mode == "off":
        with LocalStack(kinds=[KIND], env=env) as stack:
            return asyncio.run(measure(stack, requests, plan, None, mode, rnd))
    with OtlpSink(keep=False) as sink:
        traced = {**env, **EXPORT_ENV, **MODES[mode], "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        with LocalStack(kinds=[KIND], env=traced) as stack:
            return asyncio.run(measure(stack, requests, plan, sink, mode, rnd))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--rounds", type=int, help="off/on pairs (default 2; quick 1)")
    add_env_argument(parser, "environment for every stack service (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    interrupt_on_termination()  # a killed run stops its stacks too
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan.rounds = args.rounds
    env = parse_env(args.env, parser)
    began = time.monotonic()
    requests = CORPORA[KIND](plan.corpus_docs, SEED).requests
    runs = [
        run_mode(mode, rnd, requests, plan, env)
        for rnd in range(1, plan.rounds + 1)
        for mode in MODES
    ]
    report = ModesReport.of("tracing", runs, "off", plan, env, args.quick, began)
    print(report.render("tracing off vs on", spans=True))
    return report.write(args.out)


if __name__ == "__main__":
    sys.exit(main())
