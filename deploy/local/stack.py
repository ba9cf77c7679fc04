"""The local stack without Docker: Kafka (KRaft), Redis, the gateway and, per worker
kind, its intake and Celery worker — all on 127.0.0.1 with free ports and a fresh
data directory. The test suite uses the same class (``LocalStack``), which never
restarts anything by itself: tests kill processes on purpose.

    python -m deploy.local.stack run [--gateway-port 50051] [--demo] [--replicas ner=2]
                                     [--kinds classification,ner]
    python -m deploy.local.stack run --kafka-brokers 3 --redis-sentinel   # replicated
    python -m deploy.local.stack up --state-dir .run [--kinds …]      # background
    python -m deploy.local.stack down --state-dir .run

``run`` (and so ``up``) supervises the stack like compose with a restart policy: a
process that exits — a gateway, intake or worker, the Kafka broker or redis-server —
is started again after an exponential backoff (1 s doubling to 30 s, back to 1 s once
it has stayed up for 60 s); the broker and Redis come back on the same port and data
directory, so topics, offsets and queued tasks survive. Only a crash loop (a sixth
restart of one process within 5 minutes) stops the whole stack, with exit status 1.
``--kinds`` starts a subset of the available kinds (default: all). ``up`` records the
runner's and every process's pid in ``<state-dir>/stack.json``, refreshed on restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.kafka import KafkaBroker, KafkaCluster, ensure_jars, free_port
from deploy.local.lifecycle import Started
from deploy.local.observe import Prometheus, Zipkin
from deploy.local.redis import RedisHA, RedisSentinel, RedisServer
from deploy.local.supervisor import Child, Supervisor, stack_children
from shared.contracts.names import ALL_KINDS
from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import ensure_topics

ROOT = Path(__file__).resolve().parents[2]

# A kind is served once its service folder has a worker.
AVAILABLE_KINDS: tuple[str, ...] = tuple(
    kind for kind in ALL_KINDS if (ROOT / "services" / kind / "worker.py").exists()
)

# Celery worker processes per kind (default 1). spaCy holds the GIL while it parses,
# so one NER process never gets more than one core; a second one takes the other
# (measured by `make bench`: see the README). The ONNX kinds use every core from one.
DEFAULT_REPLICAS: dict[str, int] = {"ner": 2}


def worker_name(kind: str, replica: int) -> str:
    """Service name of a worker replica: ``<kind>-worker``, then ``<kind>-worker-2``, …"""
    return f"{kind}-worker" if replica == 1 else f"{kind}-worker-{replica}"


def parse_replicas(text: str) -> dict[str, int]:
    """``"ner=2,classification=1"`` → ``{"ner": 2, "classification": 1}``."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, count = item.partition("=")
        if not sep or kind not in ALL_KINDS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"replicas: expected KIND=N with N >= 1, got {item!r}")
        out[kind] = int(count)
    return out


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"ner,classification"`` → ``("ner", "classification")``, each one available."""
    kinds: list[str] = []
    for kind in filter(None, (part.strip() for part in text.split(","))):
        if kind not in AVAILABLE_KINDS:
            what = "has no worker in this checkout" if kind in ALL_KINDS else "is not a kind"
            raise ValueError(f"kinds: {kind!r} {what}; available: {', '.join(AVAILABLE_KINDS)}")
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        raise ValueError(f"kinds: expected some of {', '.join(AVAILABLE_KINDS)}")
    return tuple(kinds)


def parse_models(text: str) -> tuple[str, str, Path]:
    """``"classification=models.json"`` → the kind, its ``NLP_MODELS`` (the file's JSON,
    checked here: a typo fails now, not in a worker a minute later) and the file."""
    kind, sep, file = text.partition("=")
    if not sep or kind not in ALL_KINDS:
        raise ValueError(f"models: expected KIND=FILE (a JSON file), got {text!r}")
    try:
        models = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"models: {file}: {exc}") from None
    if not isinstance(models, dict) or not models:
        raise ValueError(f"models: {file} must hold an object: model name -> spec")
    return kind, json.dumps(models), Path(file).resolve()


_T = TypeVar("_T")


def _arg_type(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """``parse`` as an argparse type that shows its ValueError's message to the user."""

    def checked(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


@dataclass
class Service:
    """One Python service process of the stack."""

    name: str
    module: str
    env: dict[str, str]
    data_dir: Path
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "ready" / self.name

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "NLP_READY_FILE": str(self.ready_file)}
        with self.log_file.open("ab") as log:
            # Own process group: a SIGKILL reaches the whole service and nothing else.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {timeout}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class LocalStack(Started):
    """Everything the platform needs, as local processes. Use as a context manager."""

    data_dir: Path | None = None
    kinds: Iterable[str] = AVAILABLE_KINDS
    # Worker processes per kind, over DEFAULT_REPLICAS.
    replicas: Mapping[str, int] = field(default_factory=dict)
    gateway_port: int = 0
    # The OpenAI-compatible HTTP front door, started with the generation kind (0: a free port).
    http_port: int = 0
    namespace: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    # Further environment of one kind's workers, over ``env`` (a deployment sets each
    # worker's own, e.g. NLP_MODELS: the setting names no kind).
    worker_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    ready_timeout: float = 180.0
    keep_data: bool = False
    # Replicated: a KRaft cluster of this many nodes (topics at that replication factor,
    # min.insync.replicas one less) instead of one broker, and Redis as a primary, a
    # replica and three Sentinels instead of one server.
    kafka_brokers: int = 1
    redis_sentinel: bool = False
    # A real Prometheus scraping every process and Zipkin receiving their spans (with UI).
    observe: bool = False
    prometheus: Prometheus | None = field(default=None, init=False)
    zipkin: Zipkin | None = field(default=None, init=False)
    kafka: KafkaBroker | None = field(default=None, init=False)
    redis: RedisServer | None = field(default=None, init=False)
    kafka_cluster: KafkaCluster | None = field(default=None, init=False)
    redis_ha: RedisHA | None = field(default=None, init=False)
    services: dict[str, Service] = field(default_factory=dict, init=False)
    _own_dir: bool = field(default=False, init=False)

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def http_url(self) -> str | None:
        """The HTTP front door's base URL (``…/v1`` for OpenAI clients), when it runs."""
        if "http-gateway" not in self.services:
            return None
        return f"http://127.0.0.1:{self.http_port}/v1"

    @property
    def kafka_bootstrap(self) -> str:
        """The broker (or every node of the cluster) as clients are given it."""
        kafka = self.kafka_cluster or self.kafka
        assert kafka is not None, "the stack is not started"
        return kafka.bootstrap

    @property
    def redis_url(self) -> str:
        """Redis's URL; with Sentinels, only its database counts (see :attr:`redis_env`)."""
        redis = self.redis_ha or self.redis
        assert redis is not None, "the stack is not started"
        return redis.url

    @property
    def redis_env(self) -> dict[str, str]:
        """The Redis settings of every process."""
        env = {"NLP_REDIS_URL": self.redis_url}
        if self.redis_ha is not None:
            env["NLP_REDIS_SENTINELS"] = self.redis_ha.sentinel_addresses
            env["NLP_REDIS_MASTER_NAME"] = self.redis_ha.name
            # Hand-offs and results wait for the replica (what a failover cannot lose).
            env["NLP_REDIS_WAIT_REPLICAS"] = str(self.redis_ha.replicas)
        return env

    @property
    def service_env(self) -> dict[str, str]:
        """Environment every service process gets (also handy for in-process clients)."""
        return {
            "NLP_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            **self.redis_env,
            "NLP_NAMESPACE": self.namespace,
            "NLP_HOST": "127.0.0.1",
            "NLP_PORT": str(self.gateway_port),
            "PYTHONUNBUFFERED": "1",
            # A development stack: no API keys (the gateway says so loudly). Pass
            # NLP_AUTH_MODE=keys and NLP_AUTH_KEYS_FILE in ``env`` for a secured one.
            "NLP_AUTH_MODE": "dev",
            **(self.zipkin.exporter_env if self.zipkin is not None else {}),
            **self.env,
        }

    @property
    def kafka_nodes(self) -> list[KafkaBroker]:
        """The broker, or every node of the cluster."""
        if self.kafka_cluster is not None:
            return list(self.kafka_cluster.brokers)
        return [self.kafka] if self.kafka is not None else []

    @property
    def redis_processes(self) -> list[RedisServer | RedisSentinel]:
        """The Redis server, or the servers and Sentinels."""
        if self.redis_ha is not None:
            return [*self.redis_ha.servers, *self.redis_ha.watchers]
        return [self.redis] if self.redis is not None else []

    def settings(self) -> ServiceSettings:
        """Settings pointing at this stack, for clients built in the calling process."""
        return ServiceSettings(
            kafka_bootstrap=self.kafka_bootstrap,
            redis_url=self.redis_url,
            redis_sentinels=self.redis_ha.sentinel_addresses if self.redis_ha else "",
            redis_master_name=self.redis_ha.name if self.redis_ha else "nlp",
            namespace=self.namespace,
        )

    def start(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="nlp-stack-"))
            self._own_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_port = self.gateway_port or free_port()
        self.http_port = self.http_port or free_port()
        ensure_jars()
        kafka: KafkaBroker | KafkaCluster
        redis: RedisServer | RedisHA
        if self.kafka_brokers > 1:
            kafka = self.kafka_cluster = KafkaCluster(self.data_dir / "kafka", self.kafka_brokers)
        else:
            kafka = self.kafka = KafkaBroker(self.data_dir / "kafka")
        if self.redis_sentinel:
            redis = self.redis_ha = RedisHA(self.data_dir / "redis")
        else:
            redis = self.redis = RedisServer(self.data_dir / "redis")
        try:
            if self.observe:
                # First: the services export their spans to it from their start.
                self.zipkin = Zipkin(self.data_dir / "zipkin")
                self.zipkin.start()
            kafka.start()
            redis.start()
            redis.wait_ready()
            kafka.wait_ready()
            if self.zipkin is not None:
                self.zipkin.wait_ready()
            ensure_topics(self.settings(), replication=self.kafka_brokers)
            replicas = {**DEFAULT_REPLICAS, **self.replicas}
            for kind in self.kinds:
                for replica in range(1, replicas.get(kind, 1) + 1):
                    name = worker_name(kind, replica)
                    self._add(name, f"services.{kind}.worker", f"{kind}-worker")
                    self.services[name].env.update(self.worker_env.get(kind, {}))
                self._add(f"{kind}-intake", f"services.{kind}.intake", f"{kind}-intake")
            self._add("gateway", "services.gateway", "gateway")
            if "generation" in self.kinds:
                self._add("http-gateway", "services.http_gateway", "http-gateway")
                self.services["http-gateway"].env.update(
                    {
                        "NLP_HTTP_HOST": "127.0.0.1",
                        "NLP_HTTP_PORT": str(self.http_port),
                        # Files of the Batch API live with the stack's other data.
                        "NLP_FILES_DIR": str(self.data_dir / "files"),
                        **self.env,
                    }
                )
            for service in self.services.values():
                service.start()
            for service in self.services.values():
                service.wait_ready(self.ready_timeout)
            self._wait_serving()
            if self.observe:
                self.prometheus = Prometheus(self.data_dir / "prometheus", self.scrape_targets())
                self.prometheus.start()
                self.prometheus.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _add(self, name: str, module: str, role: str) -> None:
        """Add a service process; replicas share their ``role`` as their trace service name."""
        assert self.data_dir is not None
        port = free_port()
        env = {
            **self.service_env,
            "OTEL_SERVICE_NAME": f"nlp-{role}",
            "NLP_METRICS_HOST": "127.0.0.1",
            "NLP_METRICS_PORT": str(port),
        }
        self.services[name] = Service(name, module, env, self.data_dir, metrics_port=port)

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Each service's Prometheus endpoint."""
        return {name: service.metrics_url for name, service in self.services.items()}

    def _wait_serving(self, timeout: float = 30.0) -> None:
        if self.env.get("NLP_TLS_CERT_FILE"):
            # TLS only: the gateway's ready file says it serves; its health loop then
            # reports Kafka and Redis (clients here hold no CA to check that over gRPC).
            return
        with grpc.insecure_channel(self.gateway_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway did not report SERVING")
                time.sleep(0.1)

    def restart(self, name: str) -> None:
        """Start a (stopped or killed) service again and wait until it is ready."""
        service = self.services[name]
        service.stop()
        service.start()
        service.wait_ready(self.ready_timeout)

    def scrape_targets(self) -> dict[str, list[str]]:
        """Each process role's ``/metrics`` URLs (its replicas), as Prometheus jobs."""
        jobs: dict[str, list[str]] = {}
        for service in self.services.values():
            role = service.env["OTEL_SERVICE_NAME"].removeprefix("nlp-")
            jobs.setdefault(role, []).append(service.metrics_url)
        return jobs

    def stop(self) -> None:
        # Reverse order: stop taking work before the things it needs go away.
        if self.prometheus is not None:
            self.prometheus.stop()
        for service in reversed(list(self.services.values())):
            service.stop()
        for dependency in (self.redis, self.redis_ha, self.kafka, self.kafka_cluster, self.zipkin):
            if dependency is not None:
                dependency.stop()
        if self._own_dir and not self.keep_data and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


# --- command line -----------------------------------------------------------------------


def _write_state(path: Path, stack: LocalStack, children: Iterable[Child]) -> None:
    state = {
        "pid": os.getpid(),
        "gateway": stack.gateway_target,
        "http": stack.http_url,
        "data_dir": str(stack.data_dir),
        "kinds": list(stack.kinds),
        # Refreshed on every restart: where to find (or kill) each process.
        "pids": {child.name: child.pid for child in children},
        "metrics": stack.metrics_urls,
        **(
            {"zipkin": f"{stack.zipkin.url}/zipkin/", "prometheus": stack.prometheus.url}
            if stack.zipkin is not None and stack.prometheus is not None
            else {}
        ),
        **stack.service_env,
    }
    # Replaced whole: `up` and users read it while a restart rewrites it.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _run(args: argparse.Namespace) -> int:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stack = LocalStack(
        data_dir=Path(args.data_dir) if args.data_dir else None,
        kinds=args.kinds or AVAILABLE_KINDS,
        gateway_port=args.gateway_port,
        http_port=args.http_port,
        keep_data=args.keep_data,
        replicas=args.replicas,
        kafka_brokers=args.kafka_brokers,
        redis_sentinel=args.redis_sentinel,
        worker_env={kind: {"NLP_MODELS": models} for kind, models, _ in args.models},
        observe=args.observe,
    )
    print(f"starting Kafka, Redis, the gateway and workers for: {', '.join(stack.kinds)}")
    started = time.monotonic()
    stack.start()
    try:
        print(f"stack ready in {time.monotonic() - started:.1f}s; data in {stack.data_dir}")
        print(f"  Kafka   {stack.kafka_bootstrap}")
        if stack.redis_ha is not None:
            sentinels = stack.redis_ha.sentinel_addresses
            print(f"  Redis   primary {stack.redis_ha.name!r} via Sentinels {sentinels}")
        else:
            print(f"  Redis   {stack.redis_url}")
        print(f"  gateway {stack.gateway_target} (gRPC; health + reflection on)")
        if stack.zipkin is not None and stack.prometheus is not None:
            print(f"  traces  {stack.zipkin.url}/zipkin/ (Zipkin UI)")
            print(f"  metrics {stack.prometheus.url} (Prometheus, every process scraped)")
        if stack.http_url:
            print(f"  openai  {stack.http_url} (HTTP, OpenAI-compatible: base_url for the SDK)")
        if stack.service_env.get("NLP_AUTH_MODE") == "dev":
            print("  auth    DEVELOPMENT MODE: no API keys, no tenants, no quotas")
        for name, url in stack.metrics_urls.items():
            print(f"  metrics {url} ({name})")
        children = stack_children(stack.kafka_nodes, stack.redis_processes, stack.services.values())

        def _state_changed() -> None:
            if args.state_file:
                _write_state(Path(args.state_file), stack, children)

        _state_changed()
        if args.demo:
            from shared.client.cli import demo

            demo(stack.gateway_target, stack.kinds)
        supervisor = Supervisor(
            children, log=lambda line: print(line, flush=True), on_change=_state_changed
        )
        print(
            f"serving on {stack.gateway_target}; processes that exit are restarted; "
            "Ctrl-C stops everything",
            flush=True,
        )
        while not stop:
            if not supervisor.poll():
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("stopping…", flush=True)
        stack.stop()
        print("stopped", flush=True)


