"""What every benchmark measures with: bounded concurrent driving, the broker's warm-up,
percentiles and CPU accounting. The run's scaffold (options, header, tables, JSON) is
``bench.common``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from deploy.local.stack import LocalStack
from shared.transport.kafka import TASK_TOPIC_PARTITIONS, create_topics, make_async_producer
from shared.transport.kafka_consumer import Partition, make_consumer

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class TaskFailedError(Exception):
    """A task ended in a status other than SUCCEEDED (or had not ended when waited for)."""


class RequestFailedError(Exception):
    """A request that failed other than with a gRPC status (an HTTP client's error):
    ``code`` names its kind in the error counts (``HTTP 503``, ``APITimeoutError``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass
class Driven:
    """What :func:`drive` did: completed jobs, failures by cause, elapsed time."""

    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    async def attempt(self, job: Callable[[int], Awaitable[None]], i: int) -> None:
        """Run ``job(i)``, counting it done or its RPC error / failed task / failed request."""
        try:
            await job(i)
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
            self.first_error = self.first_error or f"{exc.code().name}: {exc.details()}"
        except TaskFailedError as exc:
            self.errors[str(exc)] += 1
            self.first_error = self.first_error or f"task ended {exc}"
        except RequestFailedError as exc:
            self.errors[exc.code] += 1
            self.first_error = self.first_error or f"{exc.code}: {exc}"
        else:
            self.done += 1


async def drive(
    job: Callable[[int], Awaitable[None]], concurrency: int, total: int, budget_s: float
) -> Driven:
    """Run ``job(0)`` … ``job(total - 1)`` on ``concurrency`` loops, until ``budget_s``.

    Loops take no new job once the budget is spent; jobs in flight finish (their RPC
    deadlines bound them). RPC errors, failed tasks and failed requests are counted, not
    raised.
    """
    out = Driven()
    indices = iter(range(total))  # shared: each index is taken by exactly one loop
    started = time.perf_counter()

    async def loop() -> None:
        for i in indices:
            if time.perf_counter() - started > budget_s:
                return
            await out.attempt(job, i)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - started
    return out


@dataclass(frozen=True)
class BrokerWarmup:
    """What :func:`warm_broker` put through the broker."""

    seconds: float
    produced: int
    consumed: int


async def warm_broker(
    stack: LocalStack, seconds: float, senders: int = 16, settle_s: float = 60.0
) -> BrokerWarmup:
    """Produce, fetch and commit through the stack's broker for ``seconds``, on a scratch
    topic, as the gateway's producer and an intake's consumer do; then wait (up to
    ``settle_s``) until the broker's JIT compiler threads have been idle for two seconds,
    since they compile what the traffic made hot in the background for a while after it.

    A fresh JVM runs Kafka's request paths interpreted until its JIT has compiled them,
    which takes thousands of requests; a broker in service did that long ago. Unwarmed, a
    16-stream generation level paid ~0.3 CPU-s of compilation and Kafka used 0.79 CPU-s
    in all (0.53-0.62 warmed so), on the cores the engine needs.
    """
    settings = stack.settings()
    topic = settings.names.bench_topic("warm-broker")
    create_topics(settings, [topic], partitions=TASK_TOPIC_PARTITIONS)
    producer = make_async_producer(settings, linger_ms=0.5, client_id="bench-warm")
    consumer = make_consumer(settings, topic)
    consumer.subscribe([topic])
    produced = consumed = 0
    done_producing = False
    began = time.monotonic()

    def consume() -> None:
        nonlocal consumed
        drain_until = float("inf")
        measured = time.monotonic()
        while consumed < produced or not done_producing:
            now = time.monotonic()
            if done_producing:
                drain_until = min(drain_until, now + 10.0)
            if now > drain_until:
                return
            offsets: dict[Partition, int] = {}
            for partition, records in consumer.poll(timeout_ms=100, max_records=50).items():
                consumed += len(records)
                offsets[partition] = records[-1].offset + 1
            # Commits and lag queries are requests of their own kinds, which the
            # intakes send too.
            if offsets:
                consumer.commit(offsets)
            if now - measured > 0.5:
                consumer.lag()
                measured = now

    async def send(sender: int) -> None:
        nonlocal produced
        payload = bytes(range(256)) * 2
        while time.monotonic() - began < seconds:
            key = f"{sender}-{produced}".encode()
            await producer.send(topic, payload, key, [("bench", b"warm-broker")])
            produced += 1

    loop = asyncio.get_running_loop()
    fetching = loop.run_in_executor(None, consume)
    try:
        await asyncio.gather(*(send(i) for i in range(senders)))
    finally:
        done_producing = True
        try:
            await fetching
        finally:
            consumer.close()
            producer.close()
    if stack.kafka and stack.kafka.pid:
        await jit_settled(stack.kafka.pid, settle_s)
    return BrokerWarmup(round(time.monotonic() - began, 1), produced, consumed)


async def jit_settled(pid: int, timeout_s: float, quiet_s: int = 2) -> bool:
    """Wait until a JVM's JIT compilers have been idle for ``quiet_s`` seconds (False: not
    within ``timeout_s``)."""
    give_up = time.monotonic() + timeout_s
    quiet = 0
    before = jit_cpu_s(pid)
    while quiet < quiet_s:
        if time.monotonic() >= give_up:
            return False
        await asyncio.sleep(1.0)
        now = jit_cpu_s(pid)
        quiet = quiet + 1 if now - before < 0.02 else 0
        before = now
    return True


def jit_cpu_s(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads so far."""
    threads = (_proc_stat(str(pid), tid) for tid in os.listdir(f"/proc/{pid}/task"))
    # None: the thread ended.
    return sum(t[3] for t in threads if t is not None and "CompilerThre" in t[0])


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p90, p99 (inclusive method; one value is its own percentiles)."""
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; NaN for nothing (a table shows 'nan' rather than crashing)."""
    listed = list(values)
    return statistics.fmean(listed) if listed else float("nan")


# --- CPU accounting -----------------------------------------------------------------------


def _proc_stat(pid: str, thread: str = "") -> tuple[str, int, int, float] | None:
    """(comm, ppid, session, CPU seconds) of a process (or of one of its threads), or
    None when it is gone."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields proper start after the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    cpu_ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return comm, int(fields[1]), int(fields[3]), cpu_ticks / _TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy since boot, and stolen by its host.

    Busy is user + nice + system + irq + softirq (guest time is inside user time); steal
    is time a virtual CPU wanted to run and the hypervisor ran something else.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / _TICKS_PER_S, steal / _TICKS_PER_S


def stack_cpu(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of each stack process group, this process and the machine.

    Every stack process is a child of this one that leads its own session (the stack
    starts them with ``start_new_session``), so a session is one component with all
    its threads and helpers. Keys: service names, ``kafka``, the comm of anything
    else (``redis-server``), ``client`` (this process), ``machine`` and ``steal``.
    """
    me = os.getpid()
    stats = {pid: s for pid in os.listdir("/proc") if pid.isdigit() and (s := _proc_stat(pid))}
    names = {svc.proc.pid: name for name, svc in stack.services.items() if svc.proc is not None}
    if stack.kafka is not None and stack.kafka.pid is not None:
        names[stack.kafka.pid] = "kafka"
    leaders = {int(pid): s[0] for pid, s in stats.items() if s[1] == me and s[2] == int(pid)}
    out: dict[str, float] = {}
    for _, _, session, seconds in stats.values():
        if session in leaders:
            name = names.get(session, leaders[session])
            out[name] = out.get(name, 0.0) + seconds
    out["client"] = time.process_time()
    out["machine"], out["steal"] = machine_cpu_s()
    return out


def process_tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """(comm, CPU seconds so far) of ``root`` and each of its live descendants, by pid.

    A child that has exited is not counted (its time went to its parent's children
    total), so read this while the processes of interest run.
    """
    stats = {int(pid): s for pid in os.listdir("/proc") if pid.isdigit() and (s := _proc_stat(pid))}
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, tuple[str, float]] = {}
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        comm, _, _, seconds = stats[pid]
        out[pid] = (comm, seconds)
        todo.extend(children.get(pid, []))
    return out


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds per component between two :func:`stack_cpu` readings; ``other`` is what
    the machine spent outside the stack and this process (another program's load)."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    ours = sum(v for k, v in delta.items() if k not in ("machine", "steal"))
    # Clock-tick rounding can make ours exceed the machine's count by a tick or two.
    delta["other"] = max(0.0, delta["machine"] - ours)
    return delta


def fold_cpu(delta: Mapping[str, float], kind: str, groups: Sequence[str]) -> dict[str, float]:
    """:func:`cpu_delta`'s output folded into ``groups`` (plus machine and steal): a name
    that is a group stays itself, ``redis-server`` is ``redis``, the intake and worker
    replicas of ``kind`` are ``intake`` and ``worker``, and any other service (another
    kind's, idle in this run) is ``idle``."""
    out = dict.fromkeys(groups, 0.0)
    for name, seconds in delta.items():
        if name in groups or name in ("machine", "steal"):
            group = name
        elif name == "redis-server":
            group = "redis"
        elif name == f"{kind}-intake":
            group = "intake"
        elif name == f"{kind}-worker" or name.startswith(f"{kind}-worker-"):
            group = "worker"
        else:
            group = "idle"
        out[group] = out.get(group, 0.0) + seconds
    return out


@contextlib.contextmanager
def environ(overrides: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` applied, restored on exit.

    Settings classes read the environment, so this shows what a service started with
    the same overrides would see.
    """
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """``os.environ`` as it was on entry once the block ends (what a library
    set for the engine this process starts is gone; the stack's processes get their own)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
