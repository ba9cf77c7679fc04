import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nlp.v1 import common_pb2 as _common_pb2
from nlp.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetterFilter(_message.Message):
    __slots__ = ("since", "kind", "stage", "reason")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    kind: _common_pb2.Kind
    stage: str
    reason: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeadLetterHeader(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "written_at", "kind", "stage", "reason", "source_topic", "source_partition", "source_offset", "replays", "task_id", "tenant", "value_bytes", "headers", "envelope", "undecodable", "value")
    ID_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VALUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    UNDECODABLE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    written_at: _timestamp_pb2.Timestamp
    kind: _common_pb2.Kind
    stage: str
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    replays: int
    task_id: str
    tenant: str
    value_bytes: int
    headers: _containers.RepeatedCompositeFieldContainer[DeadLetterHeader]
    envelope: _tasks_pb2.TaskEnvelope
    undecodable: str
    value: bytes
    def __init__(self, id: _Optional[str] = ..., written_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., replays: _Optional[int] = ..., task_id: _Optional[str] = ..., tenant: _Optional[str] = ..., value_bytes: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[DeadLetterHeader, _Mapping]]] = ..., envelope: _Optional[_Union[_tasks_pb2.TaskEnvelope, _Mapping]] = ..., undecodable: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("filter", "newest")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    filter: DeadLetterFilter
    newest: int
    def __init__(self, filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., newest: _Optional[int] = ...) -> None: ...

class DeadLetterCount(_message.Message):
    __slots__ = ("kind", "stage", "reason", "count", "last_id", "last_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.Kind
    stage: str
    reason: str
    count: int
    last_id: str
    last_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ..., last_id: _Optional[str] = ..., last_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("counts", "newest", "matched", "truncated")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[DeadLetterCount]
    newest: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    matched: int
    truncated: bool
    def __init__(self, counts: _Optional[_Iterable[_Union[DeadLetterCount, _Mapping]]] = ..., newest: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., matched: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class GetDeadLetterRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("ids", "filter", "dry_run")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: DeadLetterFilter
    dry_run: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ReplayOutcome(_message.Message):
    __slots__ = ("id", "task_id", "replayed", "topic", "refused")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    task_id: str
    replayed: bool
    topic: str
    refused: str
    def __init__(self, id: _Optional[str] = ..., task_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., topic: _Optional[str] = ..., refused: _Optional[str] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("outcomes", "replayed", "refused")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReplayOutcome]
    replayed: int
    refused: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ReplayOutcome, _Mapping]]] = ..., replayed: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...