def _up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file, log_file = state_dir / "stack.json", state_dir / "stack.log"
    if state_file.exists():
        pid = json.loads(state_file.read_text())["pid"]
        if _alive(pid):
            print(f"already up (pid {pid}); `make down` first")
            return 1
        state_file.unlink()
    argv = [sys.executable, "-m", "deploy.local.stack", "run", "--state-file", str(state_file)]
    argv += ["--gateway-port", str(args.gateway_port), "--http-port", str(args.http_port)]
    if args.replicas:
        argv += ["--replicas", args.replicas]
    if args.kinds:
        argv += ["--kinds", ",".join(args.kinds)]
    argv += ["--kafka-brokers", str(args.kafka_brokers)]
    if args.redis_sentinel:
        argv.append("--redis-sentinel")
    if args.observe:
        argv.append("--observe")
    for kind, _, file in args.models:
        argv += ["--models", f"{kind}={file}"]
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + args.timeout
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"stack failed to start; see {log_file}:\n{log_file.read_text()[-3000:]}")
            proc.kill()
            return 1
        time.sleep(0.2)
    state = json.loads(state_file.read_text())
    http = f"; OpenAI API on {state['http']}" if state.get("http") else ""
    print(f"stack up (pid {state['pid']}); gateway on {state['gateway']}{http}; logs: {log_file}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _down(args: argparse.Namespace) -> int:
    state_file = Path(args.state_dir) / "stack.json"
    if not state_file.exists():
        print("not up")
        return 0
    state = json.loads(state_file.read_text())
    pid = int(state["pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            # Its processes run in process groups of their own, which a killed runner
            # leaves behind.
            for child_pid in state.get("pids", {}).values():
                if child_pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(child_pid), signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    print("stack down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds_help = f"comma-separated subset of: {','.join(AVAILABLE_KINDS)} (default: all)"
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the stack in the foreground until Ctrl-C")
    run.add_argument("--gateway-port", type=int, default=50051)
    run.add_argument("--http-port", type=int, default=8000, help="the OpenAI-compatible API")
    run.add_argument("--data-dir", help="default: a fresh temporary directory")
    run.add_argument("--keep-data", action="store_true")
    run.add_argument("--demo", action="store_true", help="send one request per kind")
    run.add_argument(
        "--replicas",
        type=_arg_type(parse_replicas),
        default={},
        help=f"worker processes per kind, e.g. ner=2 (defaults: {DEFAULT_REPLICAS})",
    )
    run.add_argument("--kinds", type=_arg_type(parse_kinds), help=kinds_help)
    run.add_argument("--state-file", help=argparse.SUPPRESS)
    up = sub.add_parser("up", help="start the stack in the background")
    up.add_argument("--gateway-port", type=int, default=50051)
    up.add_argument("--http-port", type=int, default=8000, help="the OpenAI-compatible API")
    up.add_argument("--state-dir", default=".run")
    up.add_argument("--timeout", type=float, default=300)
    up.add_argument("--replicas", default="", help="as for run, e.g. ner=2")
    up.add_argument("--kinds", type=_arg_type(parse_kinds), help=kinds_help)
    for command in (run, up):
        command.add_argument(
            "--kafka-brokers",
            type=int,
            choices=(1, 3),
            default=1,
            help="1 broker, or a KRaft cluster of 3 (topics at replication 3)",
        )
        command.add_argument(
            "--redis-sentinel",
            action="store_true",
            help="Redis as a primary, a replica and three Sentinels",
        )
        command.add_argument(
            "--observe",
            action="store_true",
            help="also Prometheus (scraping every process) and Zipkin (traces, with its UI)",
        )
        command.add_argument(
            "--models",
            type=_arg_type(parse_models),
            action="append",
            default=[],
            metavar="KIND=FILE",
            help="the models one kind's workers serve: NLP_MODELS as a JSON file "
            "(repeat per kind; docs/models.md)",
        )
    down = sub.add_parser("down", help="stop a stack started with up")
    down.add_argument("--state-dir", default=".run")
    args = parser.parse_args(argv)
    handler = {"run": _run, "up": _up, "down": _down}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
