"""Kafka or Redis away for a minute, on a real stack of its own (classification only,
and the HTTP front door).

While a dependency is unreachable every RPC that needs it answers UNAVAILABLE at once,
naming the dependency and nothing internal; health says NOT_SERVING; no process exits
and the outage is logged once. Once it is back the stack serves again with no process
restarted; the time from its return to the first successful Classify is reported.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.kafka import free_port
from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from tests.factories import classify_request, submit_classification
from tests.integration.support import wait_terminal

# At least a minute, as the platform promises; the checks below run meanwhile (shorter
# while iterating: NLP_TEST_OUTAGE_S=10).
OUTAGE_S = float(os.environ.get("NLP_TEST_OUTAGE_S", "60"))
# A call that hangs instead of answering would end DEADLINE_EXCEEDED after this: the
# status, not a clock, tells a prompt answer from a hang.
CALL_TIMEOUT_S = 5.0
# No address, port or exception class reaches a caller.
_INTERNAL = re.compile(r"127\.0\.0\.1|:\d{2,5}\b|Error|Exception|redis\.|confluent|errno", re.I)
# What the Classify calls send (labels: sports, politics).
CLASSIFY_TEXT = "The striker scored twice in the final."


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"NLP_HEARTBEAT_S": "1", "NLP_REDELIVER_AFTER_S": "4", "NLP_SWEEP_INTERVAL_S": "1"}
    with LocalStack(
        data_dir=tmp_path_factory.mktemp("outage-stack"), kinds=("classification",), env=env
    ) as s:
        # The HTTP front door rides out the same outages.
        s.http_port = free_port()
        s._add("http-gateway", "services.http_gateway", "http-gateway")
        door = s.services["http-gateway"]
        door.env.update(
            {
                "NLP_HTTP_PORT": str(s.http_port),
                "NLP_FILES_DIR": str(tmp_path_factory.mktemp("outage-files")),
            }
        )
        door.start()
        door.wait_ready(120)
        yield s


@pytest.fixture(scope="module")
def channel(outage_stack: LocalStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(outage_stack.gateway_target) as ch:
        yield ch


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details() or "")
    return grpc.StatusCode.OK, ""


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.1)


def _pids(stack: LocalStack) -> dict[str, int]:
    pids = {}
    for name, service in stack.services.items():
        assert service.proc is not None and service.proc.poll() is None, (
            f"{name} exited:\n{service.log_tail()}"
        )
        pids[name] = service.proc.pid
    return pids


def _logged(stack: LocalStack, name: str, pattern: str) -> int:
    text = Path(stack.services[name].log_file).read_text(errors="replace")
    return len(re.findall(pattern, text))


def _first_classify_after(channel: grpc.Channel, timeout: float = 120.0) -> float:
    """Seconds until a Classify succeeds (short deadlines, tried back to back)."""
    stub = classification_pb2_grpc.ClassificationStub(channel)
    began = time.monotonic()
    while True:
        code, _ = _code(lambda: stub.Classify(classify_request(CLASSIFY_TEXT), timeout=2.0))
        if code == grpc.StatusCode.OK:
            return time.monotonic() - began
        assert time.monotonic() - began < timeout, f"no Classify succeeded; last {code}"
        time.sleep(0.05)


def _expect_unavailable(calls: dict[str, Callable[[], Any]], dependency: str) -> None:
    for rpc, call in calls.items():
        code, details = _code(call)
        assert code == grpc.StatusCode.UNAVAILABLE, f"{rpc}: {code.name} {details!r}"
        assert dependency in details, f"{rpc}: {details!r}"
        assert not _INTERNAL.search(details), f"{rpc} leaks internals: {details!r}"


def _http_health(stack: LocalStack) -> tuple[int, Any]:
    answer = httpx.get(f"http://127.0.0.1:{stack.http_port}/health", timeout=CALL_TIMEOUT_S)
    return answer.status_code, answer.json()


def _expect_http_unavailable(stack: LocalStack, dependency: str) -> None:
    """The HTTP front door: 503 in OpenAI's error shape, promptly (a hang would time the
    call out), for what needs the dependency; what needs only Redis goes on serving
    through a Kafka outage."""
    assert stack.http_url is not None
    base = stack.http_url
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    needing: dict[str, Callable[[], httpx.Response]] = {
        "chat": lambda: httpx.post(f"{base}/chat/completions", json=chat, timeout=CALL_TIMEOUT_S),
        "stream": lambda: httpx.post(
            f"{base}/chat/completions", json={**chat, "stream": True}, timeout=CALL_TIMEOUT_S
        ),
    }
    redis_only: dict[str, Callable[[], httpx.Response]] = {
        "models": lambda: httpx.get(f"{base}/models", timeout=CALL_TIMEOUT_S),
        "files": lambda: httpx.get(f"{base}/files", timeout=CALL_TIMEOUT_S),
        "batches": lambda: httpx.get(f"{base}/batches", timeout=CALL_TIMEOUT_S),
    }
    for route, call in (needing | redis_only if dependency == "Redis" else needing).items():
        answer = call()
        assert answer.status_code == 503, f"{route}: {answer.status_code} {answer.text!r}"
        error = answer.json()["error"]
        assert error["code"] == "service_unavailable", route
        assert dependency in error["message"], f"{route}: {error!r}"
        assert not _INTERNAL.search(error["message"]), f"{route} leaks internals: {error!r}"
    if dependency == "Kafka":
        for route, call in redis_only.items():
            assert call().status_code == 200, route
    assert _http_health(stack) == (503, {"status": "unavailable", "missing": dependency})


def _calls(channel: grpc.Channel, task_id: str, needing: str) -> dict[str, Callable[[], Any]]:
    tasks = tasks_pb2_grpc.TasksStub(channel)
    classify = classification_pb2_grpc.ClassificationStub(channel)
    generation = generation_pb2_grpc.GenerationStub(channel)
    stream_request = generation_pb2.GenerateRequest(prompt="Once upon a time")
    stream_request.sampling.max_tokens = 4
    publishing = {
        "Submit": lambda: tasks.Submit(
            submit_classification("The senate voted."), timeout=CALL_TIMEOUT_S
        ),
        "Classify": lambda: classify.Classify(
            classify_request(CLASSIFY_TEXT), timeout=CALL_TIMEOUT_S
        ),
        "GenerateStream": lambda: generation.GenerateStream(stream_request, timeout=CALL_TIMEOUT_S),
    }
    reading = {
        "Get": lambda: tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT_S),
        "Wait": lambda: tasks.Wait(
            tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=1000), timeout=CALL_TIMEOUT_S
        ),
    }
    return publishing | reading if needing == "Redis" else publishing


def _ride_out(
    stack: LocalStack,
    channel: grpc.Channel,
    task_id: str,
    dependency: str,
    pids: dict[str, int],
) -> None:
    """Through the outage: refused promptly, NOT_SERVING, every process alive."""
    _expect_unavailable(_calls(channel, task_id, dependency), dependency)
    _expect_http_unavailable(stack, dependency)
    _await(
        lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING,
        5,
        "NOT_SERVING",
    )
    ends = time.monotonic() + OUTAGE_S
    while time.monotonic() < ends:
        time.sleep(min(10.0, max(0.0, ends - time.monotonic())))
        assert _pids(stack) == pids, "a process was restarted or exited during the outage"
        _expect_unavailable(_calls(channel, task_id, dependency), dependency)
        _expect_http_unavailable(stack, dependency)


def _kill(stack: LocalStack, dependency: str) -> None:
    """SIGKILL Redis or the Kafka broker, and reap it."""
    assert stack.redis is not None and stack.kafka is not None
    if dependency == "Redis":
        pid = stack.redis.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        stack.redis.wait_stopped()
    else:
        pid = stack.kafka.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        stack.kafka.stop()  # reaps the JVM


def _bring_back(stack: LocalStack, dependency: str) -> None:
    """Start it again on its port and data (Redis's AOF, the broker's log)."""
    assert stack.redis is not None and stack.kafka is not None
    if dependency == "Redis":
        stack.redis.start()
        stack.redis.wait_ready()
    else:
        stack.kafka.start()
        stack.kafka.wait_ready()


@pytest.mark.parametrize("dependency", ["Redis", "Kafka"])
def test_an_outage_is_unavailable_and_the_stack_resumes_by_itself(
    outage_stack: LocalStack,
    channel: grpc.Channel,
    dependency: str,
    record_property: Callable[[str, Any], None],
) -> None:
    stack = outage_stack
    tasks = tasks_pb2_grpc.TasksStub(channel)
    task_id = tasks.Submit(submit_classification("The final was won."), timeout=10).task_id
    wait_terminal(tasks, task_id)
    assert _first_classify_after(channel) >= 0
    pids = _pids(stack)
    warning = f"{dependency} unreachable"
    warned = {name: _logged(stack, name, warning) for name in stack.services}

    _kill(stack, dependency)
    _ride_out(stack, channel, task_id, dependency, pids)
    # Once per process, however many requests it refused.
    for name in stack.services:
        assert _logged(stack, name, warning) - warned[name] <= 1, name
    assert _logged(stack, "gateway", warning) - warned["gateway"] == 1
    if dependency == "Kafka":
        # What needs only Redis goes on serving.
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT_S)
        assert result.task_id == task_id

    _bring_back(stack, dependency)
    recovered = _first_classify_after(channel)
    print(f"\n{dependency} back -> first successful Classify: {recovered:.2f} s")
    record_property(f"{dependency.lower()}_recovery_s", round(recovered, 3))
    _await(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, 10, "SERVING")
    _await(lambda: _http_health(stack)[0] == 200, 10, "the HTTP front door's /health 200")
    assert httpx.get(f"{stack.http_url}/batches", timeout=CALL_TIMEOUT_S).status_code == 200
    assert _pids(stack) == pids, "recovery needed a process restart"
    # Work submitted after the outage runs to its end, and the earlier task is still there.
    again = tasks.Submit(submit_classification("The match ended 2:0."), timeout=10).task_id
    assert wait_terminal(tasks, again).status == common_pb2.TASK_STATUS_SUCCEEDED
    assert tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=5).task_id == task_id
