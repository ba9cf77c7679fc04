"""The ``nlp`` command line against the real stack, run as users run it (a subprocess).

Every command that takes text accepts a long text argument (longer than a file name may
be), and ``--json`` prints fields that hold zero (an entity at offset 0, a stream's first
chunk, a batch's empty counts) instead of leaving them out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest

from deploy.local.stack import ROOT, LocalStack
from shared.contracts.settings import Limits

SENTENCES = (
    "The striker scored twice in the final and the fans sang until midnight.",
    "The coach praised the defence, which had not conceded a goal in five matches.",
    "Tickets for the next home game sold out within an hour of going on sale.",
    "The club's new stadium will open in the spring with room for forty thousand people.",
)


def _long_text(nbytes: int = 2048) -> str:
    """Whole sentences on one line, at least ``nbytes`` UTF-8 bytes."""
    words: list[str] = []
    for sentence in cycle(SENTENCES):
        words.append(sentence)
        if len(" ".join(words).encode()) >= nbytes:
            return " ".join(words)
    raise AssertionError("unreachable")


LONG_TEXT = _long_text()
# Each text command's own arguments; generation is kept to a few tokens.
KIND_ARGS = {
    "classification": ["--labels", "sports,politics,technology"],
    "ner": [],
    "summarization": ["--max-sentences", "2"],
    "generation": ["--max-tokens", "4", "--temperature", "0"],
}
COMMANDS = {
    "classification": "classify",
    "ner": "ner",
    "summarization": "summarize",
    "generation": "generate",
}


def _nlp(stack: LocalStack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``nlp --target <the stack's gateway> ARGS`` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "--target", stack.gateway_target, *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded (status 0, no error)."""
    assert run.returncode == 0, run.stderr
    assert "error" not in run.stderr.lower(), run.stderr
    return run.stdout


def test_the_long_text_is_over_a_file_names_length() -> None:
    size = len(LONG_TEXT.encode())
    assert 2048 <= size < Limits().max_text_bytes
    assert "\n" not in LONG_TEXT and size > 255  # would raise ENAMETOOLONG as a path


@pytest.mark.parametrize("kind", sorted(KIND_ARGS))
def test_every_text_command_takes_a_long_argument(stack: LocalStack, kind: str) -> None:
    out = _ok(_nlp(stack, COMMANDS[kind], *KIND_ARGS[kind], LONG_TEXT))
    assert out.strip(), "no output"


@pytest.mark.parametrize("kind", sorted(KIND_ARGS))
def test_task_submit_takes_a_long_argument(stack: LocalStack, kind: str) -> None:
    task_id = _ok(_nlp(stack, "task", "submit", kind, *KIND_ARGS[kind], LONG_TEXT)).strip()
    assert task_id and "\n" not in task_id
    result = json.loads(_ok(_nlp(stack, "--json", "task", "wait", task_id, "--wait", "180")))
    assert result["status"] == "TASK_STATUS_SUCCEEDED", result
    assert kind in result, result  # the output, filled from the long text


def test_task_submit_with_an_idempotency_key_names_one_task(stack: LocalStack) -> None:
    submit = ("task", "submit", "ner", "--idempotency-key", f"cli-{uuid.uuid4().hex}")
    first = _ok(_nlp(stack, *submit, "Angela Merkel visited Paris.")).strip()
    assert _ok(_nlp(stack, *submit, "Angela Merkel visited Paris.")).strip() == first
    other = _nlp(stack, *submit, "Barack Obama visited Rome.")
    assert other.returncode == 1 and "ALREADY_EXISTS" in other.stderr, other.stderr


def test_json_keeps_an_entity_at_offset_zero(stack: LocalStack) -> None:
    response = json.loads(_ok(_nlp(stack, "--json", "ner", "Barack Obama visited Paris.")))
    first = response["entities"][0]
    assert first["text"] == "Barack Obama"
    assert first["start"] == 0 and first["end"] == 12


def test_json_keeps_the_first_chunks_index(stack: LocalStack) -> None:
    # `nlp generate --json` prints the whole response; `task stream` prints every chunk.
    submit = ("task", "submit", "generation", "--max-tokens", "4", "--temperature", "0")
    task_id = _ok(_nlp(stack, *submit, "Write one word about the sea.")).strip()
    lines = _ok(_nlp(stack, "--json", "task", "stream", task_id)).splitlines()
    chunks: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert chunks, "no chunks"
    assert chunks[0]["index"] == 0
    assert all("index" in chunk and "delta" in chunk for chunk in chunks)
    assert chunks[-1]["finish_reason"] != "FINISH_REASON_UNSPECIFIED"


def test_json_keeps_zero_batch_counts(stack: LocalStack, tmp_path: Path) -> None:
    source, output = tmp_path / "docs.jsonl", tmp_path / "results.jsonl"
    docs = [("paris", "Barack Obama visited Paris."), ("long", LONG_TEXT)]
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    run = ("batch", "run", "--kind", "ner", "--no-progress")
    summary = json.loads(
        _ok(_nlp(stack, "--json", *run, "--input", str(source), "--output", str(output)))
    )
    assert summary["succeeded"] == 2 and summary["rejected"] == 0 and summary["failed"] == 0

    status = json.loads(_ok(_nlp(stack, "--json", "batch", "status", summary["batch_id"])))
    # int64 counts are JSON strings (the proto3 mapping); the zero ones are printed too.
    for count in ("rejected", "failed", "pending", "running", "cancelled", "dead_lettered"):
        assert int(status[count]) == 0, (count, status)
    assert int(status["succeeded"]) == 2 and status["complete"] is True

    # The output lines and `batch results` keep zeros in the results as well.
    lines = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert lines["paris"]["result"]["entities"][0]["start"] == 0
    results = _nlp(stack, "batch", "results", summary["batch_id"], "--no-follow")
    streamed = {r["id"]: r for r in map(json.loads, _ok(results).splitlines())}
    assert streamed["paris"]["result"]["entities"][0]["start"] == 0
    assert streamed.keys() == lines.keys()
