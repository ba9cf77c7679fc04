from nlp.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SummaryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUMMARY_MODE_UNSPECIFIED: _ClassVar[SummaryMode]
    SUMMARY_MODE_EXTRACTIVE: _ClassVar[SummaryMode]
    SUMMARY_MODE_ABSTRACTIVE: _ClassVar[SummaryMode]
SUMMARY_MODE_UNSPECIFIED: SummaryMode
SUMMARY_MODE_EXTRACTIVE: SummaryMode
SUMMARY_MODE_ABSTRACTIVE: SummaryMode

class SummarizeRequest(_message.Message):
    __slots__ = ("text", "mode", "max_sentences", "ratio", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_SENTENCES_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    mode: SummaryMode
    max_sentences: int
    ratio: float
    model: str
    def __init__(self, text: _Optional[str] = ..., mode: _Optional[_Union[SummaryMode, str]] = ..., max_sentences: _Optional[int] = ..., ratio: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class SummarySentence(_message.Message):
    __slots__ = ("text", "start", "end", "score")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: int
    end: int
    score: float
    def __init__(self, text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class SummarizeResponse(_message.Message):
    __slots__ = ("summary", "sentences", "model", "task_id")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    summary: str
    sentences: _containers.RepeatedCompositeFieldContainer[SummarySentence]
    model: _common_pb2.ModelInfo
    task_id: str
    def __init__(self, summary: _Optional[str] = ..., sentences: _Optional[_Iterable[_Union[SummarySentence, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., task_id: _Optional[str] = ...) -> None: ...
