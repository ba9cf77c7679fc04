"""shared.contracts.protojson: the one protobuf → JSON codec keeps zero, false and empty fields."""

from __future__ import annotations

import json
from pathlib import Path

from nlp.v1 import common_pb2, generation_pb2, ner_pb2, tasks_pb2
from shared.client import bulk
from shared.contracts import protojson


def test_zero_false_and_empty_fields_are_printed() -> None:
    status = tasks_pb2.BatchStatus(batch_id="b1", submitted=3, succeeded=3, complete=True)
    printed = protojson.to_dict(status)
    # 64-bit counts are strings in the proto3 JSON mapping; zero ones are there all the same.
    assert printed["rejected"] == "0" and printed["failed"] == "0"
    assert printed["submitted"] == "3"
    assert printed["sealed"] is False and printed["complete"] is True
    assert "created_at" not in printed  # a message field: absent means unset

    chunk = protojson.to_dict(generation_pb2.GenerateChunk(task_id="t1", delta="", index=0))
    assert chunk == {
        "task_id": "t1",
        "delta": "",
        "index": 0,
        "finish_reason": "FINISH_REASON_UNSPECIFIED",  # enums by name
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }

    entity = protojson.to_dict(ner_pb2.Entity(text="Barack Obama", label="PERSON", end=12))
    assert entity == {"text": "Barack Obama", "label": "PERSON", "start": 0, "end": 12}
    assert "score" not in entity  # `optional`: left out until set
    assert protojson.to_dict(ner_pb2.NerResponse())["entities"] == []


def test_dumps_is_json_of_to_dict() -> None:
    entity = ner_pb2.Entity(text="Zürich", label="GPE", start=0, end=6)
    assert json.loads(protojson.dumps(entity)) == protojson.to_dict(entity)
    assert "Zürich" in protojson.dumps(entity, indent=2)  # not \u escapes


def test_batch_output_lines_keep_zeros_and_still_resume(tmp_path: Path) -> None:
    result = tasks_pb2.TaskResult(
        task_id="t1",
        status=common_pb2.TASK_STATUS_FAILED,
        correlation_id="doc-1",
        ner=ner_pb2.NerResponse(entities=[ner_pb2.Entity(text="Paris", label="GPE", end=5)]),
    )
    line = bulk.result_line(result)
    assert line["result"]["entities"][0]["start"] == 0
    assert line["error"] == {"code": 0, "message": "", "retryable": False}
    # `nlp batch run` reads its own output back to resume: the ids are still found.
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(line, ensure_ascii=False) + "\n")
    assert bulk.scan_output(out) == {"doc-1"}


def test_fields_come_in_the_order_of_the_proto_file() -> None:
    """protobuf lists set fields first and defaults after; people read keys in order."""
    response = ner_pb2.NerResponse()
    response.entities.add(text="Barack Obama", label="PERSON", start=0, end=12)
    result = tasks_pb2.TaskResult(task_id="t")
    result.ner.CopyFrom(response)
    result.timings.ran_ms = 1.5
    data = protojson.to_dict(result)
    assert list(data["ner"]["entities"][0]) == ["text", "label", "start", "end"]
    assert list(data)[:3] == ["task_id", "kind", "status"]
    assert list(data["timings"])[:3] == ["queued_ms", "waited_ms", "ran_ms"]
