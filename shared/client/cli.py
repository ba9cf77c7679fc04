"""``nlp``: the command-line client of the gateway.

    nlp classify --labels sports,politics,technology "The striker scored twice."
    nlp ner "Barack Obama visited Paris in 2015 with Angela Merkel."
    nlp summarize --max-sentences 2 report.txt
    nlp generate --max-tokens 64 --temperature 0.7 "Write a haiku about the sea."
    nlp generate --system "Answer in one sentence." --stop END question.txt
    nlp generate --raw --max-tokens 32 "Once upon a time"   (continue text, no chat template)
    nlp models
    nlp task submit classification|ner|summarization|generation ...   (prints the task id)
    nlp task get|wait|cancel TASK_ID
    nlp task stream TASK_ID   (a generation task's text as it is written)
    nlp batch run --kind ner --input docs.jsonl --output results.jsonl
    nlp batch status|results BATCH_ID
    nlp health

Text comes from the positional argument (a path to an existing file is read),
``--file``, or standard input (``-`` or nothing). ``nlp generate`` prints the text as
it is written and a summary line on stderr; Ctrl-C cancels the generation. ``--json``
prints JSON (``nlp generate``: the whole response at the end);
``--target`` (or ``NLP_TARGET``) picks the gateway. The API key comes from
``NLP_API_KEY`` or a file (``--api-key-file``, ``NLP_API_KEY_FILE``), never from the
command line; TLS with ``NLP_TLS=1`` or a CA bundle (``--ca-file``, ``NLP_CA_FILE``),
client certificates with ``NLP_CLIENT_CERT_FILE`` and ``NLP_CLIENT_KEY_FILE``. The standard ``OTEL_*`` variables
trace the client's calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.client import bulk
from shared.client.connection import ClientSettings, connect
from shared.contracts import protojson
from shared.observability import telemetry


def _print(message: Message, as_json: bool, human: Callable[[Any], str]) -> None:
    print(protojson.dumps(message, indent=2) if as_json else human(message))


def _read_text(args: argparse.Namespace) -> str:
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
    p.add_argument("--labels", required=True, help="comma-separated candidate labels")
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
        text=_read_text(args),
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
    return ner_pb2.NerRequest(text=_read_text(args), labels=labels, model=args.model)


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
        text=_read_text(args),
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


def generate_request(args: argparse.Namespace) -> generation_pb2.GenerateRequest:
    text = _read_text(args)
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
_BATCH_KINDS = sorted(kind for kind in KINDS if kind != "generation")
_BY_COMMAND = {k.command: kind for kind, k in KINDS.items()}


def _human_result(result: tasks_pb2.TaskResult) -> str:
    status = common_pb2.TaskStatus.Name(result.status).removeprefix("TASK_STATUS_")
    lines = [f"task {result.task_id}: {status}"]
    if result.HasField("error") and result.error.message:
        lines.append(f"error: {result.error.message}")
    output = result.WhichOneof("output")
    if output:
        lines.append(protojson.dumps(getattr(result, output), indent=2))
    return "\n".join(lines)


def _cancel_text(response: tasks_pb2.CancelTaskResponse) -> str:
    verdict = "cancelled" if response.cancelled else "not cancelled"
    return f"{verdict}\n{_human_result(response.result)}"


def _health_text(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _models_text(response: models_pb2.ListModelsResponse) -> str:
    lines = [
        f"{common_pb2.Kind.Name(m.kind).removeprefix('KIND_').lower():<15} {m.name:<22} "
        f"{m.engine:<20} {m.version}{'  (default)' if m.default else ''}"
        for m in response.models
    ]
    return "\n".join(lines) or "no models advertised (no worker running?)"


def build_parser() -> argparse.ArgumentParser:
    settings = ClientSettings()
    parser = argparse.ArgumentParser(
        prog="nlp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=settings.target, help="gateway host:port")
    parser.add_argument(
        "--timeout", type=float, default=settings.timeout_s, help="RPC deadline (s)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    # Never the key itself as an argument: `ps` shows arguments to every local user.
    parser.add_argument(
        "--api-key-file", help="file with the API key (default: NLP_API_KEY_FILE or NLP_API_KEY)"
    )
    parser.add_argument("--ca-file", help="CA bundle to verify a TLS gateway (NLP_CA_FILE)")
    # The same options after the command (`nlp classify --json ...`); SUPPRESS keeps
    # the top-level value unless they are given there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    for kind in KINDS.values():
        kind.add_args(sub.add_parser(kind.command, parents=[common], help=kind.help))
    sub.add_parser("models", parents=[common], help="models the workers serve")
    sub.add_parser("health", parents=[common], help="gateway health")

    task = sub.add_parser("task", help="asynchronous tasks").add_subparsers(
        dest="task_command", required=True
    )
    submit = task.add_parser("submit", help="submit a task; prints its id").add_subparsers(
        dest="kind", required=True
    )
    for name, kind in KINDS.items():
        p = submit.add_parser(name, parents=[common], help=kind.help)
        kind.add_args(p)
        p.add_argument("--priority", type=int, default=0)
        p.add_argument("--deadline", type=float, default=0, help="seconds it may wait to start")
        p.add_argument("--publish", action="store_true", help="also publish to the results topic")
        p.add_argument("--correlation-id", default="")
    for name in ("get", "wait", "cancel", "stream"):
        p = task.add_parser(name, parents=[common])
        p.add_argument("task_id")
        if name == "wait":
            p.add_argument("--wait", type=float, default=30.0, help="seconds to wait at most")
    _batch_parsers(sub, common)
    return parser


def _batch_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    batch = sub.add_parser("batch", help="bulk documents").add_subparsers(
        dest="batch_command", required=True
    )
    run = batch.add_parser(
        "run",
        parents=[common],
        help="process a JSONL file or a folder of .txt files; resumable",
        description=bulk.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--kind", required=True, choices=_BATCH_KINDS)
    run.add_argument(
        "--input", required=True, type=Path, help='JSONL of {"id", "text"}, or a folder of .txt'
    )
    run.add_argument("--output", required=True, type=Path, help="JSONL results (appended)")
    run.add_argument("--window", type=int, default=1000, help="documents in flight at most")
    run.add_argument("--chunk", type=int, default=100, help="documents per stream message")
    run.add_argument("--publish", action="store_true", help="also publish to the results topic")
    run.add_argument("--deadline", type=float, default=0, help="seconds a task may wait to start")
    run.add_argument("--priority", type=int, default=0)
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", default=None, help="progress bar")
    shown.add_argument("--no-progress", dest="progress", action="store_false")
    # The kinds' own options, applied to every document.
    run.add_argument("--model", default="")
    run.add_argument("--labels", default="", help="classification: candidates; ner: filter")
    run.add_argument("--describe", action="append", default=[], metavar="LABEL=DESCRIPTION")
    run.add_argument("--multi-label", action="store_true")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-sentences", type=int)
    length.add_argument("--ratio", type=float)
    run.add_argument("--abstractive", action="store_true")
    status = batch.add_parser("status", parents=[common], help="counts by state")
    status.add_argument("batch_id")
    results = batch.add_parser("results", parents=[common], help="results as JSON lines")
    results.add_argument("batch_id")
    results.add_argument("--cursor", default="", help="resume after this cursor")
    results.add_argument("--no-follow", action="store_true", help="stop at what is finished now")


def _task_template(args: argparse.Namespace) -> tasks_pb2.SubmitRequest:
    """The SubmitRequest every document of a batch gets (the text is filled per document)."""
    if args.kind == "classification" and not args.labels.strip():
        raise UsageError("--labels is required for classification")
    kind_args = argparse.Namespace(**vars(args), text="", file=None)
    template = tasks_pb2.SubmitRequest(
        priority=args.priority, deadline_ms=int(args.deadline * 1000)
    )
    getattr(template, args.kind).CopyFrom(KINDS[args.kind].request(kind_args))
    return template


def _batch_run(channel: grpc.Channel, args: argparse.Namespace) -> int:
    if not args.input.exists():
        raise UsageError(f"no such input: {args.input}")
    if args.window < 1 or args.chunk < 1:
        raise UsageError("--window and --chunk must be at least 1")
    template = _task_template(args)

    def make_task(text: str) -> tasks_pb2.SubmitRequest:
        task = tasks_pb2.SubmitRequest()
        task.CopyFrom(template)
        getattr(task, args.kind).text = text
        return task

    done = bulk.scan_output(args.output)
    total = bulk.count_input(args.input)
    skipped = 0

    def docs() -> Iterator[bulk.Doc]:
        nonlocal skipped
        for doc in bulk.read_input(args.input):
            if doc.id in done:
                skipped += 1
            else:
                yield doc

    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = bulk.Progress(max(total - len(done), 0), sys.stderr, show)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a", encoding="utf-8") as output:
        runner = bulk.BatchRun(
            tasks_pb2_grpc.TasksStub(channel),
            make_task,
            output,
            window=args.window,
            chunk=args.chunk,
            publish_results=args.publish,
            progress=progress,
        )
        summary = runner.run(docs())
    summary.total, summary.skipped = total, skipped
    print(summary.text(), file=sys.stderr)
    if args.json:
        print(json.dumps(summary.as_dict()))
    if summary.interrupted:
        return 130
    if summary.error:
        print(
            f"error: {summary.error}; {args.output} holds every result that finished: "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    return 0 if summary.failed + summary.rejected == 0 else 1


def _batch_command(channel: grpc.Channel, args: argparse.Namespace) -> int:
    tasks = tasks_pb2_grpc.TasksStub(channel)
    if args.batch_command == "run":
        return _batch_run(channel, args)
    if args.batch_command == "status":
        status = tasks.GetBatch(
            tasks_pb2.GetBatchRequest(batch_id=args.batch_id), timeout=args.timeout
        )
        _print(status, args.json, _batch_status_text)
        return 0
    request = tasks_pb2.StreamBatchResultsRequest(
        batch_id=args.batch_id, cursor=args.cursor, no_follow=args.no_follow
    )
    for item in tasks.StreamBatchResults(request):
        line = bulk.result_line(item.result)
        line["cursor"] = item.cursor
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


def _batch_status_text(status: tasks_pb2.BatchStatus) -> str:
    state = "complete" if status.complete else ("sealed" if status.sealed else "open")
    return (
        f"batch {status.batch_id}: {state}\n"
        f"submitted {status.submitted}, rejected {status.rejected}, pending {status.pending}, "
        f"running {status.running}\n"
        f"succeeded {status.succeeded}, failed {status.failed} "
        f"(dead-lettered {status.dead_lettered}), cancelled {status.cancelled}, "
        f"deadline exceeded {status.deadline_exceeded}"
    )


class UsageError(Exception):
    """A command line that cannot work (exit status 2)."""


def _task_command(channel: grpc.Channel, args: argparse.Namespace) -> int:
    tasks = tasks_pb2_grpc.TasksStub(channel)
    command, task_id, timeout = args.task_command, getattr(args, "task_id", ""), args.timeout
    if command == "submit":
        request = tasks_pb2.SubmitRequest(
            priority=args.priority,
            deadline_ms=int(args.deadline * 1000),
            reply=tasks_pb2.ReplyOptions(
                publish_result=args.publish, correlation_id=args.correlation_id
            ),
        )
        getattr(request, args.kind).CopyFrom(KINDS[args.kind].request(args))
        _print(tasks.Submit(request, timeout=timeout), args.json, lambda s: s.task_id)
    elif command == "get":
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=timeout)
        _print(result, args.json, _human_result)
    elif command == "wait":
        request_wait = tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=int(args.wait * 1000))
        _print(tasks.Wait(request_wait, timeout=args.wait + 10), args.json, _human_result)
    elif command == "stream":
        call = generation_pb2_grpc.GenerationStub(channel).StreamTask(
            generation_pb2.StreamTaskRequest(task_id=task_id), timeout=timeout
        )
        # Cancelling StreamTask leaves the task running (unlike GenerateStream).
        interrupted = f"interrupted; task {task_id} goes on (nlp task cancel {task_id})"
        return follow_generation(call, args.json, interrupted)
    else:
        cancel = tasks_pb2.CancelTaskRequest(task_id=task_id)
        _print(tasks.Cancel(cancel, timeout=timeout), args.json, _cancel_text)
    return 0


def run(args: argparse.Namespace) -> int:
    settings = ClientSettings()
    if args.api_key_file:
        settings = settings.model_copy(update={"api_key_file": Path(args.api_key_file)})
    if args.ca_file:
        settings = settings.model_copy(update={"ca_file": Path(args.ca_file)})
    with connect(settings, args.target) as channel:
        if args.command == "generate" and not args.json:
            call = generation_pb2_grpc.GenerationStub(channel).GenerateStream(
                generate_request(args), timeout=args.timeout
            )
            return follow_generation(call, False, "interrupted; generation cancelled")
        if args.command in _BY_COMMAND:
            kind = KINDS[_BY_COMMAND[args.command]]
            response = kind.call(channel, kind.request(args), args.timeout)
            _print(response, args.json, kind.human)
        elif args.command == "models":
            stub = models_pb2_grpc.ModelsStub(channel)
            listing = stub.List(models_pb2.ListModelsRequest(), timeout=args.timeout)
            _print(listing, args.json, _models_text)
        elif args.command == "health":
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
            _print(health, args.json, _health_text)
        elif args.command == "batch":
            return _batch_command(channel, args)
        else:
            return _task_command(channel, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, a command's RPCs are client spans: the roots
    # of the traces the gateway and workers continue.
    telemetry.setup_tracing("nlp-cli")
    telemetry.instrument_grpc_client()
    try:
        return run(args)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"error: {code.name}: {details}", file=sys.stderr)
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside a batch run's own handling (its first pass over the input,
        # `batch results`, `task wait`): nothing half-done to report, so no traceback.
        print("interrupted", file=sys.stderr)
        return 130


# Demo requests `make run` sends, one per kind that has a worker.
DEMOS: dict[str, list[str]] = {
    "classification": [
        "classify",
        "--labels",
        "sports,politics,technology",
        "The striker scored twice in the final.",
    ],
    "ner": ["ner", "Barack Obama visited Paris in 2015 with Angela Merkel."],
    "summarization": [
        "summarize",
        "--max-sentences",
        "2",
        "The city council met on Monday to debate the new transit plan. "
        "Residents filled the hall and many spoke against the proposed fare increase. "
        "The plan adds three bus lines and extends the tram to the airport. "
        "The council will vote on the plan next month after a final public hearing.",
    ],
    "generation": [
        "generate",
        "--max-tokens",
        "32",
        "--temperature",
        "0",
        "Write one sentence about the sea.",
    ],
}


def demo(target: str, kinds: Iterable[str]) -> None:
    """Send each available kind's demo request and print the command and its result."""
    for kind in kinds:
        argv = DEMOS.get(kind)
        if argv is None:
            continue
        shown = " ".join(repr(a) if " " in a else a for a in argv)
        print(f"\n$ nlp --target {target} --json {shown}")
        main(["--target", target, "--json", *argv])
    print()


if __name__ == "__main__":
    sys.exit(main())
