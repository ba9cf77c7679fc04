"""OpenAI's chat and text completions, mapped onto the platform's GenerateRequest and back.

Requests are checked here (OpenAI's shape, parameters this platform can honour) and then
by the gateway's own validation (limits, ranges). A parameter that would change the
output but cannot be honoured is refused, not ignored: ``n`` other than 1, ``echo``,
``logprobs``, tools, penalties other than 0. ``response_format`` (``json_object``,
``json_schema``) becomes the request's structured output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nlp.v1 import generation_pb2

_FINISH: dict[int, str] = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
}
# OpenAI's default max_tokens of a text completion.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# The parameters both endpoints take.
_COMMON_FIELDS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
}
_CHAT_FIELDS = _COMMON_FIELDS | {"messages", "max_completion_tokens", "response_format"}
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "echo"}
# Accepted only at the value that changes nothing.
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "echo": False,
}


class BadRequestError(Exception):
    """An OpenAI ``invalid_request_error`` (400) naming the parameter at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Asked:
    """A checked completion request: the platform's request and how to answer."""

    model: str
    request: generation_pb2.GenerateRequest
    stream: bool
    include_usage: bool
    chat: bool


def _number(body: Mapping[str, Any], name: str, kind: type, optional: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise BadRequestError(f"'{name}' is required", name)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequestError(
            f"'{name}' must be a {'number' if kind is float else 'integer'}", name
        )
    return value


def _common(body: Mapping[str, Any], allowed: set[str]) -> tuple[str, bool, bool]:
    if not isinstance(body, Mapping):
        raise BadRequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequestError(
            f"unsupported parameter: '{unknown[0]}'", unknown[0], "unsupported_parameter"
        )
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] is not None and body[name] != neutral:
            raise BadRequestError(
                f"'{name}' other than {json.dumps(neutral)} is not supported",
                name,
                "unsupported_value",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required", "model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise BadRequestError(
                "'stream_options' is only allowed with 'stream': true", "stream_options"
            )
        if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
            raise BadRequestError(
                "'stream_options' may only hold 'include_usage'", "stream_options"
            )
        include_usage = options.get("include_usage") is True
    return model, stream, include_usage


def _sampling(body: Mapping[str, Any], max_tokens: int | None) -> generation_pb2.SamplingParams:
    sampling = generation_pb2.SamplingParams(max_tokens=max_tokens or 0)
    temperature = _number(body, "temperature", float)
    if temperature is not None:
        sampling.temperature = float(temperature)
    top_p = _number(body, "top_p", float)
    if top_p is not None:
        sampling.top_p = float(top_p)
    seed = _number(body, "seed", int)
    if seed is not None:
        sampling.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        sampling.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        sampling.stop.extend(stop)
    elif stop is not None:
        raise BadRequestError("'stop' must be a string or an array of strings", "stop")
    return sampling


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise BadRequestError(
                    "only text content parts are supported", f"messages[{index}].content"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError("a text part needs 'text'", f"messages[{index}].content")
            parts.append(text)
        return "".join(parts)
    raise BadRequestError("'content' must be a string or text parts", f"messages[{index}].content")


def chat_request(body: Mapping[str, Any]) -> Asked:
    """A ``POST /v1/chat/completions`` body, checked and mapped."""
    model, stream, include_usage = _common(body, _CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", "messages")
    chat = generation_pb2.ChatMessages()
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadRequestError("each message must be an object", f"messages[{i}]")
        role = message.get("role")
        # "developer" is OpenAI's newer name for system instructions.
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise BadRequestError(
                "roles may be system, developer, user or assistant", f"messages[{i}].role"
            )
        if set(message) - {"role", "content", "name"}:
            raise BadRequestError("tool calls are not supported", f"messages[{i}]")
        chat.messages.add(role=role, content=_content(message, i))
    max_tokens = _number(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequestError("'max_tokens' must be at least 1", "max_tokens")
    request = generation_pb2.GenerateRequest(
        messages=chat, sampling=_sampling(body, max_tokens), model=model
    )
    form = structured_output(body.get("response_format"))
    if form is not None:
        request.structured_output.CopyFrom(form)
    return Asked(model, request, stream, include_usage, chat=True)


def structured_output(response_format: Any) -> generation_pb2.StructuredOutput | None:
    """OpenAI's ``response_format`` as the platform's structured output (None: text).
    The schema itself is checked by the gateway's validation (a bad one is a 400)."""
    if response_format is None:
        return None
    param = "response_format"
    if not isinstance(response_format, Mapping):
        raise BadRequestError("'response_format' must be an object", param)
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return generation_pb2.StructuredOutput(json_object=True)
    if kind != "json_schema":
        raise BadRequestError(
            "'response_format.type' must be text, json_object or json_schema", f"{param}.type"
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise BadRequestError(
            "'response_format.json_schema' needs a 'name' and a 'schema'", f"{param}.json_schema"
        )
    schema = spec.get("schema")
    if not isinstance(schema, Mapping):
        raise BadRequestError(
            "'response_format.json_schema.schema' must be a JSON Schema object",
            f"{param}.json_schema.schema",
        )
    # strict or not, the output is held to the schema.
    return generation_pb2.StructuredOutput(json_schema=json.dumps(schema))


def completion_request(body: Mapping[str, Any]) -> Asked:
    """A ``POST /v1/completions`` body, checked and mapped."""
    model, stream, include_usage = _common(body, _COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequestError("'prompt' must be a string (one prompt per request)", "prompt")
    max_tokens = _number(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequestError("'max_tokens' must be at least 1", "max_tokens")
    request = generation_pb2.GenerateRequest(
        prompt=prompt,
        sampling=_sampling(
            body, COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        ),
        model=model,
    )
    return Asked(model, request, stream, include_usage, chat=False)


# --- answers -----------------------------------------------------------------------------


def finish_reason(reason: int) -> str | None:
    return _FINISH.get(reason)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_id(asked: Asked, task_id: str) -> str:
    """OpenAI-style ids that carry the task id (``nlp task get`` finds it)."""
    return f"{'chatcmpl' if asked.chat else 'cmpl'}-{task_id}"


def completion(asked: Asked, response: generation_pb2.GenerateResponse) -> dict[str, Any]:
    """The whole answer of a call without ``stream``."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason(response.finish_reason)}
    if asked.chat:
        choice["message"] = {"role": "assistant", "content": response.text}
        choice["logprobs"] = None
    else:
        choice["text"] = response.text
        choice["logprobs"] = None
    return {
        "id": response_id(asked, response.task_id),
        "object": "chat.completion" if asked.chat else "text_completion",
        "created": int(time.time()),
        "model": asked.model,
        "choices": [choice],
        "usage": usage(response.prompt_tokens, response.completion_tokens),
        "system_fingerprint": None,
    }


@dataclass
class ChunkWriter:
    """The ``data:`` events of a streamed answer, in OpenAI's chunk format."""

    asked: Asked
    task_id: str
    created: int = 0

    def __post_init__(self) -> None:
        self.created = int(time.time())

    def _chunk(self, choice: dict[str, Any] | None, **extra: Any) -> str:
        body: dict[str, Any] = {
            "id": response_id(self.asked, self.task_id),
            "object": "chat.completion.chunk" if self.asked.chat else "text_completion",
            "created": self.created,
            "model": self.asked.model,
            "choices": [] if choice is None else [choice],
            "system_fingerprint": None,
            **extra,
        }
        if self.asked.include_usage and "usage" not in body:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def first(self) -> str:
        """A chat stream opens with the assistant's role (text completions: nothing)."""
        if not self.asked.chat:
            return ""
        return self._chunk(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
                "logprobs": None,
            }
        )

    def delta(self, text: str) -> str:
        if self.asked.chat:
            choice = {
                "index": 0,
                "delta": {"content": text},
                "finish_reason": None,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
        return self._chunk(choice)

    def last(self, chunk: generation_pb2.GenerateChunk) -> str:
        """The finish reason; then, when asked, the usage chunk; then ``[DONE]``."""
        reason = finish_reason(chunk.finish_reason)
        if self.asked.chat:
            choice = {"index": 0, "delta": {}, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": "", "finish_reason": reason, "logprobs": None}
        out = self._chunk(choice)
        if self.asked.include_usage:
            out += self._chunk(None, usage=usage(chunk.prompt_tokens, chunk.completion_tokens))
        return out + "data: [DONE]\n\n"
