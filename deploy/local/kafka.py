"""Run a real single-node Apache Kafka broker (KRaft, combined broker+controller) locally.

No Docker: the broker jars come from Maven Central via ``deploy/kafka/pom.xml`` and are
cached under ``~/.cache/nlp-platform/kafka-<version>/libs``. Meant for integration tests
and a local dev stack, always bound to 127.0.0.1.

CLI::

    python -m deploy.local.kafka fetch              # download jars, print the libs dir
    python -m deploy.local.kafka run --data-dir D   # foreground broker until Ctrl-C
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.lifecycle import Started

POM_PATH = Path(__file__).resolve().parents[1] / "kafka" / "pom.xml"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = ".complete"
_NODE_ID = 1


def _read_kafka_version(pom: Path = POM_PATH) -> str:
    """Return ``<properties><kafka.version>`` from the POM (the one source of truth)."""
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{pom} has no <properties><kafka.version>")
    return (node.text or "").strip()


KAFKA_VERSION: str = _read_kafka_version()


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Default cache dir for one Kafka version's jars (outside the repo, survives clones)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nlp-platform" / f"kafka-{version}"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _pom_digest() -> str:
    # Stored in the marker so an edited POM (e.g. an added jar) triggers a re-fetch even
    # when the Kafka version, and so the cache dir, stays the same.
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()


def ensure_jars(home: Path | None = None) -> Path:
    """Make sure the broker jars are in ``<home>/libs`` and return that directory.

    The marker file is written last, inside a temp dir that is then renamed into place,
    so a killed download never looks complete.
    """
    home = home or kafka_home()
    libs = home / "libs"
    digest = _pom_digest()
    marker = libs / _MARKER
    if marker.is_file() and marker.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "mvn not found on PATH; install Maven and Java 17 (apt-get install maven)"
        )
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=home))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
    try:
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            raise RuntimeError(
                f"mvn failed (exit {proc.returncode}) fetching Kafka {KAFKA_VERSION} jars:\n"
                + _tail(proc.stdout + proc.stderr)
            )
        (tmp / _MARKER).write_text(digest + "\n")
        if marker.is_file() and marker.read_text().strip() == digest:
            return libs  # a concurrent ensure_jars() finished first; don't pull it away
        if libs.exists():
            # Stale or partial libs dir: move it aside first (rename is atomic, rmtree isn't).
            old = Path(tempfile.mkdtemp(prefix=".libs-old-", dir=home))
            libs.rename(old / "libs")
            shutil.rmtree(old, ignore_errors=True)
        for stale in home.glob("broker-*.jsa"):
            stale.unlink(missing_ok=True)  # CDS archives only match the jars they came from
        try:
            tmp.rename(libs)
        except OSError:
            # A concurrent ensure_jars() won the race; use its result if complete.
            if not (marker.is_file() and marker.read_text().strip() == digest):
                raise
        return libs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1 (racy by nature, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found (need Java 17+): set JAVA_HOME or put java on PATH")
    return java


def _cds_archive(libs: Path, java: str) -> Path:
    """CDS archive path for these jars and this JVM binary (a JVM upgrade gets a new one)."""
    st = Path(java).resolve().stat()
    key = hashlib.sha256(f"{Path(java).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return libs.parent / f"broker-{key.hexdigest()[:12]}.jsa"


def new_cluster_id() -> str:
    """Kafka ``Uuid`` string: 16 random bytes, URL-safe base64 without padding.

    Generated here rather than with ``StorageTool random-uuid`` to save a JVM start.
    Kafka itself never hands out ids starting with '-' (they break CLI parsing).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


