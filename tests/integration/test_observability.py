"""What a person looks at, on the real session stack: ``nlp top`` over every process's
``/metrics`` while traffic flows, and those pages as ``promtool`` checks them."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest

from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2_grpc
from shared.client.cli import main as cli_main
from tests.factories import classify_request


def test_nlp_top_once_json_reports_the_traffic_of_its_window(
    stack: LocalStack, channel: grpc.Channel, capsys: pytest.CaptureFixture[str]
) -> None:
    classifier = classification_pb2_grpc.ClassificationStub(channel)
    stop = threading.Event()
    sent: list[float] = []

    def traffic() -> None:
        while not stop.is_set():
            classifier.Classify(classify_request("The striker scored twice.", ("sports",)))
            sent.append(time.monotonic())

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # traffic flowing before the first scrape
        urls = [f"--metrics={name}={url}" for name, url in stack.metrics_urls.items()]
        assert cli_main(["top", "--once", "--json", "--interval", "3", *urls]) == 0
    finally:
        stop.set()
        thread.join(timeout=30)
    snapshot = json.loads(capsys.readouterr().out)

    assert set(snapshot["processes"]) == set(stack.services)
    assert set(snapshot["processes"].values()) == {"up"}
    classification = snapshot["kinds"]["classification"]
    seconds = snapshot["interval_s"]
    done = sum(lane["succeeded_per_s"] for lane in classification["lanes"].values()) * seconds
    # No more than what this test sent (the window is part of its run), and some of it.
    assert 0 < done <= len(sent) + 1
    assert classification["submitted_per_s"] > 0
    interactive = classification["lanes"]["interactive"]  # sync RPCs' lane
    assert interactive["succeeded_per_s"] > 0
    for stage in ("queued", "inference", "ran"):
        assert interactive["stages"][stage]["p50_ms"] > 0
    assert set(snapshot["kinds"]) >= set(stack.kinds)


def test_nlp_top_names_a_process_that_does_not_answer(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = stack.metrics_urls["gateway"]
    argv = ["top", "--once", "--json", "--interval", "0.2"]
    assert (
        cli_main([*argv, f"--metrics=gateway={gateway}", "--metrics=gone=http://127.0.0.1:9/"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["processes"] == {"gateway": "up", "gone": "down"}


def test_every_process_serves_metrics_promtool_accepts(
    stack: LocalStack, channel: grpc.Channel
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make setup` installs Debian's prometheus package"
    classifier = classification_pb2_grpc.ClassificationStub(channel)
    classifier.Classify(classify_request("The striker scored twice.", ("sports",)), timeout=30)
    for name, url in stack.metrics_urls.items():
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read()
        done = subprocess.run(
            [promtool, "check", "metrics"], input=page, capture_output=True, check=False
        )
        assert done.returncode == 0, f"{name}: {(done.stdout + done.stderr).decode()}"
