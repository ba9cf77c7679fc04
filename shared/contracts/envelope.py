"""Task envelopes and results: construction, validation, encoding, timestamps.

Validation here is the single rule book: the gateway applies it to requests
(INVALID_ARGUMENT) and the intake to every envelope read from Kafka (dead letter).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Sequence

import jsonschema
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from nlp.v1 import (
    classification_pb2,
    common_pb2,
    generation_pb2,
    ner_pb2,
    summarization_pb2,
    tasks_pb2,
)
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.idempotency import key_problems
from shared.contracts.names import (
    KIND_NAMES,
    LANE_NAMES,
    LANES_BY_NAME,
    TENANT_RE,
    kind_name,
    kind_value,
)
from shared.contracts.settings import Limits

TERMINAL_STATUSES = frozenset(
    {
        common_pb2.TASK_STATUS_SUCCEEDED,
        common_pb2.TASK_STATUS_FAILED,
        common_pb2.TASK_STATUS_CANCELLED,
        common_pb2.TASK_STATUS_DEADLINE_EXCEEDED,
    }
)
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

AnyRequest = (
    generation_pb2.GenerateRequest
    | classification_pb2.ClassifyRequest
    | ner_pb2.NerRequest
    | summarization_pb2.SummarizeRequest
)


def new_task_id() -> str:
    return uuid.uuid4().hex


def valid_task_id(task_id: str) -> bool:
    return bool(_TASK_ID_RE.match(task_id))


def valid_batch_id(batch_id: str) -> bool:
    """1-64 of ``[A-Za-z0-9._-]``, starting with a letter or digit."""
    return bool(_BATCH_ID_RE.match(batch_id))


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


def request_of(envelope: tasks_pb2.TaskEnvelope) -> AnyRequest | None:
    """The typed request inside an envelope (the oneof field named after the kind)."""
    field = envelope.WhichOneof("request")
    return None if field is None else getattr(envelope, field)


def envelope_lane(envelope: tasks_pb2.TaskEnvelope) -> str:
    """The name of the lane ``envelope`` travels in; standard for one without a lane (the
    intake fills every lane in, so only an envelope stored before lanes existed)."""
    return LANE_NAMES.get(envelope.lane, "standard")


def make_envelope(
    kind: str,
    request: AnyRequest,
    *,
    deadline_s: float,
    task_id: str | None = None,
    tenant: str = "",
    lane: int = common_pb2.LANE_UNSPECIFIED,
    reply: tasks_pb2.ReplyOptions | None = None,
    batch_id: str = "",
    now: float | None = None,
) -> tasks_pb2.TaskEnvelope:
    """Build an envelope for ``request`` that must start within ``deadline_s`` seconds."""
    created = time.time() if now is None else now
    envelope = tasks_pb2.TaskEnvelope(
        task_id=task_id or new_task_id(),
        kind=kind_value(kind),
        tenant=tenant,
        created_at=timestamp(created),
        deadline=timestamp(created + deadline_s),
        lane=lane,  # type: ignore[arg-type]  # a Lane value
        model=request.model,
        batch_id=batch_id,
    )
    getattr(envelope, kind).CopyFrom(request)
    if reply is not None:
        envelope.reply.CopyFrom(reply)
    return envelope


def decode_envelope(data: bytes | None) -> tasks_pb2.TaskEnvelope:
    """Parse envelope bytes; raises DecodeError for anything that is not a TaskEnvelope."""
    if not data:
        raise DecodeError("empty message")
    envelope = tasks_pb2.TaskEnvelope()
    envelope.ParseFromString(data)
    return envelope


def encode_b64(message: tasks_pb2.TaskEnvelope) -> str:
    """Envelope as base64 text, the form it takes inside a (JSON) Celery message."""
    return base64.b64encode(message.SerializeToString()).decode("ascii")


def decode_b64(text: str) -> tasks_pb2.TaskEnvelope:
    return decode_envelope(base64.b64decode(text, validate=True))


# --- validation -------------------------------------------------------------------------


def _text_problems(name: str, text: str, limits: Limits) -> list[str]:
    if not text.strip():
        return [f"{name} must not be empty"]
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_text_bytes:
        return [f"{name} is {size} bytes; the limit is {limits.max_text_bytes}"]
    return []


def _model_problems(model: str, limits: Limits) -> list[str]:
    if len(model) > limits.max_model_name_chars:
        return [f"model name longer than {limits.max_model_name_chars} characters"]
    return []


def _classification_problems(req: classification_pb2.ClassifyRequest, limits: Limits) -> list[str]:
    problems = _text_problems("text", req.text, limits)
    # Whether labels are needed depends on the model: classification_model_problems.
    if len(req.labels) > limits.max_labels:
        problems.append(f"{len(req.labels)} labels given; the limit is {limits.max_labels}")
    seen: set[str] = set()
    for i, label in enumerate(req.labels):
        name = label.name.strip()
        if not name:
            problems.append(f"labels[{i}].name must not be empty")
        elif len(name) > limits.max_label_chars:
            problems.append(f"labels[{i}].name longer than {limits.max_label_chars} characters")
        elif name in seen:
            problems.append(f"labels[{i}].name {name!r} is duplicated")
        seen.add(name)
        if len(label.description) > limits.max_description_chars:
            problems.append(
                f"labels[{i}].description longer than {limits.max_description_chars} characters"
            )
    return problems


def classification_model_problems(
    req: classification_pb2.ClassifyRequest,
    model: str,
    own_labels: Sequence[str],
    multi_label_head: bool = False,
) -> list[str]:
    """What ``req`` asks that the classification model ``model`` cannot do. A zero-shot
    model (no ``own_labels``) needs candidate labels; a model with labels of its own
    takes none, or a subset of them (without descriptions), and its head decides
    ``multi_label``. The gateway checks this from the catalog, the worker from the
    engine: one rule."""
    if not own_labels:
        if not req.labels:
            return [f"model {model!r} is zero-shot: give at least one candidate label"]
        return []
    known = ", ".join(own_labels)
    problems = []
    for i, label in enumerate(req.labels):
        if label.name.strip() not in own_labels:
            problems.append(
                f"labels[{i}]: {label.name.strip()!r} is not a label of model {model!r} "
                f"(its labels: {known})"
            )
        if label.description:
            problems.append(
                f"labels[{i}].description: model {model!r} has labels of its own; "
                "a description would have no effect"
            )
    if req.multi_label != multi_label_head:
        problems.append(
            f"model {model!r} scores its labels independently: set multi_label"
            if multi_label_head
            else f"model {model!r} is single-label (its scores sum to one): "
            "multi_label is not available"
        )
    return problems


def _ner_problems(req: ner_pb2.NerRequest, limits: Limits) -> list[str]:
    problems = _text_problems("text", req.text, limits)
    if len(req.labels) > limits.max_ner_labels:
        problems.append(
            f"{len(req.labels)} entity labels given; the limit is {limits.max_ner_labels}"
        )
    if any(not label.strip() for label in req.labels):
        problems.append("entity labels must not be empty")
    return problems


def _summarization_problems(req: summarization_pb2.SummarizeRequest, limits: Limits) -> list[str]:
    problems = _text_problems("text", req.text, limits)
    which = req.WhichOneof("length")
    if which == "max_sentences" and req.max_sentences <= 0:
        problems.append("max_sentences must be positive")
    if which == "ratio" and not 0.0 < req.ratio <= 1.0:
        problems.append("ratio must be in (0, 1]")
    return problems


def _generation_problems(req: generation_pb2.GenerateRequest, limits: Limits) -> list[str]:
    problems: list[str] = []
    which = req.WhichOneof("input")
    if which is None:
        problems.append("one of prompt or messages is required")
    elif which == "prompt":
        problems += _text_problems("prompt", req.prompt, limits)
    else:
        messages: Sequence[generation_pb2.ChatMessage] = req.messages.messages
        if not messages:
            problems.append("messages must not be empty")
        if len(messages) > limits.max_chat_messages:
            problems.append(f"{len(messages)} messages; the limit is {limits.max_chat_messages}")
        total = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
        if total > limits.max_text_bytes:
            problems.append(f"messages are {total} bytes; the limit is {limits.max_text_bytes}")
        for i, m in enumerate(messages):
            if m.role not in {"system", "user", "assistant"}:
                problems.append(f"messages[{i}].role must be system, user or assistant")
    s = req.sampling
    if s.max_tokens < 0 or s.max_tokens > limits.max_new_tokens:
        problems.append(f"sampling.max_tokens must be in [0, {limits.max_new_tokens}]")
    if s.HasField("temperature") and not 0.0 <= s.temperature <= 2.0:
        problems.append("sampling.temperature must be in [0, 2]")
    if s.HasField("top_p") and not 0.0 < s.top_p <= 1.0:
        problems.append("sampling.top_p must be in (0, 1]")
    if s.HasField("top_k") and s.top_k < -1:
        problems.append("sampling.top_k must be -1 (off) or positive")
    if len(s.stop) > limits.max_stop_sequences:
        problems.append(f"at most {limits.max_stop_sequences} stop sequences")
    if req.HasField("structured_output"):
        problems += _structured_output_problems(req.structured_output, limits)
    return problems


def _structured_output_problems(form: generation_pb2.StructuredOutput, limits: Limits) -> list[str]:
    which = form.WhichOneof("form")
    if which is None:
        return ["structured_output names no form (json_schema, json_object, regex or choice)"]
    if which == "json_object":
        return [] if form.json_object else ["structured_output.json_object must be true"]
    if which == "choice":
        choices = list(form.choice.choices)
        if not 0 < len(choices) <= limits.max_choices:
            return [f"structured_output.choice needs 1 to {limits.max_choices} choices"]
        if any(not c for c in choices) or len(set(choices)) != len(choices):
            return ["structured_output.choice must be distinct, non-empty strings"]
        return _text_problems("structured_output.choice", "".join(choices), limits)
    text = form.json_schema if which == "json_schema" else form.regex
    problems = _text_problems(f"structured_output.{which}", text, limits)
    if problems:
        return problems
    if which == "regex":
        try:
            re.compile(text)
        except re.error as exc:
            return [f"structured_output.regex does not compile: {exc}"]
        return []
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return [f"structured_output.json_schema is not JSON: {exc}"]
    if not isinstance(schema, (dict, bool)):
        return ["structured_output.json_schema must be a JSON object"]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [f"structured_output.json_schema is not a valid JSON Schema: {exc.message}"]
    return []


def validate_request(kind: str, request: AnyRequest, limits: Limits) -> None:
    """Raise InvalidRequestError listing every problem of a capability request."""
    problems = _model_problems(request.model, limits)
    if kind == "classification" and isinstance(request, classification_pb2.ClassifyRequest):
        problems += _classification_problems(request, limits)
    elif kind == "ner" and isinstance(request, ner_pb2.NerRequest):
        problems += _ner_problems(request, limits)
    elif kind == "summarization" and isinstance(request, summarization_pb2.SummarizeRequest):
        problems += _summarization_problems(request, limits)
    elif kind == "generation" and isinstance(request, generation_pb2.GenerateRequest):
        problems += _generation_problems(request, limits)
    else:
        problems.append(f"request type {type(request).__name__} does not match kind {kind!r}")
    if problems:
        raise InvalidRequestError(problems)


def validate_envelope(
    envelope: tasks_pb2.TaskEnvelope,
    expected_kind: str,
    limits: Limits,
    expected_lane: str | None = None,
) -> None:
    """Raise InvalidRequestError unless ``envelope`` is a well-formed task of ``expected_kind``
    (and, when given, of ``expected_lane``: that of its topic, or no lane)."""
    problems: list[str] = []
    if not valid_task_id(envelope.task_id):
        problems.append(f"task_id {envelope.task_id[:64]!r} is missing or malformed")
    if envelope.kind not in KIND_NAMES:
        problems.append(f"kind {envelope.kind} is not a known kind")
    elif kind_name(envelope.kind) != expected_kind:
        problems.append(f"kind {kind_name(envelope.kind)!r} on the {expected_kind!r} topic")
    if not envelope.HasField("created_at") or not envelope.HasField("deadline"):
        problems.append("created_at and deadline are required")
    elif seconds(envelope.deadline) < seconds(envelope.created_at):
        problems.append("deadline is before created_at")
    if envelope.lane not in LANE_NAMES and envelope.lane != common_pb2.LANE_UNSPECIFIED:
        problems.append(f"lane {envelope.lane} is not a known lane")
    elif expected_lane is not None and envelope.lane not in (
        common_pb2.LANE_UNSPECIFIED,
        LANES_BY_NAME[expected_lane],
    ):
        # The topic is the lane: a producer cannot jump the queue by labelling its tasks.
        problems.append(f"lane {LANE_NAMES[envelope.lane]!r} on the {expected_lane!r} topic")
    if envelope.batch_id and not valid_batch_id(envelope.batch_id):
        problems.append(f"batch_id {envelope.batch_id[:64]!r} is malformed")
    if envelope.tenant and not TENANT_RE.match(envelope.tenant):
        problems.append(f"tenant {envelope.tenant[:64]!r} is malformed")
    problems += key_problems(envelope.idempotency_key)
    if envelope.replays < 0:
        problems.append("replays is negative")
    which = envelope.WhichOneof("request")
    if which is None:
        problems.append("the envelope carries no request")
    elif which != expected_kind:
        problems.append(f"request {which!r} on the {expected_kind!r} topic")
    if problems:
        raise InvalidRequestError(problems)
    request = request_of(envelope)
    assert request is not None
    validate_request(expected_kind, request, limits)


def expired(envelope: tasks_pb2.TaskEnvelope, now: float | None = None) -> bool:
    return (time.time() if now is None else now) > seconds(envelope.deadline)


# --- results ----------------------------------------------------------------------------


def error_result(
    envelope: tasks_pb2.TaskEnvelope,
    status: int,
    code: Code,
    message: str,
    *,
    retryable: bool = False,
) -> tasks_pb2.TaskResult:
    """A terminal result without output for ``envelope``."""
    return tasks_pb2.TaskResult(
        task_id=envelope.task_id,
        kind=envelope.kind,
        status=status,  # type: ignore[arg-type]
        error=common_pb2.Error(code=int(code), message=message, retryable=retryable),
        correlation_id=envelope.reply.correlation_id,
        # A malformed id or tenant (from a direct producer) must not name Redis keys.
        batch_id=envelope.batch_id if valid_batch_id(envelope.batch_id) else "",
        tenant=envelope.tenant if TENANT_RE.match(envelope.tenant) else "",
        replays=envelope.replays,
    )


def deadline_exceeded(envelope: tasks_pb2.TaskEnvelope, stage: str) -> tasks_pb2.TaskResult:
    late = time.time() - seconds(envelope.deadline)
    return error_result(
        envelope,
        common_pb2.TASK_STATUS_DEADLINE_EXCEEDED,
        Code.DEADLINE_EXCEEDED,
        f"deadline passed {late:.3f}s before the task could start ({stage})",
    )
