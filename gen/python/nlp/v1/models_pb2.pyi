from nlp.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelDescriptor(_message.Message):
    __slots__ = ("kind", "name", "version", "engine", "default", "labels", "multi_label")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MULTI_LABEL_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.Kind
    name: str
    version: str
    engine: str
    default: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    multi_label: bool
    def __init__(self, kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., engine: _Optional[str] = ..., default: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ..., multi_label: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.Kind
    def __init__(self, kind: _Optional[_Union[_common_pb2.Kind, str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelDescriptor]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelDescriptor, _Mapping]]] = ...) -> None: ...
