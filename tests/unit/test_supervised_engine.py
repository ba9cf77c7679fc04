"""The fine-tuned classification engine on tiny random models built here: labels from
the config, single- and multi-label heads, subsets, windows for long texts, and batches
that answer as single requests do."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from services.classification.engine import FACTORIES
from services.classification.export import export, main
from services.classification.supervised import HfSequenceClassifier
from shared.contracts.settings import ModelSpec
from shared.runtime.engines import ModelRegistry, request_problems
from tests.factories import classify_request
from tests.tiny_models import save_tiny_bert

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="no transformers"
)

WORDS = [
    "the",
    "refund",
    "was",
    "late",
    "and",
    "support",
    "never",
    "answered",
    "great",
    "fast",
    "helpful",
    "invoice",
    "app",
]
INTENTS = ("billing", "bug", "praise", "other")


def _engine(path: Path, **params: object) -> HfSequenceClassifier:
    engine = FACTORIES["hf-sequence-classification"](
        "intents", ModelSpec(engine="hf-sequence-classification", path=path, params=params)
    )
    assert isinstance(engine, HfSequenceClassifier)
    return engine


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(
        tmp_path_factory.mktemp("single"), "BertForSequenceClassification", INTENTS, WORDS
    )


@pytest.fixture(scope="module")
def single(folder: Path) -> HfSequenceClassifier:
    return _engine(folder, device="cpu")


@pytest.fixture(scope="module")
def exported(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(folder, tmp_path_factory.mktemp("onnx"))


def test_labels_and_head_come_from_the_config(single: HfSequenceClassifier) -> None:
    assert single.labels == INTENTS and single.multi_label is False
    assert single.info.version.startswith("transformers==")
    (descriptor,) = ModelRegistry(
        "classification", {"intents": single}, {"intents": "hf-sequence-classification"}, "intents"
    ).descriptors()
    assert descriptor["labels"] == list(INTENTS) and descriptor["multi_label"] is False
    assert request_problems(single, classify_request("x", ("weather",)))
    assert request_problems(single, classify_request("x", (), multi_label=True))


def test_scores_sum_to_one_and_a_subset_is_a_softmax_over_it(
    single: HfSequenceClassifier,
) -> None:
    text = "The refund was late and support never answered."
    full, part = single.run_batch(
        [classify_request(text, ()), classify_request(text, ("bug", "praise"))]
    )
    assert sorted(s.label for s in full.scores) == sorted(INTENTS)
    assert sum(s.score for s in full.scores) == pytest.approx(1.0, abs=1e-5)
    assert full.top_label == full.scores[0].label
    assert {s.label for s in part.scores} == {"bug", "praise"}
    f = {s.label: s.score for s in full.scores}
    p = {s.label: s.score for s in part.scores}
    assert p["bug"] / p["praise"] == pytest.approx(f["bug"] / f["praise"], rel=1e-4)


def test_a_batch_answers_as_each_request_alone(single: HfSequenceClassifier) -> None:
    # Lengths differ, so batched windows are padded: padding must not change an answer.
    texts = ["great", "the app was fast and helpful " * 3, "invoice late", "support " * 20]
    together = single.run_batch([classify_request(t, ()) for t in texts])
    for text, batched in zip(texts, together, strict=True):
        (alone,) = single.run_batch([classify_request(text, ())])
        assert [(s.label, round(s.score, 4)) for s in batched.scores] == [
            (s.label, round(s.score, 4)) for s in alone.scores
        ]


def test_a_long_text_is_read_in_overlapping_windows(single: HfSequenceClassifier) -> None:
    # 32-token window: a 300-word text needs many; all of them count, not the first only.
    head = "great fast helpful " * 10
    tail = "refund late invoice never answered " * 50
    ids, owners = single._windows([head + tail, "great"])
    assert owners.count(0) > 5 and owners.count(1) == 1
    assert all(len(row) <= 32 for row in ids)
    both = single.logits([head + tail])[0]
    first_window_only = single.logits([head])[0]
    assert not (both == first_window_only).all()


def test_a_multi_label_head_scores_each_label_independently(tmp_path: Path) -> None:
    save_tiny_bert(
        tmp_path,
        "BertForSequenceClassification",
        ("toxic", "spam", "off-topic"),
        WORDS,
        problem_type="multi_label_classification",
    )
    engine = _engine(tmp_path, device="cpu")
    assert engine.multi_label is True
    assert request_problems(engine, classify_request("x", ()))  # must say multi_label
    (response,) = engine.run_batch([classify_request("great app", (), multi_label=True)])
    scores = {s.label: s.score for s in response.scores}
    assert set(scores) == {"toxic", "spam", "off-topic"}
    assert all(0.0 < v < 1.0 for v in scores.values())
    (one,) = engine.run_batch([classify_request("great app", ("spam",), multi_label=True)])
    assert one.scores[0].score == pytest.approx(scores["spam"], rel=1e-5)  # not renormalised


def test_configuration_errors_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a local 'path'"):
        HfSequenceClassifier("m", ModelSpec(engine="hf-sequence-classification"))
    save_tiny_bert(tmp_path, "BertForSequenceClassification", INTENTS, WORDS)
    with pytest.raises(ValueError, match="stride"):
        _engine(tmp_path, stride=40)
    with pytest.raises(ValueError, match="extra"):
        _engine(tmp_path, windows=3)


def test_windows_are_those_of_transformers_overflowing_tokens(
    single: HfSequenceClassifier, folder: Path
) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = ["great fast helpful " * 30, "Cafe\u0301 ☕ 東京 the app", "invoice"]
    expected = tokenizer(
        texts, truncation=True, max_length=32, stride=8, return_overflowing_tokens=True
    )
    ids, owners = single._windows(texts)
    assert ids == expected["input_ids"]
    assert owners == list(expected["overflow_to_sample_mapping"])


def test_the_onnx_runtime_answers_as_torch_does(
    single: HfSequenceClassifier, exported: Path
) -> None:
    onnx = _engine(exported)  # auto: the folder has model.onnx and no device is set
    assert onnx.runtime == "onnx" and single.runtime == "torch"
    assert onnx.info.version.startswith("onnxruntime==")
    assert onnx.labels == single.labels and onnx.multi_label == single.multi_label
    requests = [
        classify_request("The refund was late and support never answered.", ()),
        classify_request("great fast helpful " * 60, ()),  # many windows
        classify_request("Cafe\u0301 ☕ 東京 the app", ("bug", "praise")),
    ]
    for a, b in zip(single.run_batch(requests), onnx.run_batch(requests), strict=True):
        assert [s.label for s in a.scores] == [s.label for s in b.scores]
        assert [s.score for s in a.scores] == pytest.approx([s.score for s in b.scores], abs=1e-4)


def test_runtime_choice_and_its_errors(folder: Path, exported: Path, tmp_path: Path) -> None:
    both = export(Path(shutil.copytree(folder, tmp_path / "both")))  # weights and graph
    assert _engine(both).runtime == "onnx"
    assert _engine(both, device="cpu").runtime == "torch"  # a device is torch's
    assert _engine(both, runtime="torch").runtime == "torch"
    with pytest.raises(ValueError, match="device is for the torch runtime"):
        _engine(exported, runtime="onnx", device="cpu")
    with pytest.raises(ValueError, match=r"runtime onnx needs model\.onnx"):
        _engine(folder, runtime="onnx")
    assert _engine(exported, onnx_threads=1).runtime == "onnx"


def test_the_export_command_checks_the_graph_against_torch(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(folder), "--out", str(tmp_path)]) == 0
    assert "largest logit difference from torch" in capsys.readouterr().out
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    # A tolerance no float graph meets: the check fails the command.
    assert main([str(folder), "--out", str(tmp_path), "--tolerance", "-1"]) == 1
