"""The replicated stack under failover: three KRaft nodes (topics at RF 3,
``min.insync.replicas`` 2) and Redis as a primary, a replica and three Sentinels.

Tasks flow through it (Tasks.Submit, a steady stream) while, in turn, the node leading
the task partitions, the active controller and the Redis primary are SIGKILLed; each is
started again (it rejoins, the Redis one as a replica) before the next. Every task the
gateway acknowledged ends with its terminal result, none lost; the callers see
UNAVAILABLE and nothing else meanwhile; the time from each kill to the first successful
Classify is printed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from deploy.local.kafka import KafkaBroker
from deploy.local.redis import RedisServer
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2_grpc, common_pb2, tasks_pb2_grpc
from tests.factories import classify_request, submit_classification
from tests.integration.support import wait_terminal

KIND = "classification"
# A call that does not answer within this is a hang (DEADLINE_EXCEEDED tells it apart).
CALL_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def ha_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"NLP_HEARTBEAT_S": "1", "NLP_REDELIVER_AFTER_S": "4", "NLP_SWEEP_INTERVAL_S": "1"}
    with LocalStack(
        data_dir=tmp_path_factory.mktemp("ha-stack"),
        kinds=(KIND,),
        env=env,
        kafka_brokers=3,
        redis_sentinel=True,
        ready_timeout=300,
    ) as stack:
        yield stack


@dataclass
class Load:
    """Submits a task every ``interval_s`` from a thread; what each call answered."""

    tasks: tasks_pb2_grpc.TasksStub
    interval_s: float = 0.05
    acknowledged: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self.tasks.Submit(
                    submit_classification(f"Match report number {n}: the striker scored."),
                    timeout=CALL_TIMEOUT_S,
                )
                self.acknowledged.append(reply.task_id)
            except grpc.RpcError as exc:
                self.refused[exc.code().name] += 1
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def _first_classify_after(channel: grpc.Channel, began: float, timeout: float = 120.0) -> float:
    """Seconds from ``began`` until a Classify succeeds; codes seen before it."""
    stub = classification_pb2_grpc.ClassificationStub(channel)
    while True:
        try:
            stub.Classify(classify_request("The final ended 2:1."), timeout=2.0)
            return time.monotonic() - began
        except grpc.RpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,  # the probe's own 2 s deadline
            ), f"{exc.code().name}: {exc.details()}"
        assert time.monotonic() - began < timeout, "no Classify succeeded after the failover"
        time.sleep(0.05)


def _kill(pid: int | None) -> None:
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)


def _rejoin(node: KafkaBroker) -> None:
    node.stop()  # reaps the killed JVM
    node.start()
    node.wait_ready(120)


def _restart(server: RedisServer) -> None:
    server.wait_stopped()
    server.start()  # as a primary, until the Sentinels make it a replica
    server.wait_ready()


def _fail_over(
    name: str,
    kill: Callable[[], None],
    restore: Callable[[], None],
    channel: grpc.Channel,
    recovery: dict[str, float],
) -> None:
    began = time.monotonic()
    kill()
    recovery[name] = _first_classify_after(channel, began)
    print(f"\n{name} SIGKILLed -> first successful Classify after {recovery[name]:.2f} s")
    restore()


def test_failovers_of_the_partition_leader_the_controller_and_the_redis_primary_lose_nothing(
    ha_stack: LocalStack, record_property: Callable[[str, Any], None]
) -> None:
    stack = ha_stack
    cluster, redis_ha = stack.kafka_cluster, stack.redis_ha
    assert cluster is not None and redis_ha is not None
    topic = stack.settings().names.task_topic(KIND, "standard")  # Tasks.Submit's lane
    with grpc.insecure_channel(stack.gateway_target) as channel:
        tasks = tasks_pb2_grpc.TasksStub(channel)
        assert _first_classify_after(channel, time.monotonic()) >= 0
        load = Load(tasks)
        load.start()
        recovery: dict[str, float] = {}
        try:
            time.sleep(3)
            leaders = Counter(cluster.partition_leaders(topic).values())
            leader = cluster.node(leaders.most_common(1)[0][0])
            _fail_over(
                "partition leader",
                lambda: _kill(leader.pid),
                lambda: _rejoin(leader),
                channel,
                recovery,
            )
            time.sleep(3)
            controller = cluster.node(cluster.active_controller())
            _fail_over(
                "active controller",
                lambda: _kill(controller.pid),
                lambda: _rejoin(controller),
                channel,
                recovery,
            )
            time.sleep(3)
            primary = redis_ha.primary()
            _fail_over(
                "redis primary",
                lambda: _kill(primary.pid),
                lambda: _restart(primary),
                channel,
                recovery,
            )
            time.sleep(3)
        finally:
            load.stop()
        for name, seconds in recovery.items():
            record_property(f"{name.replace(' ', '_')}_recovery_s", round(seconds, 3))
        # Callers were only ever told to retry.
        assert set(load.refused) <= {"UNAVAILABLE"}, load.refused
        assert len(load.acknowledged) > 100
        statuses = Counter(
            common_pb2.TaskStatus.Name(wait_terminal(tasks, task_id, timeout=180).status)
            for task_id in load.acknowledged
        )
        print(
            f"\n{len(load.acknowledged)} acknowledged: {dict(statuses)}; refused {dict(load.refused)}"
        )
        assert statuses == {"TASK_STATUS_SUCCEEDED": len(load.acknowledged)}
