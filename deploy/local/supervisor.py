"""Supervision for ``python -m deploy.local.stack run``: a restart policy with exponential
backoff and crash-loop detection, and the ``Supervisor`` that applies it to the stack's
processes (services, the Kafka broker, redis-server). ``LocalStack`` itself never
restarts anything: tests kill processes on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Protocol

from deploy.local.kafka import KafkaBroker
from deploy.local.redis import RedisSentinel, RedisServer


class Process(Protocol):
    """What the supervisor needs of one stack service (``deploy.local.stack.Service``)."""

    name: str
    proc: Popen[Any] | None

    @property
    def ready_file(self) -> Path: ...

    def start(self) -> None: ...

    def log_tail(self, chars: int = 4000) -> str: ...


# Backoff before restarting a process that exited: the first restart comes quickly (a
# one-off crash costs a second), a process that keeps failing is retried less and less
# often, but never waits more than half a minute once whatever broke it is fixed.
RESTART_BACKOFF_INITIAL_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# A process that stayed up this long counts as healthy again: its next exit restarts it
# after the initial backoff. Longer than a service takes to load its models and become
# ready (10-30 s on 2 cores), so a crash during startup keeps backing off.
RESTART_STABLE_AFTER_S = 60.0
# A crash loop: more than this many restarts of one process within the window. Five
# quick restarts take at least 1+2+4+8+16 s plus five startups, so a process that cannot
# start is given up within a minute or two, while one that stays up for a minute between
# crashes has at most 4 earlier restarts in any window and is never given up.
CRASH_LOOP_MAX_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 300.0


@dataclass(frozen=True)
class Restart:
    """What a ``RestartPolicy`` decided for a process that exited: start it again."""

    # Restarts since the process last stayed up ``stable_after`` seconds (1 = first).
    attempt: int
    # Seconds to wait before starting it.
    delay: float


@dataclass
class _History:
    started_at: float
    failures: int = 0
    restarts: list[float] = field(default_factory=list)


@dataclass
class RestartPolicy:
    """Exponential backoff and crash-loop detection, per process name; pure logic.

    Call ``started`` whenever a process is (re)started and ``exited`` when it is seen to
    have exited; ``clock`` is injectable so that tests need no real time.
    """

    initial_backoff: float = RESTART_BACKOFF_INITIAL_S
    max_backoff: float = RESTART_BACKOFF_MAX_S
    stable_after: float = RESTART_STABLE_AFTER_S
    max_restarts: int = CRASH_LOOP_MAX_RESTARTS
    window: float = CRASH_LOOP_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _history: dict[str, _History] = field(default_factory=dict, init=False, repr=False)

    def backoff(self, attempt: int) -> float:
        """Delay before restart ``attempt`` (1-based): doubling from the initial, capped."""
        # The exponent is bounded so that a huge attempt count cannot overflow a float.
        return min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempt - 1, 64))

    def started(self, name: str) -> None:
        """``name`` was started (or a start of it was attempted) now."""
        now = self.clock()
        self._history.setdefault(name, _History(started_at=now)).started_at = now

    def exited(self, name: str) -> Restart | None:
        """``name`` exited now: when to restart it, or None for a crash loop (give up)."""
        now = self.clock()
        history = self._history.setdefault(name, _History(started_at=now))
        if now - history.started_at >= self.stable_after:
            history.failures = 0
        history.restarts = [t for t in history.restarts if now - t < self.window]
        if len(history.restarts) >= self.max_restarts:
            return None
        history.failures += 1
        history.restarts.append(now)
        return Restart(attempt=history.failures, delay=self.backoff(history.failures))


class Child(Protocol):
    """A process the ``Supervisor`` watches and restarts."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def returncode(self) -> int | None:
        """The exit status once it exited (negative: the signal), None while it runs."""
        ...

    def restart(self) -> None:
        """Start it again; must not wait for it to be ready."""
        ...

    def ready(self) -> bool:
        """Whether it serves again (checked after a restart until it says yes)."""
        ...

    def log_tail(self) -> str:
        """The last lines of its log."""
        ...


