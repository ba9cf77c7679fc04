"""The one codec from protobuf messages to JSON, for everything the project prints or writes.

protobuf's own default leaves out every field that holds its zero value: an entity at
offset 0 would have no ``start``, a stream's first chunk no ``index``, a batch with
nothing rejected no ``rejected``. Readers (people, ``jq``, other programs) then cannot
tell "zero" from "not there", so here every field without presence is always printed.
Otherwise the proto3 JSON mapping applies unchanged: field names as in the ``.proto``
file, enums by name, 64-bit integers as strings, bytes as base64. Fields with presence
(messages, ``optional`` scalars, oneof members) still appear only when set: that absence
means something.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def to_dict(message: Message) -> dict[str, Any]:
    """``message`` as a JSON-ready dict, zero, false and empty fields included, in the
    order of the ``.proto`` file."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _in_field_order(message.DESCRIPTOR, data)


def _in_field_order(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    # protobuf lists the fields that are set first and the defaults after them: an entity
    # at offset 0 would read {"text", "label", "end", "start"}.
    if descriptor.GetOptions().map_entry or descriptor.full_name.startswith("google.protobuf."):
        return data  # maps and well-known types (Timestamp: a string) keep their shape
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        sub = field.message_type
        if sub is not None and not sub.GetOptions().map_entry:
            if isinstance(value, list):
                value = [_in_field_order(sub, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _in_field_order(sub, value)
        ordered[field.name] = value
    # Anything else (extensions) after.
    return ordered | {k: v for k, v in data.items() if k not in ordered}


def dumps(message: Message, indent: int | None = None) -> str:
    """``message`` as JSON text (see :func:`to_dict`); non-ASCII text is kept as is."""
    return json.dumps(to_dict(message), indent=indent, ensure_ascii=False)
