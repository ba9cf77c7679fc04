"""Helpers for the integration tests (plain functions; fixtures live in conftest, the
requests they send are built by tests/factories.py)."""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
from kafka import KafkaConsumer

from nlp.v1 import common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts.envelope import TERMINAL_STATUSES


def wait_terminal(
    tasks: tasks_pb2_grpc.TasksStub, task_id: str, timeout: float = 60.0
) -> tasks_pb2.TaskResult:
    """Tasks.Wait until the task is terminal (or fail the test).

    A task written straight to Kafka is unknown (NOT_FOUND) until the intake has
    seen it, so NOT_FOUND is retried until the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"task {task_id} not finished in {timeout}s"
        window = min(remaining, 20.0)
        try:
            result = tasks.Wait(
                tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=int(window * 1000)),
                timeout=window + 5,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            time.sleep(0.2)
            continue
        if result.status in TERMINAL_STATUSES:
            return result


@dataclass
class TopicTail:
    """Reads what arrives on a topic after the moment it was created."""

    consumer: KafkaConsumer

    def read(self, count: int, timeout: float = 30.0) -> list[Any]:
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records


def status_name(status: int) -> str:
    return str(common_pb2.TaskStatus.Name(status))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample at a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )
