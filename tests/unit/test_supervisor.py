"""The local stack runner's restart policy and supervisor, on a fake clock and fake processes."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

from deploy.local.stack import AVAILABLE_KINDS, main, parse_kinds
from deploy.local.supervisor import (
    CRASH_LOOP_MAX_RESTARTS,
    CRASH_LOOP_WINDOW_S,
    RESTART_BACKOFF_INITIAL_S,
    RESTART_BACKOFF_MAX_S,
    RESTART_STABLE_AFTER_S,
    Restart,
    RestartPolicy,
    Supervisor,
    describe_exit,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(clock: FakeClock, **overrides: Any) -> RestartPolicy:
    return RestartPolicy(clock=clock, **overrides)


# --- RestartPolicy ----------------------------------------------------------------------


def test_the_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    clock = FakeClock()
    # No crash-loop limit here: only the growth is under test.
    rules = policy(clock, max_restarts=100)
    rules.started("w")
    delays = []
    for _ in range(8):
        decision = rules.exited("w")
        assert decision is not None
        delays.append(decision.delay)
        clock.advance(decision.delay)
        rules.started("w")
        clock.advance(0.5)  # dies again quickly
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_defaults_are_the_documented_constants() -> None:
    rules = RestartPolicy()
    assert rules.backoff(1) == RESTART_BACKOFF_INITIAL_S
    assert rules.backoff(2) == 2 * RESTART_BACKOFF_INITIAL_S
    assert rules.backoff(10_000) == RESTART_BACKOFF_MAX_S
    assert rules.stable_after == RESTART_STABLE_AFTER_S
    assert (rules.max_restarts, rules.window) == (CRASH_LOOP_MAX_RESTARTS, CRASH_LOOP_WINDOW_S)


def test_attempts_count_up_while_the_process_keeps_failing() -> None:
    clock = FakeClock()
    rules = policy(clock)
    rules.started("w")
    assert rules.exited("w") == Restart(attempt=1, delay=1.0)
    rules.started("w")
    clock.advance(5)
    assert rules.exited("w") == Restart(attempt=2, delay=2.0)


def test_the_backoff_resets_once_the_process_stayed_up_for_the_stable_period() -> None:
    clock = FakeClock()
    rules = policy(clock, stable_after=60)
    rules.started("w")
    for _ in range(3):
        decision = rules.exited("w")
        assert decision is not None
        clock.advance(decision.delay)
        rules.started("w")
    clock.advance(59.9)
    assert rules.exited("w") == Restart(attempt=4, delay=8.0)  # not stable yet
    clock.advance(8)
    rules.started("w")
    clock.advance(60)
    assert rules.exited("w") == Restart(attempt=1, delay=1.0)


def test_processes_are_tracked_separately() -> None:
    clock = FakeClock()
    rules = policy(clock)
    rules.started("a")
    rules.started("b")
    assert rules.exited("a") == Restart(attempt=1, delay=1.0)
    assert rules.exited("a") == Restart(attempt=2, delay=2.0)
    assert rules.exited("b") == Restart(attempt=1, delay=1.0)


def test_more_restarts_than_allowed_within_the_window_is_a_crash_loop() -> None:
    clock = FakeClock()
    rules = policy(clock, max_restarts=5, window=300)
    rules.started("w")
    for attempt in range(1, 6):
        decision = rules.exited("w")
        assert decision is not None and decision.attempt == attempt
        clock.advance(decision.delay + 1)
        rules.started("w")
    assert rules.exited("w") is None


def test_restarts_older_than_the_window_no_longer_count_towards_a_crash_loop() -> None:
    clock = FakeClock()
    rules = policy(clock, max_restarts=5, window=300)
    rules.started("w")
    for _ in range(5):
        clock.advance(61)  # stable every time: the backoff resets too
        assert rules.exited("w") is not None
        rules.started("w")
    clock.advance(61)
    # Restarts at 61, 122, 183, 244, 305; now 366: the first one left the window.
    decision = rules.exited("w")
    assert decision == Restart(attempt=1, delay=1.0)


def test_a_process_that_crashes_now_and_then_is_never_given_up() -> None:
    clock = FakeClock()
    rules = policy(clock)
    rules.started("w")
    for _ in range(50):
        clock.advance(RESTART_STABLE_AFTER_S + 1)
        decision = rules.exited("w")
        assert decision == Restart(attempt=1, delay=RESTART_BACKOFF_INITIAL_S)
        clock.advance(decision.delay)
        rules.started("w")


# --- Supervisor -------------------------------------------------------------------------


@dataclass
class FakeChild:
    name: str
    pid: int | None = 100
    code: int | None = None
    is_ready: bool = True
    fail_restart: bool = False
    restarts: int = 0
    log: str = "line 1\nline 2\nboom"
    _next_pid: int = field(default=200, repr=False)

    def returncode(self) -> int | None:
        return self.code

    def restart(self) -> None:
        self.restarts += 1
        if self.fail_restart:
            raise RuntimeError("port in use")
        self.code = None
        self.pid = self._next_pid
        self._next_pid += 1

    def ready(self) -> bool:
        return self.is_ready

    def log_tail(self) -> str:
        return self.log


@dataclass
class Harness:
    clock: FakeClock
    children: list[FakeChild]
    supervisor: Supervisor
    lines: list[str]
    changes: list[int]


def harness(*names: str, **policy_overrides: Any) -> Harness:
    clock = FakeClock()
    children = [FakeChild(name) for name in names]
    lines: list[str] = []
    changes: list[int] = []
    supervisor = Supervisor(
        children,
        policy(clock, **policy_overrides),
        log=lines.append,
        on_change=lambda: changes.append(1),
    )
    return Harness(clock, children, supervisor, lines, changes)


def test_running_children_are_left_alone() -> None:
    h = harness("a", "b")
    assert h.supervisor.poll()
    assert h.lines == [] and h.changes == []
    assert [c.restarts for c in h.children] == [0, 0]


def test_an_exited_child_is_restarted_after_its_backoff_and_reported_ready() -> None:
    h = harness("worker", "gateway")
    worker, gateway = h.children
    worker.code, worker.is_ready = -signal.SIGKILL, False
    assert h.supervisor.poll()
    assert h.lines[0].startswith(
        "worker (pid 100) exited: killed by SIGKILL; restart 1 in 1s; its log:"
    )
    assert "  | boom" in h.lines[0]  # the log tail on the first failure
    assert worker.restarts == 0  # not before the backoff

    h.clock.advance(0.5)
    assert h.supervisor.poll() and worker.restarts == 0
    h.clock.advance(0.5)
    assert h.supervisor.poll()
    assert worker.restarts == 1 and gateway.restarts == 0
    assert h.lines[-1] == "worker restarted (restart 1, pid 200)"
    assert h.changes == [1]  # the state file gets the new pid

    assert h.supervisor.poll()
    assert not any("ready" in line for line in h.lines)
    worker.is_ready = True
    assert h.supervisor.poll()
    assert h.lines[-1] == "worker is ready again (pid 200)"
    assert h.supervisor.poll()
    assert sum("ready again" in line for line in h.lines) == 1


def test_the_log_tail_is_shown_on_the_first_failure_only() -> None:
    h = harness("worker")
    (worker,) = h.children
    worker.code = 1
    h.supervisor.poll()
    h.clock.advance(1)
    h.supervisor.poll()
    worker.code = 1
    h.supervisor.poll()
    exits = [line for line in h.lines if " exited: " in line]
    assert exits[1] == "worker (pid 200) exited: exit status 1; restart 2 in 2s"


def test_a_crash_loop_makes_poll_give_up() -> None:
    h = harness("worker", max_restarts=2, window=300)
    (worker,) = h.children
    for _ in range(2):
        worker.code = 3
        assert h.supervisor.poll()
        h.clock.advance(10)
        assert h.supervisor.poll()
    worker.code = 3
    assert not h.supervisor.poll()
    assert "crash loop, giving up" in h.lines[-1]
    assert "  | boom" in h.lines[-1]
    assert worker.restarts == 2


def test_a_failed_restart_is_reported_and_counts_as_a_quick_exit() -> None:
    h = harness("kafka", max_restarts=5)
    (kafka,) = h.children
    kafka.code, kafka.fail_restart = 1, True
    assert h.supervisor.poll()
    h.clock.advance(1)
    assert h.supervisor.poll()
    assert h.lines[-1] == "kafka: restart 1 failed: port in use"
    # Still exited: seen again on the next poll, with a longer backoff.
    assert h.supervisor.poll()
    assert h.lines[-1].endswith("restart 2 in 2s")


# --- helpers ----------------------------------------------------------------------------


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(143) == "exit status 143"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


def test_parse_kinds() -> None:
    first, *_ = AVAILABLE_KINDS
    assert parse_kinds(f" {first} ,,{first}") == (first,)
    assert parse_kinds(",".join(reversed(AVAILABLE_KINDS))) == tuple(reversed(AVAILABLE_KINDS))
    with pytest.raises(ValueError, match="not a kind"):
        parse_kinds("poetry")
    with pytest.raises(ValueError, match="expected some of"):
        parse_kinds(" , ")


def test_the_command_line_rejects_unknown_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "up"):
        with pytest.raises(SystemExit) as info:
            main([command, "--kinds", "poetry"])
        assert info.value.code == 2
        assert "'poetry' is not a kind" in capsys.readouterr().err
