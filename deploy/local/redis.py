"""A local ``redis-server`` (Debian's package) with AOF on, for the local stack and tests;
and :class:`RedisHA`, a primary, a replica and three Sentinels (Debian's
``redis-sentinel``) that fail over between them."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from deploy.local.kafka import free_port
from deploy.local.lifecycle import Started, terminate


@dataclass
class _RedisProcess:
    """One redis-server (or redis-sentinel) process on 127.0.0.1:``port``."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    # What it is called in errors, and its log's name.
    program = "redis-server"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.program}.log"

    @property
    def pid(self) -> int | None:
        """PID of the process, if started."""
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

    def _launch(self, argv: list[str]) -> None:
        binary = shutil.which(self.program)
        if binary is None:
            raise RuntimeError(f"{self.program} not found; `make setup` installs it (apt)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen([binary, *argv], start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    tail = self.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{self.program} exited ({self._proc.returncode}):\n{tail}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.program} not ready on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self._proc, timeout)


@dataclass
class RedisServer(_RedisProcess):
    # Start as a replica of this port's primary (the Sentinels may change it later).
    replica_of: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self) -> None:
        argv = [
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
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self._launch(argv)


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


_SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
dir {dir}
logfile {log}
sentinel resolve-hostnames no
sentinel monitor {name} 127.0.0.1 {primary} {quorum}
sentinel down-after-milliseconds {name} {down_after_ms}
sentinel failover-timeout {name} {failover_timeout_ms}
sentinel parallel-syncs {name} 1
"""


@dataclass
class RedisSentinel(_RedisProcess):
    """One ``redis-sentinel`` watching the primary ``primary`` under ``name``."""

    name: str = "nlp"
    primary: int = 0
    quorum: int = 2
    # Local processes on one host: a primary silent for a second is down. Production
    # Sentinels wait longer (default 30 s) to ride out network blips.
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10_000

    program = "redis-sentinel"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "sentinel.conf"
        # A Sentinel rewrites its config with what it learns (the primary after a
        # failover, the other Sentinels): write it only the first time.
        if not conf.exists():
            conf.write_text(
                _SENTINEL_CONF.format(
                    port=self.port,
                    dir=self.data_dir,
                    log=self.log_file,
                    name=self.name,
                    primary=self.primary,
                    quorum=self.quorum,
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                )
            )
        self._launch([str(conf)])


@dataclass
class RedisHA(Started):
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority)
    on 127.0.0.1, each with its own directory under ``data_dir``. Clients find the primary
    through :attr:`sentinel_addresses` and :attr:`name`; :attr:`url` gives its database."""

    data_dir: Path
    name: str = "nlp"
    replicas: int = 1
    sentinels: int = 3
    servers: list[RedisServer] = field(default_factory=list, init=False)
    watchers: list[RedisSentinel] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        primary = RedisServer(self.data_dir / "node-1")
        self.servers = [primary] + [
            RedisServer(self.data_dir / f"node-{i}", replica_of=primary.port)
            for i in range(2, self.replicas + 2)
        ]
        self.watchers = [
            RedisSentinel(
                self.data_dir / f"sentinel-{i}",
                name=self.name,
                primary=primary.port,
                quorum=self.sentinels // 2 + 1,
            )
            for i in range(1, self.sentinels + 1)
        ]

    @property
    def url(self) -> str:
        """The database (with Sentinels only it counts: the host is the first primary's)."""
        return self.servers[0].url

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(watcher.address for watcher in self.watchers)

    def primary(self) -> RedisServer:
        """The server the Sentinels name the primary now."""
        for watcher in self.watchers:
            if not watcher.running:
                continue
            client = redis.Redis(port=watcher.port, socket_connect_timeout=1, socket_timeout=2)
            try:
                found: Any = client.sentinel_get_master_addr_by_name(self.name)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if found:
                port = int(found[1])
                return next(s for s in self.servers if s.port == port)
        raise RuntimeError("no Sentinel names a primary")

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for watcher in self.watchers:
            watcher.start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every server and Sentinel answers, and every Sentinel knows the replicas and
        the other Sentinels (before that, a dead primary is never failed over: a
        Sentinel alone cannot reach the quorum)."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            server.wait_ready(max(1.0, deadline - time.monotonic()))
        for watcher in self.watchers:
            watcher.wait_ready(max(1.0, deadline - time.monotonic()))
        for watcher in self.watchers:
            client = redis.Redis(port=watcher.port, socket_connect_timeout=1, socket_timeout=2)
            try:
                while True:
                    seen: Any = client.sentinel_master(self.name)
                    if (
                        int(seen.get("num-slaves", 0)) >= self.replicas
                        and int(seen.get("num-other-sentinels", 0)) >= self.sentinels - 1
                    ):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"Sentinel {watcher.address} sees {seen}")
                    time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for server in reversed(self.servers):
            server.stop()
