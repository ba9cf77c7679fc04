"""NER and summarization through the gateway on the real stack, and all three analysis
kinds at once under concurrency (micro-batched, no cross-talk)."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from kafka import KafkaProducer

from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    tasks_pb2_grpc,
)
from shared.client.cli import main as cli_main
from tests.factories import classification_envelope
from tests.integration.support import wait_terminal

NAMES = ["Angela Merkel", "Barack Obama", "Emmanuel Macron", "Jacinda Ardern", "Olaf Scholz"]
CITIES = ["Paris", "Berlin", "Tokyo", "Madrid", "Chicago"]


@pytest.fixture(scope="module")
def ner(channel: grpc.Channel) -> ner_pb2_grpc.NerStub:
    return ner_pb2_grpc.NerStub(channel)


@pytest.fixture(scope="module")
def summarizer(channel: grpc.Channel) -> summarization_pb2_grpc.SummarizationStub:
    return summarization_pb2_grpc.SummarizationStub(channel)


def test_cli_ner_example(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    text = "Barack Obama visited Paris in 2015 with Angela Merkel."
    assert cli_main(["ner", "--json", "--target", stack.gateway_target, text]) == 0
    entities = json.loads(capsys.readouterr().out)["entities"]
    found = {(e["text"], e["label"]) for e in entities}
    assert {("Barack Obama", "PERSON"), ("Angela Merkel", "PERSON"), ("2015", "DATE")} <= found
    assert ("Paris", "GPE") in found or ("Paris", "LOC") in found
    for e in entities:
        assert text[e["start"] : e["end"]] == e["text"]


def test_cli_summarize_file(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sentences = [
        "The city council met on Monday to debate the new transit plan.",
        "Residents filled the hall and many spoke against the proposed fare increase.",
        "The plan adds three bus lines and extends the tram to the airport.",
        "Officials said the tram extension would cut travel times by half.",
        "The council will vote on the plan next month after a final public hearing.",
    ]
    path = tmp_path / "article.txt"
    path.write_text(" ".join(sentences), encoding="utf-8")
    argv = ["summarize", "--json", "--target", stack.gateway_target, "--max-sentences", "2"]
    assert cli_main([*argv, str(path)]) == 0
    chosen = [s["text"] for s in json.loads(capsys.readouterr().out)["sentences"]]
    assert len(chosen) == 2
    assert all(c in sentences for c in chosen)
    assert sorted(chosen, key=sentences.index) == chosen  # input order


def test_ner_offsets_round_trip_on_unicode(ner: ner_pb2_grpc.NerStub) -> None:
    text = "Café ☕ 🇫🇷 — «Emmanuel Macron» met Angela Merkel in Zürich on 3 May 2019. 東京 👍"
    response = ner.Recognize(ner_pb2.NerRequest(text=text), timeout=30)
    assert response.entities
    for e in response.entities:
        assert text[e.start : e.end] == e.text
    assert "Angela Merkel" in {e.text for e in response.entities}


def test_ner_label_filter(ner: ner_pb2_grpc.NerStub) -> None:
    request = ner_pb2.NerRequest(
        text="Barack Obama visited Paris in 2015 with Angela Merkel.", labels=["PERSON"]
    )
    labels = {e.label for e in ner.Recognize(request, timeout=30).entities}
    assert labels == {"PERSON"}


def test_a_200_kb_document(
    ner: ner_pb2_grpc.NerStub, summarizer: summarization_pb2_grpc.SummarizationStub
) -> None:
    rng = random.Random(7)
    parts: list[str] = []
    while sum(len(p) for p in parts) < 200_000:
        parts.append(
            f"On day {len(parts)} {rng.choice(NAMES)} travelled to {rng.choice(CITIES)} "
            "to discuss trade, energy and the climate with local officials."
        )
    parts.append("Finally Kamala Harris arrived in Lisbon.")
    text = "\n".join(parts)
    entities = ner.Recognize(ner_pb2.NerRequest(text=text), timeout=120).entities
    for e in entities:
        assert text[e.start : e.end] == e.text
    assert any(e.text == "Kamala Harris" for e in entities)  # from the very end
    assert len(entities) > len(parts)  # chunks were stitched, not truncated
    summary = summarizer.Summarize(
        summarization_pb2.SummarizeRequest(text=text, max_sentences=3), timeout=120
    )
    assert len(summary.sentences) == 3
    for s in summary.sentences:
        assert text[s.start : s.end] == s.text


@pytest.mark.parametrize("text", ["", "   \n\t  ", "x" * (512 * 1024 + 1)])
def test_bad_text_is_invalid_argument(
    ner: ner_pb2_grpc.NerStub, summarizer: summarization_pb2_grpc.SummarizationStub, text: str
) -> None:
    for call in (
        lambda: ner.Recognize(ner_pb2.NerRequest(text=text), timeout=30),
        lambda: summarizer.Summarize(summarization_pb2.SummarizeRequest(text=text), timeout=30),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_abstractive_without_an_llm_is_invalid_argument(
    summarizer: summarization_pb2_grpc.SummarizationStub,
) -> None:
    request = summarization_pb2.SummarizeRequest(
        text="One sentence. Another one.", mode=summarization_pb2.SUMMARY_MODE_ABSTRACTIVE
    )
    with pytest.raises(grpc.RpcError) as info:
        summarizer.Summarize(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_200_concurrent_mixed_requests_each_get_their_own_result(channel: grpc.Channel) -> None:
    classifier = classification_pb2_grpc.ClassificationStub(channel)
    ner = ner_pb2_grpc.NerStub(channel)
    summarizer = summarization_pb2_grpc.SummarizationStub(channel)
    topics = {"sports": "The striker scored a late goal", "politics": "The senate passed the bill"}
    labels = [classification_pb2.Label(name=n) for n in topics]

    def one(i: int) -> None:
        name, city = NAMES[i % len(NAMES)], CITIES[i % len(CITIES)]
        marker = f"Case {i}"
        if i % 3 == 0:
            topic = list(topics)[i % 2]
            text = f"{topics[topic]} in {city} ({marker})."
            response = classifier.Classify(
                classification_pb2.ClassifyRequest(text=text, labels=labels), timeout=120
            )
            assert response.top_label == topic, (i, text)
        elif i % 3 == 1:
            text = f"{marker}: {name} visited {city} last week."
            entities = ner.Recognize(ner_pb2.NerRequest(text=text), timeout=120).entities
            assert name in {e.text for e in entities}, (i, text, entities)
            for e in entities:
                assert text[e.start : e.end] == e.text
        else:
            text = f"{marker} opened the meeting. {name} spoke about {city}. Everyone agreed."
            summary = summarizer.Summarize(
                summarization_pb2.SummarizeRequest(text=text, max_sentences=2), timeout=120
            )
            assert all(s.text in text for s in summary.sentences), (i, text, summary)
            assert len(summary.sentences) == 2

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(one, range(200)))


def test_cli_sentiment_needs_no_labels(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "Terrible. It broke after one day and support never answered."
    argv = ["classify", "--json", "--target", stack.gateway_target, "--model", "sentiment", text]
    assert cli_main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["top_label"] == "negative"
    assert {s["label"] for s in answer["scores"]} == {"positive", "negative", "neutral"}
    assert answer["model"]["name"] == "sentiment"


def test_models_list_the_sentiment_models_own_labels(channel: grpc.Channel) -> None:
    listed = models_pb2_grpc.ModelsStub(channel).List(
        models_pb2.ListModelsRequest(kind=common_pb2.KIND_CLASSIFICATION), timeout=10
    )
    by_name = {m.name: m for m in listed.models}
    assert list(by_name["sentiment"].labels) == ["positive", "negative", "neutral"]
    assert by_name["sentiment"].engine == "vader-sentiment" and not by_name["sentiment"].default
    zero_shot = next(m for m in listed.models if m.default)
    assert list(zero_shot.labels) == [] and zero_shot.engine == "minilm-zero-shot"


@pytest.mark.parametrize(
    ("model", "labels", "multi_label", "expected"),
    [
        ("", (), False, "zero-shot: give at least one candidate label"),
        ("sentiment", ("angry",), False, "'angry' is not a label of model 'sentiment'"),
        ("sentiment", (), True, "is single-label"),
    ],
)
def test_a_classification_its_model_cannot_do_is_invalid_argument(
    channel: grpc.Channel, model: str, labels: tuple[str, ...], multi_label: bool, expected: str
) -> None:
    request = classification_pb2.ClassifyRequest(
        text="Fine.",
        labels=[classification_pb2.Label(name=n) for n in labels],
        multi_label=multi_label,
        model=model,
    )
    with pytest.raises(grpc.RpcError) as info:
        classification_pb2_grpc.ClassificationStub(channel).Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (info.value.details() or "")


def test_a_direct_producers_task_its_model_cannot_do_is_dead_lettered(
    stack: LocalStack, tasks: tasks_pb2_grpc.TasksStub, producer: KafkaProducer
) -> None:
    # Past the gateway's check (straight to Kafka): the worker refuses it with the reason.
    envelope = classification_envelope("Fine.", ("angry",))
    envelope.classification.model = "sentiment"
    topic = stack.settings().names.task_topic("classification", "standard")
    producer.send(topic, envelope.SerializeToString()).get(timeout=30)
    result = wait_terminal(tasks, envelope.task_id)
    assert result.status == common_pb2.TASK_STATUS_FAILED and result.dead_lettered
    assert "'angry' is not a label of model 'sentiment'" in result.error.message
