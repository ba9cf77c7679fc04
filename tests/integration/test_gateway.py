"""Through the gateway on the real stack: happy paths, validation, task lifecycle."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    models_pb2,
    models_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.client.cli import main as cli_main
from tests.factories import classify_request, submit_classification
from tests.integration.support import status_name, wait_terminal

LABELS = [classification_pb2.Label(name=n) for n in ("sports", "politics", "technology")]


def test_classify_through_the_gateway(
    classifier: classification_pb2_grpc.ClassificationStub,
) -> None:
    response = classifier.Classify(
        classification_pb2.ClassifyRequest(
            text="The striker scored twice in the final.", labels=LABELS
        ),
        timeout=30,
    )
    assert response.top_label == "sports"
    assert response.scores[0].label == "sports"
    assert response.scores[0].score > response.scores[1].score
    assert sum(s.score for s in response.scores) == pytest.approx(1.0, abs=1e-3)
    assert response.model.name == "minilm-l6-v2-int8"
    assert "sha256:" in response.model.version
    assert len(response.task_id) == 32


@pytest.mark.parametrize(
    ("text", "label", "multi"),
    [
        ("Parliament passed the budget after a long debate.", "politics", False),
        ("The new GPU doubles inference throughput for neural networks.", "technology", False),
        ("The goalkeeper saved a penalty in extra time.", "sports", True),
    ],
)
def test_classify_picks_the_right_label(
    classifier: classification_pb2_grpc.ClassificationStub, text: str, label: str, multi: bool
) -> None:
    response = classifier.Classify(
        classification_pb2.ClassifyRequest(text=text, labels=LABELS, multi_label=multi), timeout=30
    )
    assert response.top_label == label


def test_label_descriptions_steer_the_result(
    classifier: classification_pb2_grpc.ClassificationStub,
) -> None:
    labels = [
        classification_pb2.Label(name="A", description="A question about an invoice or a payment."),
        classification_pb2.Label(name="B", description="A report that the software crashes."),
    ]
    response = classifier.Classify(
        classification_pb2.ClassifyRequest(
            text="I was charged twice on my last bill.", labels=labels
        ),
        timeout=30,
    )
    assert response.top_label == "A"


def test_submit_then_get_and_wait(tasks: tasks_pb2_grpc.TasksStub) -> None:
    submitted = tasks.Submit(
        submit_classification("The striker scored twice in the final."), timeout=30
    )
    assert submitted.kind == common_pb2.KIND_CLASSIFICATION
    early = tasks.Get(tasks_pb2.GetTaskRequest(task_id=submitted.task_id), timeout=10)
    assert early.task_id == submitted.task_id  # known at once, whatever its state
    result = wait_terminal(tasks, submitted.task_id)
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"
    assert result.classification.top_label == "sports"
    assert result.model.name == "minilm-l6-v2-int8"
    assert result.worker
    assert result.timings.ran_ms > 0
    again = tasks.Get(tasks_pb2.GetTaskRequest(task_id=submitted.task_id), timeout=10)
    assert again == result


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


@pytest.mark.parametrize(
    ("text", "labels", "why"),
    [
        ("", ["a", "b"], "empty text"),
        ("   \n\t ", ["a", "b"], "whitespace-only text"),
        ("hello", [], "no labels"),
        ("hello", [f"l{i}" for i in range(65)], "too many labels"),
        ("hello", ["a", "a"], "duplicate labels"),
        ("hello", ["a", " "], "blank label"),
        ("x" * (512 * 1024 + 1), ["a", "b"], "oversize text"),
    ],
)
def test_invalid_classify_is_invalid_argument(
    classifier: classification_pb2_grpc.ClassificationStub, text: str, labels: list[str], why: str
) -> None:
    request = classify_request(text, labels)
    assert (
        _code(lambda: classifier.Classify(request, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    ), why


def test_a_long_list_of_problems_still_reaches_the_client(
    classifier: classification_pb2_grpc.ClassificationStub,
) -> None:
    # Many bad labels: every problem is listed, more than a status header holds.
    labels = [classification_pb2.Label(name=f"{i}-" + "é" * 300) for i in range(100)]
    request = classification_pb2.ClassifyRequest(text="x", labels=labels)
    with pytest.raises(grpc.RpcError) as info:
        classifier.Classify(request, timeout=10)
    error: grpc.RpcError = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(error.details())
    assert "label" in details and details.endswith("(message truncated)"), details[:200]


def test_task_ids_are_checked(tasks: tasks_pb2_grpc.TasksStub) -> None:
    unknown = tasks_pb2.GetTaskRequest(task_id="0123456789abcdef0123456789abcdef")
    assert _code(lambda: tasks.Get(unknown, timeout=10)) == grpc.StatusCode.NOT_FOUND
    wait_unknown = tasks_pb2.WaitTaskRequest(task_id="nope", timeout_ms=100)
    assert _code(lambda: tasks.Wait(wait_unknown, timeout=10)) == grpc.StatusCode.NOT_FOUND
    cancel_unknown = tasks_pb2.CancelTaskRequest(task_id="nope")
    assert _code(lambda: tasks.Cancel(cancel_unknown, timeout=10)) == grpc.StatusCode.NOT_FOUND
    malformed = tasks_pb2.GetTaskRequest(task_id="../etc/passwd")
    assert _code(lambda: tasks.Get(malformed, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    empty = tasks_pb2.SubmitRequest()
    assert _code(lambda: tasks.Submit(empty, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_lane = submit_classification("hello")
    bad_lane.lane = 42  # type: ignore[assignment]  # no Lane value
    assert _code(lambda: tasks.Submit(bad_lane, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "nlp.v1.Classification", "nlp.v1.Tasks"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "nlp.v1.Classification",
        "nlp.v1.Ner",
        "nlp.v1.Summarization",
        "nlp.v1.Generation",
        "nlp.v1.Tasks",
        "nlp.v1.Models",
        "grpc.health.v1.Health",
    } <= services


def test_cli_classify_json(stack: object, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    target = stack.gateway_target  # type: ignore[attr-defined]
    argv = ["classify", "--json", "--target", target, "--labels", "sports,politics,technology"]
    assert cli_main([*argv, "The striker scored twice in the final."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top_label"] == "sports"
    assert cli_main(["--target", target, "classify", "--labels", "a,a", "text"]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_models_are_listed_and_chosen_by_name(
    channel: grpc.Channel,
    classifier: classification_pb2_grpc.ClassificationStub,
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    listing = models_pb2_grpc.ModelsStub(channel).List(
        models_pb2.ListModelsRequest(kind=common_pb2.KIND_CLASSIFICATION), timeout=10
    )
    assert {m.name for m in listing.models} == {"minilm-l6-v2-int8", "sentiment"}
    (model,) = [m for m in listing.models if m.default]
    assert (model.name, model.engine, model.default) == (
        "minilm-l6-v2-int8",
        "minilm-zero-shot",
        True,
    )
    request = classification_pb2.ClassifyRequest(text="A goal!", labels=LABELS, model=model.name)
    assert classifier.Classify(request, timeout=30).model.version == model.version
    request.model = "no-such-model"
    with pytest.raises(grpc.RpcError) as info:
        classifier.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "available: minilm-l6-v2-int8" in (info.value.details() or "")
    submitted = tasks.Submit(submit_classification("The striker scored twice."), timeout=30)
    assert wait_terminal(tasks, submitted.task_id).batch_size >= 1
