from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest
from google.protobuf.message import Message

from nlp.v1 import generation_pb2, ner_pb2, tasks_pb2
from shared.client import commands
from shared.client.cli import build_parser
from shared.client.commands import (
    KINDS,
    classify_request,
    generate_request,
    ner_request,
    read_text,
    summarize_request,
)


def test_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--json", "--target", "h:1", "classify", "--labels", "a,b", "t"])
    after = parser.parse_args(["classify", "--json", "--target", "h:1", "--labels", "a,b", "t"])
    for args in (before, after):
        assert args.json is True
        assert args.target == "h:1"


def test_target_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_TARGET", "gw:50051")
    args = build_parser().parse_args(["classify", "--labels", "a", "t"])
    assert args.target == "gw:50051"
    assert args.json is False


def test_labels_and_descriptions() -> None:
    args = build_parser().parse_args(
        ["classify", "--labels", " billing, bug ,", "--describe", "bug=Software crashes", "text"]
    )
    request = classify_request(args)
    assert [(label.name, label.description) for label in request.labels] == [
        ("billing", ""),
        ("bug", "Software crashes"),
    ]
    assert request.text == "text"


# --- text arguments: a file only when one exists ----------------------------------------

# Longer than any file name may be (255 bytes): a path check of it fails with ENAMETOOLONG.
LONG_TEXT = ("The striker scored twice in the final and the fans sang all night. " * 31)[:2048]
NAME_SIZED = "x" * 300  # over the 255-byte name limit, no newline, no slash


def _text_args(text: str | None, file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(text=text, file=file)


@pytest.mark.parametrize("text", [LONG_TEXT, NAME_SIZED], ids=["2kB", "300B"])
def test_an_argument_that_names_no_file_is_the_text(text: str) -> None:
    assert "\n" not in text
    assert read_text(_text_args(text)) == text


def test_an_argument_naming_a_file_reads_it(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("Text from a file ✓", encoding="utf-8")
    assert read_text(_text_args(str(doc))) == "Text from a file ✓"
    assert read_text(_text_args(None, file=str(doc))) == "Text from a file ✓"
    # A name that is no file (a folder, a missing file, a NUL byte) is text.
    for text in (str(tmp_path), str(tmp_path / "missing.txt"), "a\x00b"):
        assert read_text(_text_args(text)) == text


@pytest.mark.parametrize("text", ["-", None])
def test_dash_or_nothing_reads_stdin(text: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert read_text(_text_args(text)) == "from stdin"


def _sent_text(kind: str, request: Message) -> str:
    if kind == "generation":
        assert isinstance(request, generation_pb2.GenerateRequest)
        return request.messages.messages[-1].content
    return str(getattr(request, "text"))  # noqa: B009 (each kind's request has one)


# Each text command's arguments besides the text.
KIND_ARGS = {
    "classification": ["--labels", "sports,politics"],
    "ner": [],
    "summarization": ["--max-sentences", "2"],
    "generation": ["--max-tokens", "4"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_text_command_takes_a_long_argument(kind: str) -> None:
    command = KINDS[kind]
    builders = {
        "classification": classify_request,
        "ner": ner_request,
        "summarization": summarize_request,
        "generation": generate_request,
    }
    args = build_parser().parse_args([command.command, *KIND_ARGS[kind], LONG_TEXT])
    assert _sent_text(kind, builders[kind](args)) == LONG_TEXT
    # `nlp task submit KIND ...` builds its request the same way (_task_command).
    submit = build_parser().parse_args(["task", "submit", kind, *KIND_ARGS[kind], LONG_TEXT])
    assert submit.kind == kind
    assert _sent_text(kind, KINDS[submit.kind].request(submit)) == LONG_TEXT


# --- --json keeps fields that hold zero --------------------------------------------------


def test_json_output_keeps_zero_fields(capsys: pytest.CaptureFixture[str]) -> None:
    response = ner_pb2.NerResponse(
        entities=[ner_pb2.Entity(text="Barack Obama", label="PERSON", start=0, end=12)]
    )
    commands.print_message(response, True, str)
    printed = json.loads(capsys.readouterr().out)
    assert printed["entities"][0]["start"] == 0
    assert printed["task_id"] == ""

    chunk = generation_pb2.GenerateChunk(task_id="t1", delta="Hi", index=0)
    commands.print_generation([chunk], as_json=True)
    line = json.loads(capsys.readouterr().out)
    assert line["index"] == 0 and line["finish_reason"] == "FINISH_REASON_UNSPECIFIED"

    result = tasks_pb2.TaskResult(task_id="t1", ner=response)
    assert '"start": 0' in commands.human_result(result)
