"""A local ``redis-server`` (Debian's package) with AOF on, for the local stack and tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from deploy.local.kafka import free_port


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """PID of the redis-server process, if started."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (negative: the signal); None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def wait_stopped(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to end (killed, say); its exit status."""
        if self._proc is None:
            return None
        return self._proc.wait(timeout)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; `make setup` installs it (apt)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            # AOF makes queued Celery messages and results survive a Redis restart.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        self._proc = subprocess.Popen(argv, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    tail = self.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited ({self._proc.returncode}):\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server not ready on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextmanager
def serving(data_dir: Path) -> Iterator[str]:
    """A Redis server for the block, ready when it begins: its URL."""
    server = RedisServer(data_dir)
    server.start()
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()
