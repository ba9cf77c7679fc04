"""What a Redis failover loses, with and without waiting for the replica (``WAIT``).

    python -m bench.failover [--quick] [--rounds 2] [--stall-s 2] [--out PATH]

Redis replicates asynchronously: what a primary acknowledged just before it died may
never have reached the replica the Sentinels promote. Per round and mode, one
``LocalStack`` with Redis as a primary, a replica and three Sentinels (one Kafka broker:
Kafka is not what fails here) and the classification and generation workers, and:

1. load: a classification task through Tasks.Submit every ``interval_s``; a gateway
   batch of ``batch_items`` classifications streamed in chunks (a client that resumes
   with the same batch id and item ids when its stream is cut); ``streams`` generation
   tasks, submitted as the fault begins;
2. the fault: the replica is cut off from the primary for ``stall_s`` (SIGSTOP, and the
   primary drops its replication link), as a network partition would, while the
   primary goes on acknowledging writes it cannot pass on; then the primary is
   SIGKILLed and the replica resumed; the Sentinels promote it; the old primary is
   started again (it rejoins as a replica);
3. the load goes on for a few seconds; then every acknowledged task is waited for.

Counted: acknowledged tasks that never end (lost) and those that ran again; whether the
batch's counts still add up to its acknowledged items; token streams whose replay
(StreamTask, from the first token) no longer gives the result's text; the intakes'
rewinds (a failover seen: Kafka read again from the committed offsets).

Modes: ``no-wait`` (``NLP_REDIS_WAIT_REPLICAS=0``: the intake commits Kafka offsets as
soon as it has handed tasks off) and ``wait`` (``=1``, what a Sentinel stack runs by
default: results, hand-offs and batch counts wait for the replica; offsets are
committed once it confirmed). Prints a table and writes JSON (default
``bench-results/failover.json``); exit status 1 when the ``wait`` mode lost anything.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import redis

from bench.common import Bench, Output, Table, format_errors, note
from deploy.local.redis import RedisHA
from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts.envelope import TERMINAL_STATUSES
from shared.contracts.errors import Code

MODES = {"no-wait": "0", "wait": "1"}
LABELS = ("sports", "politics", "technology")
# Load goes on this long before the fault and after the promotion.
LEAD_S, TAIL_S = 3.0, 4.0
# How long every acknowledged task is given to end after the load stops.
SETTLE_S = 90.0


@dataclass(frozen=True)
class Plan:
    rounds: int = 2
    stall_s: float = 2.0
    interval_s: float = 0.02
    batch_items: int = 400
    streams: int = 4


QUICK = Plan(rounds=1, stall_s=1.5, batch_items=100, streams=2)


@dataclass
class Run:
    """One mode's round: what was acknowledged and what of it survived."""

    mode: str
    round: int
    acknowledged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    rerun: int = 0
    batch_acked: int = 0
    batch_counted: int = 0  # the batch's `submitted` count after the failover
    batch_ended: int = 0  # its terminal counts, summed
    batch_complete: bool = False
    batch_refused: dict[str, int] = field(default_factory=dict)
    streams: int = 0
    streams_intact: int = 0
    # How each stream's task ended, and what its replay gave: intact, differs, failed.
    stream_outcomes: dict[str, int] = field(default_factory=dict)
    rewinds: int = 0
    failover_s: float = 0.0

    @property
    def batch_ok(self) -> bool:
        return self.batch_complete and self.batch_counted == self.batch_ended == self.batch_acked

    @property
    def losses(self) -> int:
        """Everything counted as lost or broken."""
        return (
            self.lost
            + abs(self.batch_acked - self.batch_counted)
            + abs(self.batch_acked - self.batch_ended)
            + (self.streams - self.streams_intact)
        )


@dataclass
class Results:
    runs: list[Run]

    @property
    def failed(self) -> bool:
        return any(r.losses for r in self.runs if r.mode == "wait")


def _classify(text: str) -> tasks_pb2.SubmitRequest:
    return tasks_pb2.SubmitRequest(
        classification=classification_pb2.ClassifyRequest(
            text=text, labels=[classification_pb2.Label(name=n) for n in LABELS]
        )
    )


def _generate(prompt: str) -> tasks_pb2.SubmitRequest:
    return tasks_pb2.SubmitRequest(
        generation=generation_pb2.GenerateRequest(
            prompt=prompt,
            sampling=generation_pb2.SamplingParams(max_tokens=48, temperature=0.0),
        )
    )


