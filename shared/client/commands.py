"""The CLI's commands and output: for each kind its arguments, request, sync RPC and
human-readable output (:data:`KINDS`), reading the text to send, printing responses,
results and token streams.

The parser and the dispatch of a command line are :mod:`shared.client.cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    tasks_pb2,
)
from shared.contracts import protojson


class UsageError(Exception):
    """A command line that cannot work (exit status 2)."""


def print_message(message: Message, as_json: bool, human: Callable[[Any], str]) -> None:
    print(protojson.dumps(message, indent=2) if as_json else human(message))


def read_text(args: argparse.Namespace) -> str:
    if args.file:
        return Path(args.file).read_text(encoding="utf-8")
    if args.text == "-" or args.text is None:
        return sys.stdin.read()
    text = str(args.text)
    # An argument naming an existing file means the file (FILE_OR_TEXT); anything else
    # is the text itself.
    if _names_a_file(text):
        return Path(text).read_text(encoding="utf-8")
    return text


def _names_a_file(text: str) -> bool:
    """Whether ``text`` is the path of an existing file. A check that cannot even be
    made (a name over the system's limits, a NUL byte) means no: such text is no path."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _add_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="text, or a file to read ('-' or omitted: stdin)")
    p.add_argument("--file", help="read the text from this file")
    p.add_argument("--model", default="", help="model name (default: the kind's default)")


# --- per kind: arguments, request, sync call, human output ------------------------------


def _classify_args(p: argparse.ArgumentParser) -> None:
    _add_text_args(p)
    p.add_argument(
        "--labels",
        default="",
        help="comma-separated candidate labels (a model with labels of its own, such as "
        "sentiment, needs none: names given keep only those)",
    )
    p.add_argument(
        "--describe",
        action="append",
        default=[],
        metavar="LABEL=DESCRIPTION",
        help="what a label means (repeatable)",
    )
    p.add_argument("--multi-label", action="store_true", help="score labels independently")


def classify_request(args: argparse.Namespace) -> classification_pb2.ClassifyRequest:
    described = dict(d.split("=", 1) for d in args.describe)
    names = [name.strip() for name in args.labels.split(",") if name.strip()]
    return classification_pb2.ClassifyRequest(
        text=read_text(args),
        labels=[
            classification_pb2.Label(name=name, description=described.get(name, ""))
            for name in names
        ],
        multi_label=args.multi_label,
        model=args.model,
    )


def _classification_text(response: classification_pb2.ClassifyResponse) -> str:
    width = max(len(s.label) for s in response.scores)
    lines = [f"{s.label:<{width}}  {s.score:.3f}" for s in response.scores]
    return "\n".join([f"top: {response.top_label}", *lines, f"model: {response.model.name}"])


def _ner_args(p: argparse.ArgumentParser) -> None:
    _add_text_args(p)
    p.add_argument("--labels", default="", help="keep only these entity labels (comma-separated)")


def ner_request(args: argparse.Namespace) -> ner_pb2.NerRequest:
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    return ner_pb2.NerRequest(text=read_text(args), labels=labels, model=args.model)


def _ner_text(response: ner_pb2.NerResponse) -> str:
    lines = [f"{e.start:>7}-{e.end:<7} {e.label:<12} {e.text}" for e in response.entities]
    return "\n".join([*lines, f"{len(lines)} entities; model: {response.model.name}"])


def _summarize_args(p: argparse.ArgumentParser) -> None:
    _add_text_args(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-sentences", type=int, help="sentences to keep")
    length.add_argument("--ratio", type=float, help="fraction of the sentences to keep")
    p.add_argument("--abstractive", action="store_true", help="write new text (needs an LLM)")


def summarize_request(args: argparse.Namespace) -> summarization_pb2.SummarizeRequest:
    request = summarization_pb2.SummarizeRequest(
        text=read_text(args),
        model=args.model,
        mode=summarization_pb2.SUMMARY_MODE_ABSTRACTIVE
        if args.abstractive
        else summarization_pb2.SUMMARY_MODE_EXTRACTIVE,
    )
    if args.max_sentences is not None:
        request.max_sentences = args.max_sentences
    elif args.ratio is not None:
        request.ratio = args.ratio
    return request


def _summary_text(response: summarization_pb2.SummarizeResponse) -> str:
    return f"{response.summary}\n(model: {response.model.name})"


def _generate_args(p: argparse.ArgumentParser) -> None:
    _add_text_args(p)
    p.add_argument(
        "--max-tokens", type=int, default=0, help="tokens to generate at most (0: server default)"
    )
    p.add_argument("--temperature", type=float, help="0 is greedy (default: the server's)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: probability mass kept")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (-1: off)")
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--seed", type=int, help="seed of the sampler, for repeatable output")
    p.add_argument("--system", help="system message before the text")
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the text as a plain prompt to continue, without the chat template",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--json-schema", metavar="FILE", help="the text is JSON this JSON Schema (a file) accepts"
    )
    form.add_argument("--json-object", action="store_true", help="the text is a JSON object")
    form.add_argument("--regex", help="the text matches this regular expression")
    form.add_argument("--choice", help="the text is one of these comma-separated strings")


def generate_request(args: argparse.Namespace) -> generation_pb2.GenerateRequest:
    text = read_text(args)
    request = generation_pb2.GenerateRequest(model=args.model)
    if args.raw:
        if args.system:
            raise UsageError("--system needs the chat template; drop --raw")
        request.prompt = text
    else:
        # The text is the user's turn: instruction-tuned models answer it rather than
        # continue it (a plain prompt often ends at once).
        if args.system:
            request.messages.messages.add(role="system", content=args.system)
        request.messages.messages.add(role="user", content=text)
    sampling = request.sampling
    sampling.max_tokens = args.max_tokens
    sampling.stop.extend(args.stop)
    # Only what was given: an unset field means the server's default, not zero.
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.top_p is not None:
        sampling.top_p = args.top_p
    if args.top_k is not None:
        sampling.top_k = args.top_k
    if args.seed is not None:
        sampling.seed = args.seed
    form = request.structured_output
    if args.json_schema:
        form.json_schema = Path(args.json_schema).read_text(encoding="utf-8")
    elif args.json_object:
        form.json_object = True
    elif args.regex:
        form.regex = args.regex
    elif args.choice:
        form.choice.choices.extend(c.strip() for c in args.choice.split(","))
    else:
        request.ClearField("structured_output")
    return request


def _finish_line(end: generation_pb2.GenerateChunk | generation_pb2.GenerateResponse) -> str:
    finish = generation_pb2.FinishReason.Name(end.finish_reason)
    return (
        f"[finish: {finish.removeprefix('FINISH_REASON_').lower()}, "
        f"prompt {end.prompt_tokens} tokens, completion {end.completion_tokens} tokens, "
        f"task {end.task_id}]"
    )


def _generation_text(response: generation_pb2.GenerateResponse) -> str:
    return f"{response.text}\n{_finish_line(response)}"


def print_generation(
    chunks: Iterable[generation_pb2.GenerateChunk], as_json: bool = False
) -> generation_pb2.GenerateChunk | None:
    """Print a token stream as it arrives: the text on stdout and a summary line on
    stderr, or (``as_json``) one JSON object per chunk. Returns the last chunk, None when
    the stream ended without one."""
    final: generation_pb2.GenerateChunk | None = None
    wrote = False
    try:
        for chunk in chunks:
            if as_json:
                print(protojson.dumps(chunk), flush=True)
            elif chunk.delta:
                sys.stdout.write(chunk.delta)
                sys.stdout.flush()
                wrote = True
            if chunk.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED:
                final = chunk
    except BaseException:
        # Interrupted or failed: end the partial line so the error message (or the
        # shell prompt) starts its own.
        if wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    if not as_json:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if final is not None:
            print(_finish_line(final), file=sys.stderr)
    return final


def follow_generation(
    call: Iterable[generation_pb2.GenerateChunk], as_json: bool, interrupted: str
) -> int:
    """Print a streaming call's chunks (see :func:`print_generation`); the exit status."""
    try:
        final = print_generation(call, as_json)
    except KeyboardInterrupt:
        # Cancelling tells the gateway now that nobody is reading. With tracing on, the
        # call comes wrapped in a generator that cannot cancel; closing the channel on
        # the way out ends it then.
        if isinstance(call, grpc.Call):
            call.cancel()
        print(interrupted, file=sys.stderr)
        return 130
    if final is None:
        print("error: the stream ended before its last chunk", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class KindCommand:
    """How the CLI handles one kind: its command, arguments, request and sync RPC."""

    command: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    request: Callable[[argparse.Namespace], Message]
    call: Callable[[grpc.Channel, Any, float], Message]
    human: Callable[[Any], str]


KINDS: dict[str, KindCommand] = {
    "classification": KindCommand(
        "classify",
        "zero-shot classification",
        _classify_args,
        classify_request,
        lambda ch, r, t: classification_pb2_grpc.ClassificationStub(ch).Classify(r, timeout=t),
        _classification_text,
    ),
    "ner": KindCommand(
        "ner",
        "named entities with character offsets",
        _ner_args,
        ner_request,
        lambda ch, r, t: ner_pb2_grpc.NerStub(ch).Recognize(r, timeout=t),
        _ner_text,
    ),
    "summarization": KindCommand(
        "summarize",
        "summary (extractive by default)",
        _summarize_args,
        summarize_request,
        lambda ch, r, t: summarization_pb2_grpc.SummarizationStub(ch).Summarize(r, timeout=t),
        _summary_text,
    ),
    "generation": KindCommand(
        "generate",
        "text generation (streamed as it is written)",
        _generate_args,
        generate_request,
        lambda ch, r, t: generation_pb2_grpc.GenerationStub(ch).Generate(r, timeout=t),
        _generation_text,
    ),
}
# A batch document fills a request's text; generation takes a prompt and sampling
# options that `batch run` has no arguments for.
BATCH_KINDS = sorted(kind for kind in KINDS if kind != "generation")
BY_COMMAND = {k.command: kind for kind, k in KINDS.items()}


def human_result(result: tasks_pb2.TaskResult) -> str:
    status = common_pb2.TaskStatus.Name(result.status).removeprefix("TASK_STATUS_")
    lines = [f"task {result.task_id}: {status}"]
    if result.HasField("error") and result.error.message:
        lines.append(f"error: {result.error.message}")
    output = result.WhichOneof("output")
    if output:
        lines.append(protojson.dumps(getattr(result, output), indent=2))
    return "\n".join(lines)


def cancel_text(response: tasks_pb2.CancelTaskResponse) -> str:
    verdict = "cancelled" if response.cancelled else "not cancelled"
    return f"{verdict}\n{human_result(response.result)}"


def health_text(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def models_text(response: models_pb2.ListModelsResponse) -> str:
    lines = [
        f"{common_pb2.Kind.Name(m.kind).removeprefix('KIND_').lower():<15} {m.name:<22} "
        f"{m.engine:<20} {m.version}{'  (default)' if m.default else ''}"
        for m in response.models
    ]
    return "\n".join(lines) or "no models advertised (no worker running?)"


def batch_status_text(status: tasks_pb2.BatchStatus) -> str:
    state = "complete" if status.complete else ("sealed" if status.sealed else "open")
    return (
        f"batch {status.batch_id}: {state}\n"
        f"submitted {status.submitted}, rejected {status.rejected}, pending {status.pending}, "
        f"running {status.running}\n"
        f"succeeded {status.succeeded}, failed {status.failed} "
        f"(dead-lettered {status.dead_lettered}), cancelled {status.cancelled}, "
        f"deadline exceeded {status.deadline_exceeded}"
    )
