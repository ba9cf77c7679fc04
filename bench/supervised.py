"""A fine-tuned classifier (``hf-sequence-classification``) on its two runtimes, direct
and through the platform.

    python -m bench.supervised [--quick] [--docs N] [--clients N] [--out PATH]

The model is a BERT of a real fine-tuned classifier's shape (6 layers, hidden 384, 12
heads, 5 labels: MiniLM-L6's size), random weights, built here with a WordPiece
vocabulary of the classification corpus (``bench.corpora``), and exported to ONNX with
``services.classification.export``. In one run, so that ratios compare like with like:

1. direct: each runtime (torch on CPU, ONNX Runtime) built as the worker builds it, its
   ``run_batch`` over the corpus in batches of 32, best of 3 rounds, before any stack
   process starts;
2. through the stack: one ``LocalStack`` (classification only) serving both as models
   of their own beside the defaults; ``--clients`` concurrent Classify RPCs over the
   corpus per runtime, then sequential single RPCs for latency.

Prints a table and writes JSON (default ``bench-results/supervised.json``); exit status
1 when any request failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import Bench, Output, Table, format_errors, note
from bench.corpora import LABELS, classification_corpus
from bench.harness import drive, percentiles
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2, classification_pb2_grpc
from services.classification.export import export, largest_difference
from services.classification.settings import Settings
from services.classification.supervised import HfSequenceClassifier
from shared.contracts.settings import ModelSpec
from tests.tiny_models import save_tiny_bert

RUNTIMES = {"torch": {"runtime": "torch", "device": "cpu"}, "onnx": {"runtime": "onnx"}}
BATCH = 32


@dataclass(frozen=True)
class Plan:
    docs: int = 1024
    clients: int = 32
    singles: int = 50
    budget_s: float = 300.0


QUICK = Plan(docs=128, clients=8, singles=10, budget_s=60.0)


@dataclass
class RuntimeRun:
    runtime: str
    direct_docs_per_s: float = 0.0
    stack_docs_per_s: float = 0.0
    single_p50_ms: float = 0.0
    single_p90_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.stack_docs_per_s / self.direct_docs_per_s if self.direct_docs_per_s else 0.0


@dataclass
class Results:
    model: str
    docs: int
    words_mean: float
    max_logit_difference: float
    runs: list[RuntimeRun]


def build_model(folder: Path, texts: list[str]) -> tuple[Path, Path]:
    """The benchmark's classifier (weights) and its ONNX export, under ``folder``."""
    words = {w.strip(".,;:!?'\"()").lower() for t in texts for w in t.split()} - {""}
    weights = save_tiny_bert(
        folder / "weights",
        "BertForSequenceClassification",
        LABELS,
        words,
        max_tokens=256,
        hidden=384,
        layers=6,
        heads=12,
        intermediate=1536,
    )
    return weights, export(weights, folder / "onnx")


def direct(path: Path, params: dict[str, str], texts: list[str], rounds: int = 3) -> float:
    """Best docs/s of the engine's run_batch over ``texts`` in batches of ``BATCH``."""
    engine = HfSequenceClassifier(
        "bench", ModelSpec(engine="hf-sequence-classification", path=path, params=params)
    )
    requests = [classification_pb2.ClassifyRequest(text=t) for t in texts]
    engine.run_batch(requests[:BATCH])  # warm-up: first-call allocations
    best = 0.0
    for _ in range(rounds):
        began = time.perf_counter()
        for i in range(0, len(requests), BATCH):
            engine.run_batch(requests[i : i + BATCH])
        best = max(best, len(requests) / (time.perf_counter() - began))
    return best


