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
from nlp.v1 import classification_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts.errors import Code
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


def _completed_after(began: float, done: Callable[[], bool], timeout: float = 120.0) -> float:
    """Seconds from ``began`` until ``done()`` (errors count as not yet)."""
    while time.monotonic() - began < timeout:
        try:
            if done():
                return time.monotonic() - began
        except Exception:  # a cluster mid-failover answers oddly
            pass
        time.sleep(0.1)
    return float("nan")


def _fail_over(
    name: str,
    kill: Callable[[], None],
    completed: Callable[[], bool],
    restore: Callable[[], None],
    channel: grpc.Channel,
    recovery: dict[str, float],
) -> None:
    """Kill, then time the failover (until ``completed()``: the cluster no longer names
    the dead node) and the first successful Classify, both from the kill."""
    began = time.monotonic()
    kill()
    failover: list[float] = []
    watcher = threading.Thread(
        target=lambda: failover.append(_completed_after(began, completed)), daemon=True
    )
    watcher.start()
    recovery[name] = _first_classify_after(channel, began)
    watcher.join(130)
    recovery[f"{name} failover"] = done = failover[0] if failover else float("nan")
    print(
        f"\n{name} SIGKILLed -> failover complete after {done:.2f} s; first successful "
        f"Classify after {recovery[name]:.2f} s ({recovery[name] - done:+.2f} s after the failover)"
    )
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
                lambda: leader.node_id not in cluster.partition_leaders(topic).values(),
                lambda: _rejoin(leader),
                channel,
                recovery,
            )
            time.sleep(3)
            controller = cluster.node(cluster.active_controller())
            _fail_over(
                "active controller",
                lambda: _kill(controller.pid),
                # A new quorum leader, and no partition led by the dead node any more.
                lambda: (
                    cluster.active_controller() != controller.node_id
                    and controller.node_id not in cluster.partition_leaders(topic).values()
                ),
                lambda: _rejoin(controller),
                channel,
                recovery,
            )
            time.sleep(3)
            primary = redis_ha.primary()
            _fail_over(
                "redis primary",
                lambda: _kill(primary.pid),
                lambda: redis_ha.primary() is not primary,
                lambda: _restart(primary),
                channel,
                recovery,
            )
            time.sleep(3)
        finally:
            load.stop()
        for name, seconds in recovery.items():
            record_property(f"{name.replace(' ', '_')}_s", round(seconds, 3))
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


def _batch_acks(
    tasks: tasks_pb2_grpc.TasksStub, batch_id: str, n: int
) -> tuple[list[Any], grpc.StatusCode]:
    """One SubmitBatch stream of ``n`` items: their acks, and how the stream ended."""
    items = [
        tasks_pb2.BatchItem(item_id=f"doc-{i}", task=submit_classification(f"Document {i}."))
        for i in range(n)
    ]
    request = tasks_pb2.SubmitBatchRequest(batch_id=batch_id, items=items)
    acks: list[Any] = []
    try:
        for reply in tasks.SubmitBatch(iter([request]), timeout=30):
            acks.extend(reply.acks)
    except grpc.RpcError as exc:
        return acks, exc.code()
    return acks, grpc.StatusCode.OK


def test_while_the_replica_lags_batch_items_are_refused_until_it_has_their_counts(
    ha_stack: LocalStack,
) -> None:
    # NLP_REDIS_WAIT_REPLICAS=1 (the Sentinel stack's default): a batch's counts must
    # outlive a failover, so while the replica cannot confirm them nothing is enqueued.
    redis_ha = ha_stack.redis_ha
    assert redis_ha is not None
    replica = next(s for s in redis_ha.servers if s is not redis_ha.primary())
    assert replica.pid is not None
    with grpc.insecure_channel(ha_stack.gateway_target) as channel:
        tasks = tasks_pb2_grpc.TasksStub(channel)
        os.killpg(replica.pid, signal.SIGSTOP)
        try:
            refused, ended = _batch_acks(tasks, "lagging-replica", 5)
        finally:
            os.killpg(replica.pid, signal.SIGCONT)
        # Nor can the batch be sealed: the stream ends UNAVAILABLE (send the id again).
        assert ended == grpc.StatusCode.UNAVAILABLE
        assert [(a.task_id, a.error.code, a.error.retryable) for a in refused] == [
            ("", Code.UNAVAILABLE, True)
        ] * 5
        assert "Redis" in refused[0].error.message and "127.0.0.1" not in refused[0].error.message
        # Nothing of them was counted or enqueued. Resent (as a client does, until the
        # replica has caught up again), they go through.
        refusals, deadline = 1, time.monotonic() + 60
        while True:
            acks = _batch_acks(tasks, "lagging-replica", 5)
            if acks[1] == grpc.StatusCode.OK and all(a.task_id for a in acks[0]):
                break
            # Items refused (counted rejected), or acked but the seal not yet confirmed.
            assert all(a.error.code in (0, Code.UNAVAILABLE) for a in acks[0]), acks
            refusals += any(a.error.code for a in acks[0])
            assert time.monotonic() < deadline, "the replica never confirmed again"
            time.sleep(0.5)
        assert all(a.task_id and not a.error.code for a in acks[0]), acks
        for ack in acks[0]:
            assert wait_terminal(tasks, ack.task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
        status = tasks.GetBatch(tasks_pb2.GetBatchRequest(batch_id="lagging-replica"))
        # Each refused round counted its 5 items rejected, never submitted.
        assert (status.submitted, status.rejected, status.succeeded) == (5, 5 * refusals, 5)
        assert status.complete


def test_with_two_of_three_brokers_down_calls_are_refused_then_served_again(
    ha_stack: LocalStack,
) -> None:
    # min.insync.replicas 2: one broker alone takes no task (and no controller quorum).
    cluster = ha_stack.kafka_cluster
    assert cluster is not None
    down = cluster.brokers[:2]
    with grpc.insecure_channel(ha_stack.gateway_target) as channel:
        tasks = tasks_pb2_grpc.TasksStub(channel)
        for node in down:
            _kill(node.pid)
        began = time.monotonic()
        codes = Counter[str]()
        while time.monotonic() - began < 15:
            try:
                tasks.Submit(submit_classification("Nobody should take this."), timeout=4)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
        # The first calls may still beat the kill; after that, only UNAVAILABLE.
        assert codes["UNAVAILABLE"] >= 3 and set(codes) <= {"UNAVAILABLE", "OK"}, codes
        assert codes["OK"] <= 1, codes
        for node in down:
            _rejoin(node)
        restarted = time.monotonic()
        seconds = _first_classify_after(channel, restarted)
        print(f"\ntwo brokers back -> first successful Classify after {seconds:.2f} s")
        reply = tasks.Submit(submit_classification("Back to normal."), timeout=CALL_TIMEOUT_S)
        assert wait_terminal(tasks, reply.task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