_LOG4J2 = """\
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook; log4j's hook would close the
# appenders first and cut the end of the log off.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# Per-request and authorizer logs are noise for a local broker.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

# GC settings as in Kafka's kafka-run-class.sh.
_JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


@dataclass
class KafkaBroker(Started):
    """One local KRaft broker+controller process; ``data_dir`` holds config, data and log."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "768m"
    log_path: Path | None = None
    home: Path | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    jvm_opts: list[str] = field(default_factory=list)
    # One node of a cluster (KafkaCluster sets these): its id, every controller voter
    # (``id@host:port,…``; None: this node alone), the cluster's id (None: a new one at
    # the first format) and the replication of topics and internal topics.
    node_id: int = _NODE_ID
    voters: str | None = None
    cluster_id: str | None = None
    replication: int = 1
    # Class-data-sharing archive of the broker's classes, dumped by the first clean stop and
    # reused after: cuts JVM start by ~1.3 s (3.5 s -> 2.2 s on 2 cores), costs ~3 s once.
    cds: bool = True
    startup_seconds: float | None = field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _started_at: float = field(default=0.0, init=False, repr=False)
    _cds_dump: Path | None = field(default=None, init=False, repr=False)
    _cds_target: Path = field(default=Path(), init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the broker's stdout/stderr (its whole log) goes."""
        return self.log_path or self.data_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM, if started."""
        return self._proc.pid if self._proc else None

    @property
    def _log_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (negative: the signal); None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def server_properties(self) -> dict[str, str]:
        """The broker config written to ``server.properties``."""
        rf = str(self.replication)
        # A write is acknowledged once this many replicas have it (acks=all): one less
        # than the replicas, so that one broker may be down.
        isr = str(max(1, self.replication - 1))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            # Static quorum, so StorageTool format runs without --standalone.
            "controller.quorum.voters": (
                self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}"
            ),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._log_dir),
            "num.partitions": "3",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "auto.create.topics.enable": "false",
            # Internal topics replicated as the task topics are; few partitions, since
            # each one costs startup/first-use time and these brokers gain nothing from 50.
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Fewer threads than the defaults: the machines have 2 cores.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            # The controller appends a no-op record to the metadata log this often so that
            # brokers can tell it is alive; one combined node has no one to tell. 500 ms (the
            # default) kept an idle broker at 2.9 % of a core, 10 s at 1.7 %.
            "metadata.max.idle.interval.ms": "10000",
        }
        props.update(self.extra_config)
        return props

    def _write_configs(self) -> tuple[Path, Path]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        return props, log4j

    def start(self) -> None:
        """Write config, format storage (if new) and launch the broker in its own process group."""
        if self.running:
            raise RuntimeError(f"broker already running (pid {self.pid})")
        libs = ensure_jars(self.home)
        props, log4j = self._write_configs()
        java = _java()
        base = [java, f"-Dlog4j2.configurationFile={log4j}", "-cp", str(libs / "*")]
        # The archive is only valid for this exact classpath and JVM; the JVM checks that
        # itself and just warns and runs without it on a mismatch.
        archive = _cds_archive(libs, java)
        self._cds_dump = None
        if self.cds and archive.is_file():
            base.append(f"-XX:SharedArchiveFile={archive}")
        # Format with a fresh cluster id, but only a new data_dir: an existing one keeps its
        # cluster id and topics across restarts of `run --data-dir` (StorageTool refuses to
        # re-format with another id, even with --ignore-formatted).
        if not (self._log_dir / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    *base,
                    "-Xmx256m",
                    "-XX:TieredStopAtLevel=1",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id or new_cluster_id(),
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            if fmt.returncode != 0:
                raise RuntimeError(
                    f"kafka StorageTool format failed (exit {fmt.returncode}):\n"
                    + _tail(fmt.stdout + fmt.stderr)
                )
        cmd = [
            *base,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            *_JVM_FLAGS,
            *self.jvm_opts,
            *self._cds_dump_opts(archive),
            "kafka.Kafka",
            str(props),
        ]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._started_at = time.monotonic()
            # Own session/process group: Ctrl-C in a terminal or pytest doesn't hit the
            # JVM directly, and stop() can signal the whole group.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Don't leave an orphan JVM behind if the caller forgets stop() (not SIGKILL-proof).
        atexit.register(self.stop)

    def _cds_dump_opts(self, archive: Path) -> list[str]:
        if not self.cds or archive.is_file():
            return []
        # Dump to a private file, renamed into place by stop(): concurrent brokers may
        # each dump, and a half-written archive must never be picked up.
        self._cds_target = archive
        self._cds_dump = archive.with_name(f".{archive.stem}-{os.getpid()}-{id(self)}.jsa")
        return [f"-XX:ArchiveClassesAtExit={self._cds_dump}"]

    def _finish_cds_dump(self, clean_exit: bool) -> None:
        dump, self._cds_dump = self._cds_dump, None
        if dump is None:
            return
        if clean_exit and dump.is_file() and dump.stat().st_size > 0:
            os.replace(dump, self._cds_target)
        else:
            dump.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """ERROR lines plus the last lines of the broker log, for error messages.

        The cause of a failed start is usually buried above a long shutdown sequence,
        so the ERROR lines are pulled out first.
        """
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        errors = [ln for ln in text.splitlines() if " ERROR " in ln or ln.startswith("Caused by")]
        head = "\n".join(errors[:15])
        return (f"{head}\n...\n" if head else "") + _tail(text, lines)

    def _check_alive(self) -> None:
        if self._proc is None:
            raise RuntimeError("broker not started")
        rc = self._proc.poll()
        if rc is not None:
            raise RuntimeError(f"kafka broker exited with {rc}; log tail:\n{self.log_tail()}")

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _metadata_ready(self, timeout_s: float) -> bool:
        # Imported lazily (and untyped via importlib): `fetch` and `start` need no client lib.
        admin_mod: Any = importlib.import_module("kafka.admin")
        ms = max(500, int(timeout_s * 1000))
        admin = admin_mod.KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
            client_id="deploy-local-readiness",
        )
        try:
            brokers = admin.describe_cluster().get("brokers", [])
            # A broker is only usable (topic creation, produce) once the controller
            # has unfenced it.
            return any(
                b.get("broker_id") == self.node_id and not b.get("is_fenced", False)
                for b in brokers
            )
        finally:
            admin.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until a kafka-python client sees this broker, unfenced, in cluster metadata."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"kafka broker not ready after {timeout}s; log tail:\n{self.log_tail()}"
                )
            # Cheap TCP probe first so the client library doesn't log connection errors.
            if self._port_open():
                with contextlib.suppress(Exception):
                    if self._metadata_ready(min(remaining, 5.0)):
                        self.startup_seconds = time.monotonic() - self._started_at
                        return
            time.sleep(0.2)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group (clean shutdown), SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The JVM exits 143 (128 + SIGTERM) after its shutdown hooks ran; a CDS dump is
        # whole only after such a clean exit, never after SIGKILL.
        self._finish_cds_dump(proc.returncode in (0, 128 + signal.SIGTERM))


@dataclass
class KafkaCluster(Started):
    """``size`` local KRaft nodes (each broker and controller, the controllers one quorum)
    on 127.0.0.1: topics at replication ``size`` with ``min.insync.replicas`` one less,
    internal topics likewise. ``data_dir/node-<id>`` holds each node; the cluster id is
    kept in ``data_dir/cluster.id``, so a restarted node (or ``run --data-dir``) rejoins."""

    data_dir: Path
    size: int = 3
    heap: str = "512m"
    home: Path | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    brokers: list[KafkaBroker] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster has at least one node")
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        voters = ",".join(
            f"{i}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports, 1)
        )
        self.brokers = [
            KafkaBroker(
                self.data_dir / f"node-{i}",
                port=port,
                controller_port=controller,
                heap=self.heap,
                home=self.home,
                extra_config=dict(self.extra_config),
                node_id=i,
                voters=voters,
                replication=self.size,
            )
            for i, (port, controller) in enumerate(ports, 1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's ``host:port``, comma-separated (a client needs one of them up)."""
        return ",".join(broker.bootstrap for broker in self.brokers)

    def node(self, node_id: int) -> KafkaBroker:
        return self.brokers[node_id - 1]

    def _cluster_id(self) -> str:
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def start(self) -> None:
        cluster_id = self._cluster_id()
        for broker in self.brokers:
            broker.cluster_id = cluster_id
            broker.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Every node is up and unfenced (the quorum has a leader)."""
        deadline = time.monotonic() + timeout
        for broker in self.brokers:
            broker.wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 20) -> None:
        for broker in self.brokers:
            broker.stop(timeout)

    @property
    def running(self) -> bool:
        return all(broker.running for broker in self.brokers)

    def partition_leaders(self, topic: str) -> dict[int, int]:
        """Partition → the node id leading it now."""
        admin_mod: Any = importlib.import_module("kafka.admin")
        admin = admin_mod.KafkaAdminClient(
            bootstrap_servers=self.bootstrap.split(","), client_id="deploy-local-leaders"
        )
        try:
            (described,) = admin.describe_topics([topic])
            # Metadata's field names (kafka-python >= 3: partition_index, leader_id).
            return {
                p.get("partition_index", p.get("partition")): p.get("leader_id", p.get("leader"))
                for p in described["partitions"]
            }
        finally:
            admin.close()

    def active_controller(self) -> int:
        """The node id of the quorum's leader (the active controller), as the running
        nodes' Raft logs last reported it (the highest epoch wins)."""
        best: tuple[int, int] | None = None
        for broker in self.brokers:
            if not broker.running:
                continue
            for line in reversed(broker.log_file.read_text(errors="replace").splitlines()):
                found = _RAFT_STATE.search(line)
                if found is None:
                    continue
                epoch = int(found["lepoch"] or found["fepoch"])
                leader = int(found["local"] or found["leader"])
                if best is None or epoch > best[0]:
                    best = (epoch, leader)
                break
        if best is None:
            raise RuntimeError("no running node has reported the quorum's leader yet")
        return best[1]


# "Completed transition to LeaderState(localId=1, epoch=3, …)" or "…FollowerState(…,
# epoch=3, leader=1, …)" in a node's log (Kafka's RaftManager).
_RAFT_STATE = re.compile(
    r"Completed transition to (?:LeaderState\(localId=(?P<local>\d+), epoch=(?P<lepoch>\d+)"
    r"|FollowerState\(fetchTimeoutMs=\d+, epoch=(?P<fepoch>\d+), leader=(?P<leader>\d+))"
)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_termination() -> None:
    """Turn a SIGTERM or SIGHUP of this process into KeyboardInterrupt (call it from the
    main thread of whatever starts local processes).

    Local brokers, Redis servers and services run in process groups of their own, so a
    terminal's Ctrl-C reaches only their runner, which stops them in order. A SIGTERM
    (``kill``, a CI timeout) or SIGHUP (a closed terminal) would end the runner alone and
    leave them all running, a vLLM engine included; as KeyboardInterrupt it unwinds
    through their ``stop()`` as Ctrl-C does.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``fetch`` / ``run``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", type=Path, default=None, help="jar cache dir")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the broker jars and print the libs dir")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--data-dir", type=Path, required=True)
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--controller-port", type=int, default=0, help="0: pick a free one")
    run.add_argument("--heap", default="768m")
    args = parser.parse_args(argv)

    if args.cmd == "fetch":
        print(ensure_jars(args.home))
        return 0
    # The JVM is in its own process group: the finally below stops it on SIGTERM/SIGHUP too.
    interrupt_on_termination()
    broker = KafkaBroker(
        data_dir=args.data_dir.resolve(),
        port=args.port,
        controller_port=args.controller_port or free_port(),
        heap=args.heap,
        home=args.home,
    )
    broker.start()
    try:
        broker.wait_ready()
        print(
            f"kafka {KAFKA_VERSION} ready on {broker.bootstrap} in "
            f"{broker.startup_seconds:.1f}s (pid {broker.pid}); log: {broker.log_file}",
            flush=True,
        )
        while broker.running:
            time.sleep(0.5)
        print(f"broker exited; log tail:\n{broker.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
