"""How right the classification kind's sentiment answers are: the default ``sentiment``
model (VADER) against zero-shot MiniLM asked the same three labels.

    python -m bench.accuracy [--data tests/data/sentiment.tsv] [--out PATH]

Both engines run in-process, as the worker builds them from its default settings, over
the hand-labelled set in ``tests/data/sentiment.tsv`` (240 sentences: reviews, support
tickets, news; tests/data/README.md). Zero-shot MiniLM gets the candidate labels
``positive``, ``negative``, ``neutral`` with its default hypothesis template. Prints the
accuracy per domain and overall, and each label's F1 (and their mean, macro-F1); writes
JSON (default ``bench-results/accuracy.json``). Deterministic: one run is the figure.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, Bench, Output, Table, note
from nlp.v1 import classification_pb2
from services.classification.engine import FACTORIES
from services.classification.sentiment import LABELS
from services.classification.settings import DEFAULT_MODEL, SENTIMENT_MODEL, Settings

DATA = ROOT / "tests" / "data" / "sentiment.tsv"
DOMAINS = ("review", "support", "news")


@dataclass(frozen=True)
class Example:
    domain: str
    label: str
    text: str


def read_examples(path: Path) -> list[Example]:
    """The labelled set: a header, then domain, label and text per line, tab-separated."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    examples = [Example(r["domain"], r["label"], r["text"]) for r in rows]
    unknown = {e.label for e in examples} - set(LABELS) | {e.domain for e in examples} - set(
        DOMAINS
    )
    if unknown:
        raise ValueError(f"{path}: unknown labels or domains {sorted(unknown)}")
    return examples


@dataclass
class ModelScore:
    """One model over the set: accuracy per domain and overall, F1 per label."""

    model: str
    engine: str
    examples: int
    accuracy: dict[str, float] = field(default_factory=dict)
    f1: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float:
        return sum(self.f1.values()) / len(self.f1)


def score(model: str, engine: str, examples: list[Example], predicted: list[str]) -> ModelScore:
    result = ModelScore(model, engine, len(examples))
    for domain in (*DOMAINS, "all"):
        pairs = [
            (e.label, p)
            for e, p in zip(examples, predicted, strict=True)
            if domain in ("all", e.domain)
        ]
        if pairs:
            result.accuracy[domain] = sum(t == p for t, p in pairs) / len(pairs)
    pairs = list(zip((e.label for e in examples), predicted, strict=True))
    for label in LABELS:
        tp = sum(t == p == label for t, p in pairs)
        fp = sum(p == label != t for t, p in pairs)
        fn = sum(t == label != p for t, p in pairs)
        result.f1[label] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        counts = Counter(p for t, p in pairs if t == label)
        result.confusion[label] = {p: counts[p] for p in LABELS}
    return result


def predict(model: str, labels: tuple[str, ...], examples: list[Example]) -> tuple[str, list[str]]:
    """The engine's name and its top label for every example."""
    spec = Settings().models[model]
    engine = FACTORIES[spec.engine](model, spec)
    requests = [
        classification_pb2.ClassifyRequest(
            text=e.text, labels=[classification_pb2.Label(name=n) for n in labels]
        )
        for e in examples
    ]
    responses: list[classification_pb2.ClassifyResponse] = []
    for i in range(0, len(requests), 32):
        responses += engine.run_batch(requests[i : i + 32])  # type: ignore[union-attr,arg-type]
    return spec.engine, [r.top_label for r in responses]


@dataclass
class Results:
    data: str
    models: list[ModelScore]


def output(results: Results) -> Output:
    rows = [
        [
            m.model,
            m.engine,
            *(m.accuracy.get(d, "-") for d in (*DOMAINS, "all")),
            *(m.f1[label] for label in LABELS),
            m.macro_f1,
        ]
        for m in results.models
    ]
    confusion = [
        [m.model, truth, *(m.confusion[truth][p] for p in LABELS)]
        for m in results.models
        for truth in LABELS
    ]
    n = results.models[0].examples if results.models else 0
    return Output(
        about=[f"{n} hand-labelled sentences ({results.data}); higher is better"],
        tables=[
            Table.of(
                "sentiment: accuracy by domain, F1 by label",
                [
                    "model",
                    "engine",
                    *(f"acc {d}" for d in DOMAINS),
                    "acc all",
                    *(f"F1 {label}" for label in LABELS),
                    "macro-F1",
                ],
                rows,
                digits=3,
            ),
            Table.of(
                "confusion (rows: the true label; columns: the answer)",
                ["model", "true", *LABELS],
                confusion,
            ),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    bench = Bench("accuracy", __doc__, quick=None, env=None)
    bench.parser.add_argument("--data", type=Path, default=DATA, help="the labelled set")
    args = bench.parse(argv)
    examples = read_examples(args.data)
    models = []
    for model, labels in ((SENTIMENT_MODEL, ()), (DEFAULT_MODEL, LABELS)):
        note(f"{model}: {len(examples)} examples")
        engine, predicted = predict(model, labels, examples)
        models.append(score(model, engine, examples, predicted))
    data = str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data)
    results = Results(data, models)
    return bench.finish(results, output(results))


if __name__ == "__main__":
    sys.exit(main())
