"""The batch CLI's pure logic: reading inputs, resuming from an output, result lines."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from nlp.v1 import classification_pb2, common_pb2, tasks_pb2
from shared.client import bulk, cli
from shared.client.cli import _task_template, build_parser
from shared.client.commands import UsageError


def test_jsonl_is_read_lazily_and_bad_lines_become_problems(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "text": "first"}),
                "",
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"text": "no id"}),
                json.dumps({"id": 7, "text": "integer id"}),
                json.dumps({"id": "b"}),
                json.dumps({"id": True, "text": "boolean id"}),
                json.dumps({"id": "c", "text": "ünïcode ✓"}),
            ]
        )
        + "\n"
    )
    docs = bulk.read_jsonl(source)
    assert next(docs) == bulk.Doc("a", "first")  # a generator: nothing read ahead
    rest = list(docs)
    assert [d.id for d in rest] == ["line-3", "line-4", "line-5", "7", "b", "line-8", "c"]
    assert [bool(d.problem) for d in rest] == [True, True, True, False, True, True, False]
    assert "not JSON" in rest[0].problem
    assert "'text'" in rest[4].problem
    assert rest[-1].text == "ünïcode ✓"
    assert bulk.count_input(source) == 8


def test_folder_of_text_files(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \xc3")
    (tmp_path / "ignored.md").write_text("not a .txt")
    docs = list(bulk.read_input(tmp_path))
    assert [(d.id, d.text) for d in docs if not d.problem] == [("a", "first"), ("b", "second")]
    assert [d.id for d in docs if d.problem] == ["bad"]
    assert bulk.count_input(tmp_path) == 3


def test_scan_output_cuts_a_partial_last_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    assert bulk.scan_output(out) == set()
    complete = "".join(json.dumps({"id": i, "status": "SUCCEEDED"}) + "\n" for i in ("x", "y"))
    out.write_text(complete + '{"id": "z", "stat')
    assert bulk.scan_output(out) == {"x", "y"}
    assert out.read_text() == complete
    # A line that is not a result (corrupt) ends what counts as done, too.
    out.write_text(complete + "garbage\n" + json.dumps({"id": "w"}) + "\n")
    assert bulk.scan_output(out) == {"x", "y"}
    assert out.read_text() == complete


def test_result_lines() -> None:
    ok = tasks_pb2.TaskResult(
        task_id="t1",
        status=common_pb2.TASK_STATUS_SUCCEEDED,
        correlation_id="doc-1",
        classification=classification_pb2.ClassifyResponse(top_label="sports"),
    )
    line = bulk.result_line(ok)
    assert line["id"] == "doc-1" and line["status"] == "SUCCEEDED"
    assert line["result"]["top_label"] == "sports"
    assert "error" not in line and line["dead_lettered"] is False
    failed = tasks_pb2.TaskResult(
        task_id="t2",
        status=common_pb2.TASK_STATUS_FAILED,
        correlation_id="doc-2",
        error=common_pb2.Error(code=13, message="boom"),
        dead_lettered=True,
    )
    line = bulk.result_line(failed)
    assert line["status"] == "FAILED" and line["error"]["message"] == "boom"
    assert line["dead_lettered"] is True and "result" not in line
    assert bulk.rejected_line("d", 3, "empty")["status"] == "REJECTED"


def _run_args(*extra: str) -> list[str]:
    return ["batch", "run", "--input", "in.jsonl", "--output", "out.jsonl", *extra]


def test_every_document_gets_the_kind_options() -> None:
    args = build_parser().parse_args(
        _run_args("--kind", "classification", "--labels", "a,b", "--multi-label", "--deadline", "5")
    )
    template = _task_template(args)
    assert [label.name for label in template.classification.labels] == ["a", "b"]
    assert template.classification.multi_label and template.deadline_ms == 5000
    assert template.classification.text == ""
    args = build_parser().parse_args(_run_args("--kind", "summarization", "--max-sentences", "2"))
    assert _task_template(args).summarization.max_sentences == 2
    args = build_parser().parse_args(_run_args("--kind", "ner", "--labels", "PERSON"))
    assert list(_task_template(args).ner.labels) == ["PERSON"]


def test_classification_needs_labels() -> None:
    with pytest.raises(UsageError):
        _task_template(build_parser().parse_args(_run_args("--kind", "classification")))


def test_ctrl_c_before_the_run_starts_exits_130_and_keeps_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = tmp_path / "docs.jsonl", tmp_path / "results.jsonl"
    source.write_text(json.dumps({"id": "a", "text": "first"}) + "\n")
    done = json.dumps({"id": "z", "status": "SUCCEEDED"}) + "\n"
    output.write_text(done)

    def interrupted(path: Path) -> int:
        raise KeyboardInterrupt

    # The first pass over a large input is where a Ctrl-C before any submission lands.
    monkeypatch.setattr(bulk, "count_input", interrupted)
    argv = ["--target", "127.0.0.1:1", "batch", "run", "--kind", "ner", "--no-progress"]
    code = cli.main([*argv, "--input", str(source), "--output", str(output)])
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert output.read_text() == done


def test_a_repeated_id_is_a_problem_not_a_second_result(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    lines = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "three"}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    docs = list(bulk.read_input(source))
    assert [(d.id, d.text) for d in docs if not d.problem] == [("a", "one"), ("b", "two")]
    assert [d.id for d in docs if d.problem] == ["a"]
    assert "duplicate id" in docs[2].problem


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the gateway went away"


class _Stream:
    """A response stream that ends in an error after its responses (once ``before`` is
    set, when given)."""

    def __init__(
        self, responses: list[Any], before: threading.Event | None = None, after: Any = None
    ) -> None:
        self.responses, self.before, self.after = responses, before, after

    def __iter__(self) -> Iterator[Any]:
        yield from self.responses
        if self.after is not None:
            self.after.set()
        if self.before is not None:
            self.before.wait(5)
        raise _Unavailable()

    def cancel(self) -> None:
        pass


class _FailingGateway:
    """Acknowledges the first message's items, streams one result, then fails."""

    def __init__(self) -> None:
        self.result_written = threading.Event()

    def SubmitBatch(self, messages: Iterator[tasks_pb2.SubmitBatchRequest]) -> _Stream:  # noqa: N802
        first = next(messages)
        response = tasks_pb2.SubmitBatchResponse(batch_id="b1")
        for i, item in enumerate(first.items):
            response.acks.add(item_id=item.item_id, index=i, task_id=f"{i:032x}")
        return _Stream([response], before=self.result_written)

    def StreamBatchResults(self, request: Any) -> _Stream:  # noqa: N802
        result = tasks_pb2.TaskResult(task_id=f"{0:032x}", status=common_pb2.TASK_STATUS_SUCCEEDED)
        result.correlation_id = "d0"
        item = tasks_pb2.BatchResult(cursor="1-0", result=result)
        return _Stream([item], after=self.result_written)


def test_a_failing_gateway_stops_the_run_with_a_summary(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    with output.open("a") as out:
        stub: Any = _FailingGateway()
        run = bulk.BatchRun(stub, lambda text: tasks_pb2.SubmitRequest(), out, chunk=2)
        summary = run.run(iter([bulk.Doc(f"d{i}", "text") for i in range(4)]))
    assert summary.error == "UNAVAILABLE: the gateway went away"
    assert "stopped: UNAVAILABLE" in summary.text()
    assert summary.batch_id == "b1"
    # What finished before the failure is written (a re-run resumes after it).
    assert bulk.scan_output(output) == {"d0"}
