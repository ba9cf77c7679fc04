import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nlp.v1 import classification_pb2 as _classification_pb2
from nlp.v1 import common_pb2 as _common_pb2
from nlp.v1 import generation_pb2 as _generation_pb2
from nlp.v1 import ner_pb2 as _ner_pb2
from nlp.v1 import summarization_pb2 as _summarization_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplyOptions(_message.Message):
    __slots__ = ("publish_result", "correlation_id")
    PUBLISH_RESULT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    publish_result: bool
    correlation_id: str
    def __init__(self, publish_result: _Optional[bool] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class TaskEnvelope(_message.Message):
    __slots__ = ("task_id", "kind", "tenant", "created_at", "deadline", "model", "generation", "classification", "ner", "summarization", "reply", "batch_id", "lane", "idempotency_key", "replays")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    NER_FIELD_NUMBER: _ClassVar[int]
    SUMMARIZATION_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: _common_pb2.Kind
    tenant: str
    created_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    model: str
    generation: _generation_pb2.GenerateRequest
    classification: _classification_pb2.ClassifyRequest
    ner: _ner_pb2.NerRequest
    summarization: _summarization_pb2.SummarizeRequest
    reply: ReplyOptions
    batch_id: str
    lane: _common_pb2.Lane
    idempotency_key: str
    replays: int
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., tenant: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., generation: _Optional[_Union[_generation_pb2.GenerateRequest, _Mapping]] = ..., classification: _Optional[_Union[_classification_pb2.ClassifyRequest, _Mapping]] = ..., ner: _Optional[_Union[_ner_pb2.NerRequest, _Mapping]] = ..., summarization: _Optional[_Union[_summarization_pb2.SummarizeRequest, _Mapping]] = ..., reply: _Optional[_Union[ReplyOptions, _Mapping]] = ..., batch_id: _Optional[str] = ..., lane: _Optional[_Union[_common_pb2.Lane, str]] = ..., idempotency_key: _Optional[str] = ..., replays: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "kind", "status", "generation", "classification", "ner", "summarization", "error", "model", "timings", "worker", "attempt", "correlation_id", "batch_size", "batch_id", "dead_lettered", "tenant", "replays")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    NER_FIELD_NUMBER: _ClassVar[int]
    SUMMARIZATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: _common_pb2.Kind
    status: _common_pb2.TaskStatus
    generation: _generation_pb2.GenerateResponse
    classification: _classification_pb2.ClassifyResponse
    ner: _ner_pb2.NerResponse
    summarization: _summarization_pb2.SummarizeResponse
    error: _common_pb2.Error
    model: _common_pb2.ModelInfo
    timings: _common_pb2.Timings
    worker: str
    attempt: int
    correlation_id: str
    batch_size: int
    batch_id: str
    dead_lettered: bool
    tenant: str
    replays: int
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., status: _Optional[_Union[_common_pb2.TaskStatus, str]] = ..., generation: _Optional[_Union[_generation_pb2.GenerateResponse, _Mapping]] = ..., classification: _Optional[_Union[_classification_pb2.ClassifyResponse, _Mapping]] = ..., ner: _Optional[_Union[_ner_pb2.NerResponse, _Mapping]] = ..., summarization: _Optional[_Union[_summarization_pb2.SummarizeResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., worker: _Optional[str] = ..., attempt: _Optional[int] = ..., correlation_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., batch_id: _Optional[str] = ..., dead_lettered: _Optional[bool] = ..., tenant: _Optional[str] = ..., replays: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("generation", "classification", "ner", "summarization", "lane", "deadline_ms", "reply", "tenant", "idempotency_key")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    NER_FIELD_NUMBER: _ClassVar[int]
    SUMMARIZATION_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    generation: _generation_pb2.GenerateRequest
    classification: _classification_pb2.ClassifyRequest
    ner: _ner_pb2.NerRequest
    summarization: _summarization_pb2.SummarizeRequest
    lane: _common_pb2.Lane
    deadline_ms: int
    reply: ReplyOptions
    tenant: str
    idempotency_key: str
    def __init__(self, generation: _Optional[_Union[_generation_pb2.GenerateRequest, _Mapping]] = ..., classification: _Optional[_Union[_classification_pb2.ClassifyRequest, _Mapping]] = ..., ner: _Optional[_Union[_ner_pb2.NerRequest, _Mapping]] = ..., summarization: _Optional[_Union[_summarization_pb2.SummarizeRequest, _Mapping]] = ..., lane: _Optional[_Union[_common_pb2.Lane, str]] = ..., deadline_ms: _Optional[int] = ..., reply: _Optional[_Union[ReplyOptions, _Mapping]] = ..., tenant: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("task_id", "kind", "deadline")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: _common_pb2.Kind
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WaitTaskRequest(_message.Message):
    __slots__ = ("task_id", "timeout_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout_ms: int
    def __init__(self, task_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("cancelled", "result")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    result: TaskResult
    def __init__(self, cancelled: _Optional[bool] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("item_id", "task")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    task: SubmitRequest
    def __init__(self, item_id: _Optional[str] = ..., task: _Optional[_Union[SubmitRequest, _Mapping]] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("batch_id", "items", "publish_results")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_RESULTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    publish_results: bool
    def __init__(self, batch_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ..., publish_results: _Optional[bool] = ...) -> None: ...

class BatchItemAck(_message.Message):
    __slots__ = ("item_id", "task_id", "error", "index")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    task_id: str
    error: _common_pb2.Error
    index: int
    def __init__(self, item_id: _Optional[str] = ..., task_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("batch_id", "acks")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    acks: _containers.RepeatedCompositeFieldContainer[BatchItemAck]
    def __init__(self, batch_id: _Optional[str] = ..., acks: _Optional[_Iterable[_Union[BatchItemAck, _Mapping]]] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class BatchStatus(_message.Message):
    __slots__ = ("batch_id", "submitted", "rejected", "pending", "running", "succeeded", "failed", "cancelled", "deadline_exceeded", "dead_lettered", "sealed", "complete", "created_at")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    submitted: int
    rejected: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    deadline_exceeded: int
    dead_lettered: int
    sealed: bool
    complete: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, batch_id: _Optional[str] = ..., submitted: _Optional[int] = ..., rejected: _Optional[int] = ..., pending: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., deadline_exceeded: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., sealed: _Optional[bool] = ..., complete: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamBatchResultsRequest(_message.Message):
    __slots__ = ("batch_id", "cursor", "no_follow")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    NO_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    cursor: str
    no_follow: bool
    def __init__(self, batch_id: _Optional[str] = ..., cursor: _Optional[str] = ..., no_follow: _Optional[bool] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("cursor", "result")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    result: TaskResult
    def __init__(self, cursor: _Optional[str] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ...) -> None: ...
