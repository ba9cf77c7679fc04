"""Runners of local processes stop what they started when they are terminated."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_terminated_runner_stops_the_servers_it_started(tmp_path: Path) -> None:
    # The server runs in a process group of its own, so SIGTERM reaches the runner only.
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import pathlib, time
                from deploy.local.kafka import interrupt_on_termination
                from deploy.local.redis import RedisServer

                interrupt_on_termination()
                server = RedisServer(pathlib.Path({str(tmp_path)!r}))
                server.start()
                try:
                    server.wait_ready()
                    print(server.port, flush=True)
                    time.sleep(600)
                finally:
                    server.stop()
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        port = int(runner.stdout.readline())
        client = redis.Redis(port=port)
        pid = int(client.info("server")["process_id"])
        client.close()
        assert _running(pid)

        runner.terminate()
        assert runner.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid), "the runner's redis-server outlived it"
    finally:
        if runner.poll() is None:
            runner.kill()
