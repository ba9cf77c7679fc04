"""Models of one's own served through the stack beside each kind's defaults, as an
operator mounts them (``NLP_MODELS`` per worker): a fine-tuned sequence classifier and a
token-classification NER model, tiny random BERTs built here with real config and
tokenizer files, and an abstractive summarizer on the embedded SmolLM2 (vLLM on CPU).
Loading, label mapping, micro-batching, unicode and long texts through Kafka, the
intakes and Celery workers; the tiny models' scores are random, their labels are not."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

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
)
from services.classification.export import export
from services.generation import prepare
from shared.client.cli import main as cli_main
from tests.factories import classify_request
from tests.tiny_models import save_tiny_bert

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("vllm") is None,
    reason="needs transformers and vLLM",
)

INTENTS = ("billing", "bug", "praise", "other")
ENTITY_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG")
WORDS = [
    "i",
    "was",
    "charged",
    "twice",
    "and",
    "the",
    "app",
    "crashed",
    "great",
    "support",
    "thanks",
    "invoice",
    "angela",
    "merkel",
    "met",
    "acme",
    "corp",
    "in",
    "paris",
]
ARTICLE = (
    "The city council met on Monday to debate the new transit plan. Residents filled the "
    "hall, and many spoke against the proposed fare increase. The plan adds three bus "
    "lines and extends the tram to the airport. Officials said the tram extension would "
    "cut travel times to the airport by half. The council will vote on the plan next "
    "month, after a final public hearing."
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    models = tmp_path_factory.mktemp("models")
    intents = save_tiny_bert(models / "intents", "BertForSequenceClassification", INTENTS, WORDS)
    # The same model exported, as the classification image (no torch) would serve it.
    intents_onnx = export(intents, models / "intents-onnx")
    # Every token some entity (O never wins), so that each text has entities to check.
    entities = save_tiny_bert(
        models / "entities",
        "BertForTokenClassification",
        ENTITY_TAGS,
        WORDS,
        label_bias={"O": -10.0},
    )
    per_kind = {
        "classification": {
            "minilm-l6-v2-int8": {"engine": "minilm-zero-shot"},
            "sentiment": {"engine": "vader-sentiment"},
            "intents": {
                "engine": "hf-sequence-classification",
                "path": str(intents),
                "params": {"device": "cpu"},
            },
            "intents-onnx": {"engine": "hf-sequence-classification", "path": str(intents_onnx)},
        },
        "ner": {
            "en-core-web-sm": {"engine": "spacy"},
            "entities": {
                "engine": "hf-token-classification",
                "path": str(entities),
                "params": {"device": "cpu", "chunk_chars": 200},
            },
        },
        "summarization": {
            "minilm-textrank": {"engine": "extractive-minilm"},
            "smollm2-abstractive": {
                "engine": "abstractive-llm",
                "path": str(prepare.ensure()),
                "params": {
                    "backend": "vllm",
                    "max_new_tokens": 96,
                    "cpu_kvcache_space_gib": 1,
                    "load_kwargs": {"max_model_len": 2048},
                },
            },
        },
    }
    with LocalStack(
        data_dir=tmp_path_factory.mktemp("own-models-stack"),
        kinds=tuple(per_kind),
        worker_env={kind: {"NLP_MODELS": json.dumps(m)} for kind, m in per_kind.items()},
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.gateway_target) as channel:
        yield channel


def _listed(channel: grpc.Channel, kind: common_pb2.Kind) -> dict[str, models_pb2.ModelDescriptor]:
    listed = models_pb2_grpc.ModelsStub(channel).List(
        models_pb2.ListModelsRequest(kind=kind), timeout=10
    )
    return {m.name: m for m in listed.models}


def _classify(
    channel: grpc.Channel, text: str, *labels: str, model: str = "intents"
) -> classification_pb2.ClassifyResponse:
    request = classify_request(text, labels)
    request.model = model
    response: classification_pb2.ClassifyResponse = classification_pb2_grpc.ClassificationStub(
        channel
    ).Classify(request, timeout=60)
    return response


def _recognize(channel: grpc.Channel, text: str, *labels: str) -> ner_pb2.NerResponse:
    request = ner_pb2.NerRequest(text=text, labels=labels, model="entities")
    response: ner_pb2.NerResponse = ner_pb2_grpc.NerStub(channel).Recognize(request, timeout=60)
    return response


# --- a fine-tuned classifier --------------------------------------------------------


def test_the_fine_tuned_classifier_is_listed_with_its_labels(channel: grpc.Channel) -> None:
    by_name = _listed(channel, common_pb2.KIND_CLASSIFICATION)
    assert set(by_name) == {"minilm-l6-v2-int8", "sentiment", "intents", "intents-onnx"}
    for name, runtime in (("intents", "transformers=="), ("intents-onnx", "onnxruntime==")):
        listed = by_name[name]
        assert listed.engine == "hf-sequence-classification"
        assert list(listed.labels) == list(INTENTS) and not listed.multi_label
        assert listed.version.startswith(runtime)


def test_the_onnx_export_answers_as_the_torch_model(channel: grpc.Channel) -> None:
    for text in ("I was charged twice and the app crashed.", "great support thanks " * 300):
        torch, onnx = (_classify(channel, text, model=m) for m in ("intents", "intents-onnx"))
        assert [s.label for s in torch.scores] == [s.label for s in onnx.scores]
        assert [s.score for s in onnx.scores] == pytest.approx(
            [s.score for s in torch.scores], abs=1e-4
        )


def test_it_answers_with_its_own_labels_and_filters_to_a_subset(channel: grpc.Channel) -> None:
    full = _classify(channel, "I was charged twice and the app crashed.")
    assert sorted(s.label for s in full.scores) == sorted(INTENTS)
    assert sum(s.score for s in full.scores) == pytest.approx(1.0, abs=1e-4)
    assert full.model.name == "intents" and full.task_id
    two = _classify(channel, "I was charged twice and the app crashed.", "billing", "bug")
    assert {s.label for s in two.scores} == {"billing", "bug"}


def test_concurrent_classifications_are_batched_and_answer_as_alone(
    channel: grpc.Channel,
) -> None:
    texts = [f"{'great support thanks ' * (i % 7 + 1)}invoice {i}" for i in range(48)]
    alone = {t: _classify(channel, t) for t in texts[:6]}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: _classify(channel, t), texts))
    for text, response in zip(texts, together, strict=True):
        assert sorted(s.label for s in response.scores) == sorted(INTENTS)
        if text in alone:
            expected = [(s.label, round(s.score, 3)) for s in alone[text].scores]
            assert [(s.label, round(s.score, 3)) for s in response.scores] == expected


@pytest.mark.parametrize(
    "text",
    [
        "Cafe\u0301 ☕ 🇫🇷 — 東京で会いましょう。 the app crashed",
        "i was charged twice and the app crashed. " * 5000,  # ~200 KB, hundreds of windows
    ],
    ids=["unicode", "200KB"],
)
def test_classifier_unicode_and_long_texts(channel: grpc.Channel, text: str) -> None:
    assert _classify(channel, text).top_label in INTENTS


def test_labels_the_classifier_does_not_have_are_invalid_argument(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _classify(channel, "text", "weather")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'weather' is not a label of model 'intents'" in (info.value.details() or "")


# --- a token-classification NER model ---------------------------------------------


def test_the_ner_model_is_listed(channel: grpc.Channel) -> None:
    by_name = _listed(channel, common_pb2.KIND_NER)
    assert set(by_name) == {"en-core-web-sm", "entities"}
    assert by_name["entities"].engine == "hf-token-classification"
    assert by_name["entities"].version.startswith("transformers==")


@pytest.mark.parametrize(
    "text",
    [
        "Angela Merkel met Acme Corp in Paris.",
        "Cafe\u0301 ☕ 🇫🇷 — «Angela Merkel» met 東京 Acme Corp in Zürich 👍",
        "angela merkel met acme corp in paris and the app crashed. " * 3500,  # ~200 KB
    ],
    ids=["plain", "unicode", "200KB"],
)
def test_ner_labels_map_and_offsets_are_code_points(channel: grpc.Channel, text: str) -> None:
    response = _recognize(channel, text)
    assert response.entities and response.model.name == "entities"
    for e in response.entities:
        assert e.label in {"PER", "ORG"}  # B-/I- tags grouped into the config's entities
        assert text[e.start : e.end] == e.text
        assert 0.0 <= e.score <= 1.0
    if len(text) > 100_000:  # the last words are found: chunks were stitched, not cut
        assert max(e.end for e in response.entities) > len(text) - 100


def test_ner_label_filter_and_unknown_labels(channel: grpc.Channel) -> None:
    text = "Angela Merkel met Acme Corp in Paris."
    assert {e.label for e in _recognize(channel, text, "per").entities} == {"PER"}
    with pytest.raises(grpc.RpcError) as info:
        _recognize(channel, text, "PERSON")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "this model has ORG, PER" in (info.value.details() or "")


def test_concurrent_ner_requests_answer_as_alone(channel: grpc.Channel) -> None:
    texts = [f"Angela Merkel met Acme Corp {i} in Paris." for i in range(32)]
    alone = [(e.text, e.label, e.start) for e in _recognize(channel, texts[3]).entities]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: _recognize(channel, t), texts))
    assert [(e.text, e.label, e.start) for e in together[3].entities] == alone
    for text, response in zip(texts, together, strict=True):
        assert all(text[e.start : e.end] == e.text for e in response.entities)


# --- abstractive summaries on the embedded LLM -------------------------------------


def _summarize(channel: grpc.Channel, text: str, **length: int) -> str:
    request = summarization_pb2.SummarizeRequest(
        text=text,
        mode=summarization_pb2.SUMMARY_MODE_ABSTRACTIVE,
        model="smollm2-abstractive",
        **length,
    )
    response = summarization_pb2_grpc.SummarizationStub(channel).Summarize(request, timeout=120)
    assert response.model.name == "smollm2-abstractive"
    assert not response.sentences  # new text: no sentences of the input to point at
    summary: str = response.summary
    return summary


def test_an_abstractive_summary_is_new_text_about_the_article(channel: grpc.Channel) -> None:
    summary = _summarize(channel, ARTICLE, max_sentences=2)
    assert summary and summary != ARTICLE
    words = {w.strip(".,").lower() for w in summary.split()}
    assert words & {"council", "plan", "tram", "transit", "fare", "bus", "airport"}


def test_concurrent_abstractive_summaries_each_get_their_own(channel: grpc.Channel) -> None:
    topics = ["tram", "library", "harbour", "stadium"]
    texts = [ARTICLE.replace("tram", topic) for topic in topics]
    with ThreadPoolExecutor(4) as pool:
        summaries = list(pool.map(lambda t: _summarize(channel, t, max_sentences=1), texts))
    assert all(summaries)


def test_cli_abstractive_summary(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["summarize", "--json", "--target", stack.gateway_target, "--abstractive"]
    assert cli_main([*argv, "--model", "smollm2-abstractive", ARTICLE]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["summary"] and answer["model"]["name"] == "smollm2-abstractive"


def test_the_extractive_default_is_unchanged_beside_it(channel: grpc.Channel) -> None:
    request = summarization_pb2.SummarizeRequest(text=ARTICLE, max_sentences=2)
    response = summarization_pb2_grpc.SummarizationStub(channel).Summarize(request, timeout=60)
    assert response.model.name == "minilm-textrank" and len(response.sentences) == 2
    with pytest.raises(grpc.RpcError) as info:  # extractive from the LLM: not served
        summarization_pb2_grpc.SummarizationStub(channel).Summarize(
            summarization_pb2.SummarizeRequest(text=ARTICLE, model="smollm2-abstractive"),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
