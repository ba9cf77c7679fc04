"""The example direct producer (examples/kafka_producer.py) against the real stack: tasks
written straight to Kafka are run like gateway tasks, and their results come back on
the results topic and through the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import kafka_producer
from nlp.v1 import tasks_pb2_grpc
from shared.contracts.settings import ServiceSettings
from tests.integration.support import status_name, wait_terminal


def test_example_producer_gets_results_from_the_results_topic(
    settings: ServiceSettings,
    tasks: tasks_pb2_grpc.TasksStub,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    source = tmp_path / "docs.jsonl"
    texts = {
        "match": "The striker scored twice in the cup final.",
        "vote": "Parliament passed the budget after a long debate.",
        "phone": "The new phone ships with a faster chip.",
    }
    source.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    code = kafka_producer.main(
        [
            "--bootstrap",
            settings.kafka_bootstrap,
            "--namespace",
            settings.namespace,
            "--labels",
            "sports,politics,technology",
            "--input",
            str(source),
            "--wait",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert set(by_id) == set(texts)
    expected = {"match": "sports", "vote": "politics", "phone": "technology"}
    for doc_id, line in by_id.items():
        assert line["status"] == "TASK_STATUS_SUCCEEDED"
        assert line["correlation_id"] == doc_id
        assert line["classification"]["top_label"] == expected[doc_id]
        # The same result through the gateway, by task id.
        stored = wait_terminal(tasks, line["task_id"])
        assert status_name(stored.status) == "TASK_STATUS_SUCCEEDED"
        assert stored.classification.top_label == expected[doc_id]
