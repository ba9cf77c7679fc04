"""Topic, consumer-group, queue, header and Redis key names: defined here and nowhere else.

A non-empty namespace prefixes every name so that several stacks (a developer's
stack and a test run, say) can share one Kafka broker and one Redis.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from nlp.v1 import common_pb2

# Kind names as they appear in topics, queues, CLI arguments and the envelope oneof.
KINDS_BY_NAME: dict[str, common_pb2.Kind] = {
    "generation": common_pb2.KIND_GENERATION,
    "classification": common_pb2.KIND_CLASSIFICATION,
    "ner": common_pb2.KIND_NER,
    "summarization": common_pb2.KIND_SUMMARIZATION,
}
KIND_NAMES: dict[int, str] = {int(kind): name for name, kind in KINDS_BY_NAME.items()}
ALL_KINDS: tuple[str, ...] = tuple(KIND_NAMES.values())

# Lane names as they appear in topics, queues, metrics labels and CLI arguments, highest
# first: every hop that orders work serves them in this order (docs/lanes.md).
LANES_BY_NAME: dict[str, common_pb2.Lane] = {
    "interactive": common_pb2.LANE_INTERACTIVE,
    "standard": common_pb2.LANE_STANDARD,
    "batch": common_pb2.LANE_BATCH,
}
LANE_NAMES: dict[int, str] = {int(lane): name for name, lane in LANES_BY_NAME.items()}
ALL_LANES: tuple[str, ...] = tuple(LANE_NAMES.values())

# Kafka message headers.
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_TASK_ID = "nlp-task-id"
HEADER_KIND = "nlp-kind"
HEADER_BATCH_ID = "nlp-batch-id"
HEADER_DLQ_REASON = "nlp-dlq-reason"
HEADER_DLQ_STAGE = "nlp-dlq-stage"
HEADER_DLQ_SOURCE_TOPIC = "nlp-dlq-source-topic"
HEADER_DLQ_SOURCE_PARTITION = "nlp-dlq-source-partition"
HEADER_DLQ_SOURCE_OFFSET = "nlp-dlq-source-offset"
# On a record replayed from the dead letters (and on its dead letters): how often its
# task was replayed. Not an ``nlp-dlq-`` header: a dead letter keeps it.
HEADER_REPLAY_COUNT = "nlp-replay-count"

# gRPC metadata a client may send: the idempotency key of a synchronous RPC (Tasks.Submit
# has its field).
METADATA_IDEMPOTENCY_KEY = "idempotency-key"

# Celery task keyword arguments and headers set by the intake. One Celery message
# carries a bundle of envelopes (base64 strings) and, in a header, each one's trace
# context (a list aligned with the envelopes).
CELERY_KWARG_ENVELOPES = "envelopes"
CELERY_KWARG_HANDED_AT = "handed_at"
CELERY_HEADER_TRACE = "nlp_trace"

_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# Tenant names end up in Redis keys: letters, digits, '.', '_' and '-'.
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def kind_name(kind: int) -> str:
    """Name of a Kind enum value; ValueError for UNSPECIFIED or unknown values."""
    try:
        return KIND_NAMES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind}") from None


def kind_value(name: str) -> common_pb2.Kind:
    """Kind enum value for a kind name; ValueError listing the valid names otherwise."""
    try:
        return KINDS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown kind {name!r}; expected one of {', '.join(ALL_KINDS)}") from None


def lane_name(lane: int) -> str:
    """Name of a Lane enum value; ValueError for UNSPECIFIED or unknown values."""
    try:
        return LANE_NAMES[lane]
    except KeyError:
        raise ValueError(f"unknown lane {lane}") from None


def lane_value(name: str) -> common_pb2.Lane:
    """Lane enum value for a lane name; ValueError listing the valid names otherwise."""
    try:
        return LANES_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown lane {name!r}; expected one of {', '.join(ALL_LANES)}") from None


def lane_rank(lane: str) -> int:
    """0 for the highest lane (interactive), then 1, 2: the order work is served in."""
    return ALL_LANES.index(lane)


@dataclass(frozen=True)
class Names:
    """All externally visible names of one deployment (one namespace)."""

    namespace: str = ""

    def __post_init__(self) -> None:
        if self.namespace and not _NAMESPACE_RE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must match {_NAMESPACE_RE.pattern} (or be empty)"
            )

    def _kafka(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    def _redis(self, name: str) -> str:
        return f"{self.namespace}:{name}" if self.namespace else name

    def task_topic(self, kind: str, lane: str) -> str:
        """The topic of ``kind``'s tasks in ``lane`` (direct producers: the batch lane)."""
        if lane not in LANES_BY_NAME:
            raise ValueError(f"unknown lane {lane!r}")
        return self._kafka(f"nlp.tasks.{kind}.{lane}")

    def task_topics(self, kind: str) -> dict[str, str]:
        """Every lane's task topic of ``kind``, by lane, highest lane first."""
        return {lane: self.task_topic(kind, lane) for lane in ALL_LANES}

    @property
    def dead_letter_topic(self) -> str:
        return self._kafka("nlp.dead-letter")

    @property
    def results_topic(self) -> str:
        return self._kafka("nlp.results")

    def bench_topic(self, name: str) -> str:
        """A benchmark's scratch topic (never read by the services)."""
        return self._kafka(f"nlp.bench.{name}")

    def consumer_group(self, kind: str) -> str:
        return self._kafka(f"nlp.{kind}")

    def celery_queue(self, kind: str, lane: str) -> str:
        """The Celery (Redis list) queue of ``kind``'s tasks in ``lane``."""
        if lane not in LANES_BY_NAME:
            raise ValueError(f"unknown lane {lane!r}")
        return self._kafka(f"{kind}.{lane}")

    def celery_queues(self, kind: str) -> dict[str, str]:
        """Every lane's Celery queue of ``kind``, by lane, highest lane first."""
        return {lane: self.celery_queue(kind, lane) for lane in ALL_LANES}

    @staticmethod
    def celery_task(kind: str) -> str:
        """Celery task name; code names are not namespaced, queues are."""
        return f"nlp.{kind}.run"

    def source_of(self, name: str) -> tuple[str, str] | None:
        """(kind, lane) of a task topic or Celery queue name; None for any other name."""
        for kind in ALL_KINDS:
            for lane in ALL_LANES:
                if name in (self.task_topic(kind, lane), self.celery_queue(kind, lane)):
                    return kind, lane
        return None

    def result_key(self, task_id: str) -> str:
        return self._redis(f"nlp:result:{task_id}")

    def state_key(self, task_id: str) -> str:
        return self._redis(f"nlp:state:{task_id}")

    def inflight_key(self, kind: str) -> str:
        """Sorted set of handed-off, unfinished task ids of ``kind``, scored by last sign of life."""
        return self._redis(f"nlp:inflight:{kind}")

    def models_key(self, kind: str) -> str:
        """Hash of the models the workers of ``kind`` serve (name → JSON descriptor)."""
        return self._redis(f"nlp:models:{kind}")

    def _batch(self, batch_id: str, tenant: str) -> str:
        # Batch ids are chosen by clients: each tenant has its own space of them.
        return f"nlp:batch:{tenant}:{batch_id}" if tenant else f"nlp:batch:{batch_id}"

    def batch_key(self, batch_id: str, tenant: str = "") -> str:
        """Hash of a batch's counts by state and its sealed flag."""
        return self._redis(self._batch(batch_id, tenant))

    def batch_results_key(self, batch_id: str, tenant: str = "") -> str:
        """Stream of a batch's finished task ids in completion order (the results cursor)."""
        return self._redis(f"{self._batch(batch_id, tenant)}:results")

    def batch_running_key(self, batch_id: str, tenant: str = "") -> str:
        """Set of a batch's task ids that are running now."""
        return self._redis(f"{self._batch(batch_id, tenant)}:running")

    def tenant_inflight_key(self, tenant: str) -> str:
        """Sorted set of a tenant's unfinished task ids, scored by their deadline (the
        concurrency quota; entries past their deadline no longer count)."""
        return self._redis(f"nlp:tenant:{tenant}:inflight")

    def tenant_rate_key(self, tenant: str) -> str:
        """Token bucket of a tenant's request rate (shared by every gateway replica)."""
        return self._redis(f"nlp:tenant:{tenant}:rate")

    def idempotency_key(self, tenant: str, key: str) -> str:
        """Hash of a tenant's idempotency key: the task it made and that request's
        fingerprint. Keys are chosen by clients: a digest of tenant and key, so that each
        tenant has its own space of them."""
        digest = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:40]
        return self._redis(f"nlp:idem:{digest}")

    def replays_key(self, task_id: str) -> str:
        """How often an operator replayed the task from the dead letters (the bound)."""
        return self._redis(f"nlp:replays:{task_id}")

    def token_stream_key(self, task_id: str) -> str:
        """Redis Stream of a generation task's token deltas (then one end entry)."""
        return self._redis(f"nlp:tokens:{task_id}")

    def token_hub_wake_key(self, hub_id: str) -> str:
        """Redis Stream a token-stream hub reads along with its streams: an entry added
        here ends its blocked read, so that it starts following a new stream at once."""
        return self._redis(f"nlp:tokens-hub:{hub_id}")

    # --- the HTTP front door's files and batches (OpenAI's Files and Batch APIs) ---

    def file_key(self, tenant: str, file_id: str) -> str:
        """Hash of one uploaded or produced file's metadata (its bytes are on disk)."""
        return self._redis(f"nlp:oai:file:{tenant}:{file_id}")

    def files_key(self, tenant: str) -> str:
        """Sorted set of a tenant's file ids by creation time (the listing)."""
        return self._redis(f"nlp:oai:files:{tenant}")

    def openai_batch_key(self, tenant: str, batch_id: str) -> str:
        """Hash of one OpenAI batch: its object's fields and its driver's checkpoint."""
        return self._redis(f"nlp:oai:batch:{tenant}:{batch_id}")

    def openai_batches_key(self, tenant: str) -> str:
        """Sorted set of a tenant's OpenAI batch ids by creation time (the listing)."""
        return self._redis(f"nlp:oai:batches:{tenant}")

    @property
    def openai_active_batches_key(self) -> str:
        """Set of the batches not yet ended (``tenant/batch id``): what the doors drive."""
        return self._redis("nlp:oai:batches-active")

    def openai_batch_lease_key(self, tenant: str, batch_id: str) -> str:
        """Which front door drives the batch now (expires unless renewed)."""
        return self._redis(f"nlp:oai:batch-lease:{tenant}:{batch_id}")

    def openai_batch_tasks_key(self, tenant: str, batch_id: str) -> str:
        """Set of the task ids a batch's lines became (what a cancel stops)."""
        return self._redis(f"nlp:oai:batch-tasks:{tenant}:{batch_id}")

    @property
    def durable_mark_key(self) -> str:
        """Written before a WAIT: once a replica has it, it has every earlier write too."""
        return self._redis("nlp:durable-mark")

    @property
    def done_channel(self) -> str:
        """Pub/sub channel that carries the id of every task that reached a terminal state."""
        return self._redis("nlp:done")