class Load:
    """A Submit every ``interval_s`` from a thread: the ids acknowledged, codes refused."""

    def __init__(self, tasks: tasks_pb2_grpc.TasksStub, interval_s: float) -> None:
        self.tasks, self.interval_s = tasks, interval_s
        self.acknowledged: list[str] = []
        self.refused: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self.tasks.Submit(
                    _classify(f"Report {n}: the striker scored twice."), timeout=8
                )
                self.acknowledged.append(reply.task_id)
            except grpc.RpcError as exc:
                self.refused[exc.code().name] += 1
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class BatchClient:
    """Streams a keyed batch in chunks; when the stream is cut, opens it again with the
    same batch id and sends the items not yet acknowledged (item ids make that safe)."""

    CHUNK, PAUSE_S = 20, 0.1

    def __init__(self, tasks: tasks_pb2_grpc.TasksStub, items: int) -> None:
        self.tasks = tasks
        self.batch_id = f"failover-{uuid.uuid4().hex[:12]}"
        self.items = [
            tasks_pb2.BatchItem(item_id=f"doc-{i}", task=_classify(f"Batch document {i}."))
            for i in range(items)
        ]
        self.acked: dict[str, str] = {}  # item id → task id
        self.refused: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _requests(self) -> Iterator[tasks_pb2.SubmitBatchRequest]:
        todo = [item for item in self.items if item.item_id not in self.acked]
        if not todo:  # all acknowledged: the stream only seals the batch
            yield tasks_pb2.SubmitBatchRequest(batch_id=self.batch_id)
        for i in range(0, len(todo), self.CHUNK):
            yield tasks_pb2.SubmitBatchRequest(
                batch_id=self.batch_id, items=todo[i : i + self.CHUNK]
            )
            time.sleep(self.PAUSE_S)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                for response in self.tasks.SubmitBatch(self._requests(), timeout=60):
                    for ack in response.acks:
                        if ack.task_id:
                            self.acked[ack.item_id] = ack.task_id
                        else:  # refused, to be resent: "item <code>"
                            self.refused[f"item {Code(ack.error.code).name}"] += 1
                if len(self.acked) == len(self.items):
                    return
            except grpc.RpcError as exc:
                self.refused[exc.code().name] += 1
            time.sleep(0.5)


def _stall_and_fail_over(ha: RedisHA, stall_s: float) -> float:
    """Cut the replica off for ``stall_s``, SIGKILL the primary, resume the replica;
    seconds from the kill until the Sentinels name the replica primary. The old primary
    is started again (the Sentinels make it a replica)."""
    primary = ha.primary()
    replica = next(s for s in ha.servers if s is not primary)
    assert primary.pid is not None and replica.pid is not None
    os.killpg(replica.pid, signal.SIGSTOP)
    # Cut the replication link too: otherwise the kernel buffers the stream for the
    # stopped replica, which reads it all once resumed. A partition, as networks make.
    client = redis.Redis(port=primary.port, socket_timeout=5)
    try:
        client.client_kill_filter(_type="replica")
    finally:
        client.close()
    time.sleep(stall_s)
    os.killpg(primary.pid, signal.SIGKILL)
    killed = time.monotonic()
    os.killpg(replica.pid, signal.SIGCONT)
    while True:
        try:
            if ha.primary() is replica:
                break
        except RuntimeError:
            pass
        if time.monotonic() - killed > 60:
            raise TimeoutError("the Sentinels promoted no replica in 60 s")
        time.sleep(0.05)
    took = time.monotonic() - killed
    primary.wait_stopped()
    primary.start()
    primary.wait_ready()
    return took


def _ends(tasks: tasks_pb2_grpc.TasksStub, task_ids: list[str]) -> dict[str, tasks_pb2.TaskResult]:
    """The terminal results of ``task_ids`` that end within ``SETTLE_S``."""
    ended: dict[str, tasks_pb2.TaskResult] = {}
    todo = list(task_ids)
    deadline = time.monotonic() + SETTLE_S
    while todo and time.monotonic() < deadline:
        left = []
        for task_id in todo:
            try:
                result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=5)
            except grpc.RpcError:
                left.append(task_id)
                continue
            if result.status in TERMINAL_STATUSES:
                ended[task_id] = result
            else:
                left.append(task_id)
        todo = left
        if todo:
            time.sleep(1.0)
    return ended


def _replayed(generation: generation_pb2_grpc.GenerationStub, task_id: str) -> str | None:
    """The text a StreamTask from the first token gives, or None if it fails."""
    try:
        chunks = generation.StreamTask(
            generation_pb2.StreamTaskRequest(task_id=task_id), timeout=30
        )
        return "".join(chunk.delta for chunk in chunks)
    except grpc.RpcError:
        return None


def _batch_counts(tasks: tasks_pb2_grpc.TasksStub, batch_id: str) -> tasks_pb2.BatchStatus | None:
    deadline = time.monotonic() + SETTLE_S
    status = None
    while time.monotonic() < deadline:
        try:
            status = tasks.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
        if status is not None and status.complete:
            break
        time.sleep(1.0)
    return status


