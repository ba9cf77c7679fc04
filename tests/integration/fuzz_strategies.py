"""Hypothesis strategies for ``test_fuzz``: malformed and hostile requests, ids, cursors
and metadata for every gateway RPC (sizes around the limits in ``shared.contracts``)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from hypothesis import strategies as st

from nlp.v1 import (
    classification_pb2,
    generation_pb2,
    ner_pb2,
    summarization_pb2,
    tasks_pb2,
)
from shared.contracts.settings import Limits

LIMITS = Limits()
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# --- strategies: scalars ----------------------------------------------------------------

ODD = [
    "\x00",
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u200b",  # zero width space
    "\ufeff",  # byte order mark
    "\u0301",  # combining acute accent
    "e\u0301\u0301\u0301",
    "\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f4bb",  # ZWJ sequence
    "\uffff",
    "\U0010ffff",
    "\u3000",
    "\r\n",
    "\t",
    "../",
    "%s%n",
    "'; DROP TABLE x;--",
    "<script>",
    "*",
    "{}",
]
PIECES = st.one_of(st.characters(codec="utf-8"), st.sampled_from(ODD))
tiny_text = st.lists(PIECES, min_size=1, max_size=20).map("".join)
any_text = st.lists(PIECES, max_size=20).map("".join)
units = st.lists(PIECES, min_size=1, max_size=3).map("".join)


def _repeat(unit: str, nbytes: int) -> str:
    """``unit`` repeated to about ``nbytes`` UTF-8 bytes."""
    return unit * max(1, nbytes // len(unit.encode()))


def _exact(prefix: str, nbytes: int) -> str:
    """``prefix`` padded with ASCII to exactly ``nbytes`` UTF-8 bytes (or longer)."""
    return prefix + "a" * max(0, nbytes - len(prefix.encode()))


def sized_text(edge: bool = False) -> st.SearchStrategy[str]:
    """Mostly short odd text; some blank, medium, just over the text limit, over 4 MiB.

    ``edge``: also texts of a few bytes around the limit (some valid: only where the
    worker can afford half a megabyte).
    """
    limit = LIMITS.max_text_bytes
    classes = {
        "tiny": tiny_text,
        "blank": st.sampled_from(["", " ", "\n\t ", "\u3000", "\x00", "\u200b"]),
        "medium": st.builds(_repeat, units, st.integers(100, 6000)),
        "over": st.builds(_repeat, units, st.integers(limit + 8, 600_000)),
        "huge": st.builds(_repeat, units, st.integers(MAX_MESSAGE_BYTES + 1, 4_400_000)),
        "edge": st.builds(_exact, any_text, st.integers(limit - 4, limit + 4)),
    }
    names = ["tiny"] * 14 + ["blank"] * 2 + ["medium"] * 3 + ["over", "huge"]
    if edge:
        names.append("edge")
    return st.sampled_from(names).flatmap(lambda n: classes[n])


def ints(bits: int, small: tuple[int, int] = (-10, 20)) -> st.SearchStrategy[int]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.one_of(
        st.integers(*small),
        st.sampled_from([lo, hi, lo + 1, hi - 1, -1, 0, 1]),
        st.integers(lo, hi),
    )


floats = st.one_of(
    st.floats(-3, 3),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 2.0, 1e-45, 3.4e38, 1e300, -1e300]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
model_names = st.one_of(
    st.sampled_from(["", "", "", "", "", "minilm-l6-v2-int8", "default", "a" * 128, "a" * 129]),
    tiny_text,
    st.builds(_repeat, units, st.integers(129, 70_000)),
)
ids = st.one_of(
    st.sampled_from(["", " ", ".", "..", "../../etc/passwd", "a" * 128, "a" * 129, "*", "a:*"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    any_text,
    st.builds(_repeat, units, st.integers(100, 200_000)),
)


def counted(small: int, edge: tuple[int, int], many: tuple[int, int]) -> st.SearchStrategy[int]:
    """How many elements a repeated field gets: mostly a few, some around the limit,
    rarely thousands."""
    return st.sampled_from(["small"] * 8 + ["zero", "edge", "many"]).flatmap(
        lambda c: {
            "small": st.integers(1, small),
            "zero": st.just(0),
            "edge": st.integers(*edge),
            "many": st.integers(*many),
        }[c]
    )


# --- strategies: requests ----------------------------------------------------------------

label_names = st.one_of(
    st.sampled_from(["sports", "politics", "technology", "", " ", "a" * 200, "a" * 201, "\x00"]),
    tiny_text,
)
descriptions = st.one_of(
    st.just(""), tiny_text, st.sampled_from(["d" * 1000, "d" * 1001, "\U0001f600" * 1001])
)


@st.composite
def classify_requests(draw: st.DrawFn) -> classification_pb2.ClassifyRequest:
    request = classification_pb2.ClassifyRequest(
        text=draw(sized_text(edge=True)),
        multi_label=draw(st.booleans()),
        model=draw(model_names),
    )
    n = draw(counted(5, (LIMITS.max_labels - 4, LIMITS.max_labels + 4), (1000, 3000)))
    if n <= 8:
        for _ in range(n):
            request.labels.add(name=draw(label_names), description=draw(descriptions))
    else:  # unique names: only the count (or one odd description) makes it invalid
        base = draw(label_names)
        description = draw(descriptions)
        for i in range(n):
            request.labels.add(name=f"{base}{i}", description=description)
    return request


@st.composite
def ner_requests(draw: st.DrawFn) -> ner_pb2.NerRequest:
    request = ner_pb2.NerRequest(text=draw(sized_text()), model=draw(model_names))
    n = draw(counted(4, (LIMITS.max_ner_labels - 4, LIMITS.max_ner_labels + 4), (1000, 5000)))
    if n <= 8:
        request.labels.extend(
            draw(
                st.lists(
                    st.one_of(st.sampled_from(["PERSON", "ORG", "GPE", "", " "]), tiny_text),
                    min_size=n,
                    max_size=n,
                )
            )
        )
    else:
        request.labels.extend([draw(st.sampled_from(["PERSON", "X", ""]))] * n)
    return request


@st.composite
def summarize_requests(draw: st.DrawFn) -> summarization_pb2.SummarizeRequest:
    request = summarization_pb2.SummarizeRequest(text=draw(sized_text()), model=draw(model_names))
    # Open enum: unknown values are kept (and sent) as plain ints.
    request.mode = draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2]), ints(32)))  # type: ignore[assignment]
    length = draw(st.sampled_from(["none", "max_sentences", "ratio"]))
    if length == "max_sentences":
        request.max_sentences = draw(ints(32))
    elif length == "ratio":
        request.ratio = draw(floats)
    return request


roles = st.one_of(
    st.sampled_from(["system", "user", "assistant", "", "root", "USER", "user\x00", "tool"]),
    tiny_text,
)


@st.composite
def generate_requests(draw: st.DrawFn) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(model=draw(model_names))
    which = draw(st.sampled_from(["none", "prompt", "prompt", "messages", "messages"]))
    if which == "prompt":
        request.prompt = draw(sized_text())
    elif which == "messages":
        chat = request.messages
        n = draw(
            counted(4, (LIMITS.max_chat_messages - 4, LIMITS.max_chat_messages + 4), (1000, 3000))
        )
        if n <= 8:
            for _ in range(n):
                chat.messages.add(role=draw(roles), content=draw(sized_text()))
        else:
            one = generation_pb2.ChatMessage(role=draw(roles), content=draw(any_text))
            chat.messages.extend([one] * n)
        if n == 0:
            chat.SetInParent()  # messages chosen, but empty
    sampling = request.sampling
    sampling.max_tokens = draw(ints(32, (-5, 5000)))
    if draw(st.booleans()):
        sampling.temperature = draw(floats)
    if draw(st.booleans()):
        sampling.top_p = draw(floats)
    if draw(st.booleans()):
        sampling.top_k = draw(ints(32))
    if draw(st.booleans()):
        sampling.seed = draw(ints(64))
    n = draw(
        counted(3, (LIMITS.max_stop_sequences - 2, LIMITS.max_stop_sequences + 2), (1000, 5000))
    )
    if n <= 8:
        sampling.stop.extend(draw(st.lists(any_text, min_size=n, max_size=n)))
    else:
        sampling.stop.extend([draw(any_text)] * n)
    return request


capability_requests: dict[str, st.SearchStrategy[Any]] = {
    "classification": classify_requests(),
    "ner": ner_requests(),
    "summarization": summarize_requests(),
    "generation": generate_requests(),
}
# Mostly no lane (and negative deadlines): most fuzzed tasks are refused, so the workers
# are not flooded; the valid ones run.
lanes = st.one_of(ints(32), ints(32), ints(32), st.integers(0, 3))
deadlines_ms = st.one_of(ints(64, (-5, 5)), ints(64, (-5, 5)), st.integers(0, 60_000))


@st.composite
def submit_requests(draw: st.DrawFn) -> tasks_pb2.SubmitRequest:
    request = tasks_pb2.SubmitRequest(
        lane=draw(lanes),  # type: ignore[arg-type]  # mostly no Lane value, on purpose
        deadline_ms=draw(deadlines_ms),
        tenant=draw(
            st.one_of(st.just(""), tiny_text, st.builds(_repeat, units, st.integers(1, 200_000)))
        ),
    )
    kind = draw(st.sampled_from(["none", "classification", "ner", "summarization", "generation"]))
    if kind != "none":
        getattr(request, kind).CopyFrom(draw(capability_requests[kind]))
    if draw(st.booleans()):
        request.reply.publish_result = draw(st.booleans())
        request.reply.correlation_id = draw(st.one_of(any_text, st.just("c" * 10_000)))
    return request


@st.composite
def batch_streams(draw: st.DrawFn) -> list[tasks_pb2.SubmitBatchRequest]:
    first_id = draw(
        st.one_of(
            st.just(""),
            st.builds(lambda: f"fuzz-{uuid.uuid4().hex[:12]}"),
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
            ids,
        )
    )
    messages = []
    for i in range(draw(st.integers(0, 3))):
        message = tasks_pb2.SubmitBatchRequest(publish_results=draw(st.booleans()))
        message.batch_id = first_id if i == 0 else draw(st.sampled_from(["", first_id, "other"]))
        n = draw(counted(3, (10, 40), (500, 2500)))
        if n <= 3:
            for _ in range(n):
                message.items.add(
                    item_id=draw(st.one_of(any_text, st.just("i" * 257))),
                    task=draw(submit_requests()),
                )
        else:  # many items without a task: each is refused in its ack
            prefix = draw(any_text)
            for j in range(n):
                message.items.add(item_id=f"{prefix}{j}")
        messages.append(message)
    return messages


cursors = st.one_of(
    st.sampled_from(["", "0-0", "0", "-", "+", "$", ">", "0-0-0", "99999999999999999999-0"]),
    st.from_regex(r"[0-9]{1,20}-[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[0-9]{19,20}-[0-9]{1,20}", fullmatch=True),  # around 2**64
    ids,
)

# --- strategies: metadata ----------------------------------------------------------------

md_keys = st.one_of(
    st.sampled_from(
        ["authorization", "x-api-key", "x-fuzz", "user-agent", "grpc-timeout", "te", "host"]
    ),
    st.from_regex(r"[a-z0-9_.-]{1,30}", fullmatch=True),
    st.sampled_from(["", "X-Upper", "bad key", ":path", "grpc-status", "content-type"]),
)
ascii_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
md_values = st.one_of(
    ascii_values,
    st.builds(lambda c, n: c * n, st.sampled_from("aZ9 -"), st.integers(1000, 20_000)),
    tiny_text,  # non-ASCII or control characters: grpc refuses them before sending
    st.sampled_from(["Bearer ", "Bearer \x00", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 9000]),
)
Metadata = tuple[tuple[str, str | bytes], ...]


@st.composite
def hostile_metadata(draw: st.DrawFn) -> Metadata:
    pairs: list[tuple[str, str | bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(st.sampled_from(["text", "bin", "auth", "authbin", "many"]))
        if shape == "text":
            pairs.append((draw(md_keys), draw(md_values)))
        elif shape == "bin":  # how invalid UTF-8 travels
            pairs.append(("x-fuzz-bin", draw(st.binary(max_size=3000))))
        elif shape == "auth":
            pairs.append(("authorization", draw(md_values)))
        elif shape == "authbin":
            pairs.append(("authorization-bin", draw(st.binary(max_size=200))))
        else:
            value = draw(ascii_values)
            pairs.extend((f"x-many-{i}", value) for i in range(draw(st.integers(10, 400))))
    return tuple(pairs)


metadata = st.sampled_from([0, 0, 0, 1]).flatmap(
    lambda hostile: hostile_metadata() if hostile else st.just(())
)