async def through_stack(
    stack: LocalStack, model: str, texts: list[str], plan: Plan, run: RuntimeRun
) -> None:
    async with grpc.aio.insecure_channel(stack.gateway_target) as channel:
        stub = classification_pb2_grpc.ClassificationStub(channel)

        async def one(i: int) -> None:
            request = classification_pb2.ClassifyRequest(text=texts[i % len(texts)], model=model)
            await stub.Classify(request, timeout=120)

        await drive(one, min(plan.clients, len(texts)), plan.clients, 120)  # warm-up
        driven = await drive(one, plan.clients, len(texts), plan.budget_s)
        run.stack_docs_per_s = driven.per_s
        run.errors = dict(driven.errors)
        latencies = []
        for i in range(plan.singles):
            began = time.perf_counter()
            await one(i)
            latencies.append((time.perf_counter() - began) * 1000)
        run.single_p50_ms, run.single_p90_ms, _ = percentiles(latencies)


def output(results: Results) -> Output:
    rows = [
        [
            r.runtime,
            r.direct_docs_per_s,
            r.stack_docs_per_s,
            r.ratio,
            r.single_p50_ms,
            r.single_p90_ms,
            format_errors(r.errors),
        ]
        for r in results.runs
    ]
    by = {r.runtime: r for r in results.runs}
    about = [
        f"{results.model}; {results.docs} docs of {results.words_mean:.0f} words on average",
        f"ONNX and torch logits differ by {results.max_logit_difference:.1e} at most",
    ]
    if {"torch", "onnx"} <= set(by) and by["torch"].direct_docs_per_s:
        about.append(
            "onnx/torch: "
            f"{by['onnx'].direct_docs_per_s / by['torch'].direct_docs_per_s:.2f}x direct, "
            f"{by['onnx'].stack_docs_per_s / max(by['torch'].stack_docs_per_s, 1e-9):.2f}x "
            "through the stack"
        )
    return Output(
        about=about,
        tables=[
            Table.of(
                "fine-tuned classifier: direct vs through the stack",
                [
                    "runtime",
                    "direct docs/s",
                    "stack docs/s",
                    "stack/direct",
                    "single p50 ms",
                    "single p90 ms",
                    "errors",
                ],
                rows,
                digits=2,
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    bench = Bench("supervised", __doc__, env=None, plan=Plan(), quick_plan=QUICK)
    bench.option("docs", "documents per measurement")
    bench.option("clients", "concurrent RPCs through the stack")
    bench.parse(argv)
    plan: Plan = bench.plan
    corpus = classification_corpus(plan.docs)
    texts = corpus.texts
    runs = [RuntimeRun(name) for name in RUNTIMES]
    with tempfile.TemporaryDirectory(prefix="bench-supervised-") as tmp:
        note("building the model and its ONNX export")
        weights, onnx = build_model(Path(tmp), texts)
        paths = {"torch": weights, "onnx": onnx}
        difference = largest_difference(weights, onnx)
        for run in runs:
            note(f"direct: {run.runtime}")
            run.direct_docs_per_s = direct(paths[run.runtime], RUNTIMES[run.runtime], texts)
        models = {
            name: spec.model_dump(mode="json", exclude_none=True)
            for name, spec in Settings().models.items()
        }
        for name, params in RUNTIMES.items():
            models[f"bench-{name}"] = {
                "engine": "hf-sequence-classification",
                "path": str(paths[name]),
                "params": params,
            }
        note("starting the stack")
        worker_env = {"classification": {"NLP_MODELS": json.dumps(models)}}
        with LocalStack(kinds=("classification",), worker_env=worker_env) as stack:
            for run in runs:
                note(f"through the stack: {run.runtime}")
                asyncio.run(through_stack(stack, f"bench-{run.runtime}", texts, plan, run))
    stats = corpus.stats()
    results = Results(
        model="BERT 6x384, 12 heads, 5 labels (random weights)",
        docs=len(texts),
        words_mean=float(stats.get("words_mean", 0.0)),
        max_logit_difference=difference,
        runs=runs,
    )
    failed = any(r.errors for r in runs)
    return bench.finish(results, output(results), failed=failed)


if __name__ == "__main__":
    sys.exit(main())