def run_mode(mode: str, rnd: int, plan: Plan) -> Run:
    run = Run(mode, rnd)
    env = {
        "NLP_REDIS_WAIT_REPLICAS": MODES[mode],
        "NLP_HEARTBEAT_S": "1",
        "NLP_REDELIVER_AFTER_S": "4",
        "NLP_SWEEP_INTERVAL_S": "1",
    }
    note(f"{mode} round {rnd}: starting the stack")
    with LocalStack(
        kinds=("classification", "generation"), env=env, redis_sentinel=True, ready_timeout=300
    ) as stack:
        assert stack.redis_ha is not None
        with grpc.insecure_channel(stack.gateway_target) as channel:
            tasks = tasks_pb2_grpc.TasksStub(channel)
            generation = generation_pb2_grpc.GenerationStub(channel)
            load = Load(tasks, plan.interval_s)
            batch = BatchClient(tasks, plan.batch_items)
            load.start()
            time.sleep(LEAD_S)
            streams = [
                tasks.Submit(
                    _generate(f"Write a short note about harbour {i}."), timeout=10
                ).task_id
                for i in range(plan.streams)
            ]
            batch.start()
            note(f"{mode} round {rnd}: stalling the replica, killing the primary")
            run.failover_s = _stall_and_fail_over(stack.redis_ha, plan.stall_s)
            time.sleep(TAIL_S)
            load.stop()
            batch.join(150)
            note(f"{mode} round {rnd}: waiting for every acknowledged task")
            run.acknowledged, run.refused = len(load.acknowledged), dict(load.refused)
            ended = _ends(tasks, load.acknowledged + list(batch.acked.values()) + streams)
            run.lost = len(load.acknowledged) - sum(t in ended for t in load.acknowledged)
            run.rerun = sum(r.attempt > 1 for r in ended.values())
            run.batch_acked, run.batch_refused = len(batch.acked), dict(batch.refused)
            status = _batch_counts(tasks, batch.batch_id)
            if status is not None:
                run.batch_counted = status.submitted
                run.batch_ended = (
                    status.succeeded + status.failed + status.cancelled + status.deadline_exceeded
                )
                run.batch_complete = status.complete
            run.streams = len(streams)
            outcomes: Counter[str] = Counter()
            for task_id in streams:
                result = ended.get(task_id)
                if result is None or result.status != common_pb2.TASK_STATUS_SUCCEEDED:
                    how = "never ended" if result is None else "ended " + str(result.status)
                    outcomes[how] += 1
                    continue
                replay = _replayed(generation, task_id)
                intact = replay == result.generation.text
                run.streams_intact += intact
                outcomes[
                    "intact" if intact else "replay failed" if replay is None else "differs"
                ] += 1
            run.stream_outcomes = dict(outcomes)
        run.rewinds = sum(
            service.log_tail(10**7).count("Redis failed over")
            for name, service in stack.services.items()
            if name.endswith("-intake")
        )
    note(f"{mode} round {rnd}: {run}")
    return run


def output(results: Results) -> Output:
    columns: list[tuple[str, object]] = [
        ("mode", "mode"),
        ("round", "round"),
        ("promoted s", "failover_s"),
        ("acked", "acknowledged"),
        ("refused", lambda r: format_errors(r.refused)),
        ("lost", "lost"),
        ("ran again", "rerun"),
        ("batch acked", "batch_acked"),
        ("batch counted", "batch_counted"),
        ("batch ended", "batch_ended"),
        ("complete", lambda r: "yes" if r.batch_complete else "no"),
        ("batch items retried", lambda r: format_errors(r.batch_refused)),
        ("streams intact", lambda r: f"{r.streams_intact}/{r.streams}"),
        ("rewinds", "rewinds"),
    ]
    return Output(
        about=[
            "Redis primary + replica + 3 Sentinels; the replica is cut off (SIGSTOP), the "
            "primary is SIGKILLed, the replica promoted",
            "lost: acknowledged Submits never ended; batch counted/ended: its submitted and "
            "terminal counts against the items acknowledged",
        ],
        tables=[
            Table.of_items(
                "what a Redis failover loses",
                columns,  # type: ignore[arg-type]
                results.runs,
                digits=2,
                notes=[
                    f"{mode}: {sum(r.losses for r in results.runs if r.mode == mode)} lost "
                    f"or broken over {sum(r.mode == mode for r in results.runs)} rounds"
                    for mode in MODES
                ],
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    bench = Bench("failover", __doc__, env=None, plan=Plan(), quick_plan=QUICK)
    bench.option("rounds", "rounds of both modes")
    bench.option("stall_s", "seconds the replica stalls before the primary dies", minimum=0)
    bench.option("batch_items", "items of the gateway batch")
    bench.option("streams", "generation tasks whose token streams are checked", minimum=0)
    bench.parse(argv)
    plan: Plan = bench.plan
    runs = [run_mode(mode, rnd, plan) for rnd in range(1, plan.rounds + 1) for mode in MODES]
    results = Results(runs)
    return bench.finish(results, output(results), failed=results.failed)


if __name__ == "__main__":
    sys.exit(main())
