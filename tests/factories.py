"""Builders of the requests and envelopes the tests send, for unit and integration tests
alike (plain functions: each returns a new message)."""

from __future__ import annotations

from collections.abc import Iterable

from nlp.v1 import classification_pb2, generation_pb2, ner_pb2, tasks_pb2
from shared.contracts.envelope import make_envelope

# The candidate labels of a classification unless a test names its own.
LABELS = ("sports", "politics")


def classify_request(
    text: str, labels: Iterable[str] = LABELS, *, multi_label: bool = False
) -> classification_pb2.ClassifyRequest:
    """A ClassifyRequest of ``text`` with one label per name, in order."""
    return classification_pb2.ClassifyRequest(
        text=text,
        labels=[classification_pb2.Label(name=name) for name in labels],
        multi_label=multi_label,
    )


def ner_request(text: str, *labels: str) -> ner_pb2.NerRequest:
    """A NerRequest of ``text``, keeping only ``labels`` (all entities when none)."""
    return ner_pb2.NerRequest(text=text, labels=labels)


def greedy_request(prompt: str, max_tokens: int = 24) -> generation_pb2.GenerateRequest:
    """A GenerateRequest of ``prompt`` with greedy sampling (temperature 0, so the result
    may be compared) of at most ``max_tokens`` tokens."""
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def submit_classification(
    text: str, labels: Iterable[str] = ("sports", "politics", "technology")
) -> tasks_pb2.SubmitRequest:
    """A Tasks.Submit request classifying ``text`` (default lane and deadline)."""
    return tasks_pb2.SubmitRequest(classification=classify_request(text, labels))


def classification_envelope(
    text: str, labels: Iterable[str] = LABELS, *, deadline_s: float = 60.0
) -> tasks_pb2.TaskEnvelope:
    """The envelope of a new classification task of ``text`` (a fresh task id), as the
    gateway would write it, that must start within ``deadline_s`` seconds."""
    return make_envelope("classification", classify_request(text, labels), deadline_s=deadline_s)
