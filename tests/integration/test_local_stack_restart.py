"""`python -m deploy.local.stack up` restarts a process that dies, as `make up` runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from deploy.local.kafka import free_port
from nlp.v1 import classification_pb2_grpc
from tests.factories import classify_request

# A stack of its own (a JVM among them) starts, and a worker restarts, on 2 busy cores.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[2]
WORKER = "classification-worker"

_T = TypeVar("_T")


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _stack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.local.stack", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _eventually(check: Callable[[], _T | None], timeout: float, what: str) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(grpc.RpcError, OSError, ValueError):
            result = check()
            if result is not None:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _classify(target: str) -> str:
    request = classify_request("The striker scored a late goal", ("sports", "politics"))
    with grpc.insecure_channel(target) as channel:
        stub = classification_pb2_grpc.ClassificationStub(channel)
        return stub.Classify(request, timeout=60).top_label


SERVICES = {WORKER, "classification-intake", "gateway"}
REPLICATED = {
    *(f"kafka-{i}" for i in (1, 2, 3)),
    "redis-node-1",
    "redis-node-2",
    *(f"redis-sentinel-{i}" for i in (1, 2, 3)),
}


@pytest.mark.parametrize(
    ("options", "processes", "victim"),
    [
        ((), {"kafka", "redis", *SERVICES}, WORKER),
        # The replicated stack: a dead Kafka node comes back into its cluster.
        (("--kafka-brokers", "3", "--redis-sentinel"), REPLICATED | SERVICES, "kafka-2"),
    ],
    ids=["single", "replicated"],
)
def test_a_killed_process_is_restarted_and_the_rest_of_the_stack_stays_up(
    tmp_path: Path, options: tuple[str, ...], processes: set[str], victim: str
) -> None:
    state_dir = tmp_path / "run"
    state_file, log_file = state_dir / "stack.json", state_dir / "stack.log"
    seen_pids: set[int] = set()
    stack_down = False

    def state() -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(state_file.read_text())
        seen_pids.add(int(loaded["pid"]))
        seen_pids.update(int(pid) for pid in loaded["pids"].values() if pid)
        return loaded

    def log() -> str:
        return log_file.read_text(errors="replace") if log_file.exists() else "(no log)"

    try:
        up = _stack(
            "up",
            "--state-dir",
            str(state_dir),
            "--gateway-port",
            str(free_port()),
            "--kinds",
            "classification",
            "--timeout",
            "480",
            *options,
            timeout=540,
        )
        assert up.returncode == 0, f"{up.stdout}{up.stderr}\nstack log:\n{log()}"
        before = state()
        runner, pids = int(before["pid"]), before["pids"]
        assert before["kinds"] == ["classification"]
        assert set(pids) == processes
        assert all(_running(pid) for pid in pids.values()), pids
        target = before["gateway"]
        assert _classify(target) == "sports"

        os.kill(pids[victim], signal.SIGKILL)
        _eventually(
            lambda: f"{victim} (pid {pids[victim]}) exited: killed by SIGKILL" in log() or None,
            120,
            "the stack log to report the kill",
        )
        _eventually(
            lambda: f"{victim} is ready again" in log() or None,
            300,
            f"the restarted process to be ready; stack log:\n{log()}",
        )
        assert f"{victim} restarted (restart 1, pid " in log()
        after = state()
        new_pid = after["pids"][victim]
        assert new_pid != pids[victim] and _running(new_pid)
        top = _eventually(lambda: _classify(target), 180, "a Classify after the restart")
        assert top == "sports"

        assert _running(runner), f"the stack runner exited; its log:\n{log()}"
        assert after["pid"] == runner
        for name, pid in pids.items():
            if name != victim:
                assert after["pids"][name] == pid, name
                assert _running(pid), name

        down = _stack("down", "--state-dir", str(state_dir), timeout=180)
        stack_down = True
        assert down.returncode == 0, down.stdout + down.stderr
        _eventually(
            lambda: not any(_running(pid) for pid in seen_pids) or None,
            60,
            "every process of the stack to be gone",
        )
        assert not state_file.exists()
        assert not Path(after["data_dir"]).exists()
    finally:
        if not stack_down and state_file.exists():
            with contextlib.suppress(Exception):
                _stack("down", "--state-dir", str(state_dir), timeout=180)
        with contextlib.suppress(Exception):
            state()
        # Whatever survived a failed test: the runner's and each process's own group.
        for pid in filter(_running, seen_pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
