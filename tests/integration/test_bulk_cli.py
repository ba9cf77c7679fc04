"""`nlp batch run` against the real stack: interrupted halfway (Ctrl-C or kill -9) and
run again, the output holds each input id exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deploy.local.stack import ROOT, LocalStack
from tests.integration.support import scrape, value

DOCS = 600


def _write_docs(path: Path) -> list[str]:
    ids = [f"doc-{i:04d}" for i in range(DOCS)]
    with path.open("w") as out:
        for i, doc_id in enumerate(ids):
            topic = ("the match", "the election", "the new phone")[i % 3]
            out.write(json.dumps({"id": doc_id, "text": f"A note {i} about {topic}."}) + "\n")
    return ids


def _cli(stack: LocalStack, *args: str) -> list[str]:
    return [sys.executable, "-m", "shared.client.cli", "--target", stack.gateway_target, *args]


def _run_command(stack: LocalStack, source: Path, output: Path, *more: str) -> list[str]:
    return _cli(
        stack,
        "--json",
        "batch",
        "run",
        "--kind",
        "classification",
        "--labels",
        "sports,politics,technology",
        "--input",
        str(source),
        "--output",
        str(output),
        "--window",
        "64",
        "--chunk",
        "16",
        "--no-progress",
        *more,
    )


def _lines(output: Path) -> int:
    return output.read_bytes().count(b"\n") if output.exists() else 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_run_resumes_with_each_id_once(
    stack: LocalStack, tmp_path: Path, stop: signal.Signals
) -> None:
    source, output = tmp_path / "docs.jsonl", tmp_path / "results.jsonl"
    ids = _write_docs(source)
    # Ctrl-C as at a terminal, however this suite was started: a shell's background job
    # inherits SIGINT ignored (so would the run), and Python then never raises
    # KeyboardInterrupt. A handler here is reset to the default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        first = subprocess.Popen(
            _run_command(stack, source, output),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 180
    while _lines(output) < 100:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.05)
    first.send_signal(stop)
    stdout, stderr = first.communicate(timeout=60)
    done_before = _lines(output)
    assert done_before < DOCS, "the run finished before it was interrupted: nothing tested"
    if stop == signal.SIGINT:
        assert first.returncode == 130, stderr.decode()
        assert json.loads(stdout)["interrupted"] is True

    second = subprocess.run(
        _run_command(stack, source, output), check=False, cwd=ROOT, capture_output=True, timeout=300
    )
    assert second.returncode == 0, second.stderr.decode()
    summary = json.loads(second.stdout)
    assert summary["skipped"] >= done_before - 1  # a killed run may leave half a line
    assert summary["succeeded"] + summary["skipped"] == DOCS

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ids  # each input id exactly once
    assert all(r["status"] == "SUCCEEDED" and r["result"]["top_label"] for r in records)

    status = subprocess.run(
        _cli(stack, "--json", "batch", "status", summary["batch_id"]),
        check=False,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr.decode()
    counts = json.loads(status.stdout)
    assert counts["complete"] is True
    assert int(counts["succeeded"]) == summary["succeeded"]


def test_bad_input_lines_are_reported_not_fatal(stack: LocalStack, tmp_path: Path) -> None:
    source, output = tmp_path / "docs.jsonl", tmp_path / "results.jsonl"
    source.write_text(
        json.dumps({"id": "good", "text": "The striker scored twice."})
        + "\nnot json\n"
        + json.dumps({"id": "blank", "text": "  "})
        + "\n"
    )
    run = subprocess.run(
        _run_command(stack, source, output), check=False, cwd=ROOT, capture_output=True, timeout=120
    )
    assert run.returncode == 1  # something did not succeed
    by_id = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert by_id["good"]["status"] == "SUCCEEDED"
    assert by_id["line-2"]["status"] == "REJECTED"
    assert by_id["blank"]["status"] == "REJECTED" and by_id["blank"]["error"]["code"] == 3
    assert json.loads(run.stdout)["rejected"] == 2


def test_a_named_batch_killed_and_run_again_submits_each_document_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    source, output = tmp_path / "docs.jsonl", tmp_path / "results.jsonl"
    ids = _write_docs(source)
    named = ("--batch-id", f"cli-{uuid.uuid4().hex[:12]}")
    before = _published(stack)
    first = subprocess.Popen(
        _run_command(stack, source, output, *named),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while _lines(output) < 100:
        assert first.poll() is None
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    done_before = _lines(output)
    assert done_before < DOCS, "the run finished before it was killed: nothing tested"
    second = subprocess.run(
        _run_command(stack, source, output, *named),
        check=False,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr.decode()
    records = [json.loads(line) for line in output.read_text().splitlines() if line.endswith("}")]
    assert sorted({r["id"] for r in records}) == ids
    # The documents in flight when the first run died kept their tasks: none went twice.
    assert _published(stack) - before == DOCS
    assert len({r["task_id"] for r in records}) == DOCS


def _published(stack: LocalStack) -> float:
    samples = scrape(stack.metrics_urls["gateway"])
    return value(samples, "nlp_tasks_submitted_total", kind="classification")