def describe_exit(returncode: int) -> str:
    """``-9`` → ``"killed by SIGKILL"``, ``1`` → ``"exit status 1"``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _indent(text: str, lines: int = 20) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])


class Supervisor:
    """Restarts the children that exit, as ``policy`` says; ``poll`` it periodically.

    Never blocks on a child: a restart only starts the process, and ``poll`` reports
    when it is ready again. ``on_change`` runs after a round of restarts (new pids).
    """

    def __init__(
        self,
        children: Iterable[Child],
        policy: RestartPolicy | None = None,
        *,
        log: Callable[[str], None] = print,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.children = list(children)
        self.policy = policy or RestartPolicy()
        self.log = log
        self.on_change = on_change
        # Children waiting for their restart: name -> when it is due.
        self._due: dict[str, float] = {}
        self._attempt: dict[str, int] = {}
        # Restarted children not ready yet.
        self._starting: set[str] = set()
        for child in self.children:
            self.policy.started(child.name)

    def poll(self) -> bool:
        """Check every child once; False when one is in a crash loop (give up)."""
        now = self.policy.clock()
        changed = False
        for child in self.children:
            name = child.name
            due = self._due.get(name)
            if due is not None:
                if now >= due:
                    del self._due[name]
                    self._restart(child)
                    changed = True
                continue
            returncode = child.returncode()
            if returncode is None:
                if name in self._starting and child.ready():
                    self._starting.discard(name)
                    self.log(f"{name} is ready again (pid {child.pid})")
                continue
            self._starting.discard(name)
            decision = self.policy.exited(name)
            if decision is None:
                self.log(
                    f"{name} (pid {child.pid}) exited: {describe_exit(returncode)}; "
                    f"{self.policy.max_restarts} restarts within {self.policy.window:.0f}s: "
                    f"crash loop, giving up; its log:\n{_indent(child.log_tail())}"
                )
                return False
            self._due[name] = now + decision.delay
            self._attempt[name] = decision.attempt
            line = (
                f"{name} (pid {child.pid}) exited: {describe_exit(returncode)}; "
                f"restart {decision.attempt} in {decision.delay:.0f}s"
            )
            if decision.attempt == 1:
                line += f"; its log:\n{_indent(child.log_tail())}"
            self.log(line)
        if changed:
            self.on_change()
        return True

    def _restart(self, child: Child) -> None:
        # Counted as a start even if it fails: the failure then shows as a quick exit.
        self.policy.started(child.name)
        attempt = self._attempt.get(child.name, 1)
        try:
            child.restart()
        except Exception as exc:
            self.log(f"{child.name}: restart {attempt} failed: {exc}")
            return
        self._starting.add(child.name)
        self.log(f"{child.name} restarted (restart {attempt}, pid {child.pid})")


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class _ServiceChild:
    service: Process

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def pid(self) -> int | None:
        return self.service.proc.pid if self.service.proc else None

    def returncode(self) -> int | None:
        proc = self.service.proc
        return None if proc is None else proc.poll()

    def restart(self) -> None:
        old = self.service.proc
        if old is not None:
            # What the dead leader left in its process group (a vLLM engine, say) would
            # hold on to memory and ports: kill it first.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.pid, signal.SIGKILL)
        self.service.start()

    def ready(self) -> bool:
        return self.service.ready_file.exists()

    def log_tail(self) -> str:
        return self.service.log_tail()


@dataclass
class _KafkaChild:
    kafka: KafkaBroker
    name: str = "kafka"

    @property
    def pid(self) -> int | None:
        return self.kafka.pid

    def returncode(self) -> int | None:
        return self.kafka.returncode

    def restart(self) -> None:
        # stop() of an exited broker only drops a half-written CDS archive. start() keeps
        # the port and data dir and skips formatting: topics and offsets survive.
        self.kafka.stop()
        self.kafka.start()

    def ready(self) -> bool:
        return _tcp_open(self.kafka.port)

    def log_tail(self) -> str:
        return self.kafka.log_tail(lines=20)


@dataclass
class _RedisChild:
    redis: RedisServer | RedisSentinel
    name: str = "redis"

    @property
    def pid(self) -> int | None:
        return self.redis.pid

    def returncode(self) -> int | None:
        return self.redis.returncode

    def restart(self) -> None:
        # Same port and dir: the AOF brings back queued Celery messages and results.
        self.redis.start()

    def ready(self) -> bool:
        return _tcp_open(self.redis.port)

    def log_tail(self) -> str:
        try:
            return self.redis.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def stack_children(
    kafka: Sequence[KafkaBroker],
    redis: Sequence[RedisServer | RedisSentinel],
    services: Iterable[Process],
) -> list[Child]:
    """The processes of a started stack, as the ``Supervisor`` watches them: its Kafka
    node(s), its Redis server(s) and Sentinels, its services."""
    children: list[Child] = [
        _KafkaChild(node, "kafka" if len(kafka) == 1 else f"kafka-{node.node_id}") for node in kafka
    ]
    # A restarted Redis primary comes back as a primary; the Sentinels make it a replica.
    children += [
        _RedisChild(server, "redis" if len(redis) == 1 else f"redis-{server.data_dir.name}")
        for server in redis
    ]
    children += [_ServiceChild(service) for service in services]
    return children
