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
    nlp dlq list [--since 2h] | show ID | replay ID... [--dry-run]   (an admin key)
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlp.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.client import bulk, deadletters, top
from shared.client.commands import (
    BATCH_KINDS,
    BY_COMMAND,
    KINDS,
    UsageError,
    batch_status_text,
    cancel_text,
    follow_generation,
    generate_request,
    health_text,
    human_result,
    models_text,
    print_message,
)
from shared.client.connection import ClientSettings, connect
from shared.contracts.names import ALL_LANES, lane_value
from shared.observability import telemetry


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
        p.add_argument(
            "--lane",
            choices=ALL_LANES,
            default=None,
            help="the lane to run in (default: standard; docs/lanes.md)",
        )
        p.add_argument("--deadline", type=float, default=0, help="seconds it may wait to start")
        p.add_argument("--publish", action="store_true", help="also publish to the results topic")
        p.add_argument("--correlation-id", default="")
        p.add_argument(
            "--idempotency-key",
            default="",
            help="repeating the command with this key names the same task (docs/api.md)",
        )
    for name in ("get", "wait", "cancel", "stream"):
        p = task.add_parser(name, parents=[common])
        p.add_argument("task_id")
        if name == "wait":
            p.add_argument("--wait", type=float, default=30.0, help="seconds to wait at most")
    _batch_parsers(sub, common)
    deadletters.add_parsers(sub, common)
    watch = sub.add_parser(
        "top", parents=[common], help="live rates, stage latencies, queues and lag (/metrics)"
    )
    watch.add_argument(
        "--state",
        type=Path,
        default=top.DEFAULT_STATE,
        help="the local stack's state file, naming its processes (default: %(default)s)",
    )
    watch.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a process's /metrics URL besides the state file's (repeatable)",
    )
    watch.add_argument("--interval", type=float, default=2.0, help="seconds per view")
    watch.add_argument("--once", action="store_true", help="one view, then exit")
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
    run.add_argument("--kind", required=True, choices=BATCH_KINDS)
    run.add_argument(
        "--input", required=True, type=Path, help='JSONL of {"id", "text"}, or a folder of .txt'
    )
    run.add_argument("--output", required=True, type=Path, help="JSONL results (appended)")
    run.add_argument("--window", type=int, default=1000, help="documents in flight at most")
    run.add_argument("--chunk", type=int, default=100, help="documents per stream message")
    run.add_argument("--publish", action="store_true", help="also publish to the results topic")
    run.add_argument("--deadline", type=float, default=0, help="seconds a task may wait to start")
    run.add_argument(
        "--batch-id",
        default="",
        help="name the batch: a re-run with the same name resubmits no document (docs/bulk.md)",
    )
    run.add_argument(
        "--lane",
        choices=ALL_LANES,
        default=None,
        help="the lane the documents run in (default: batch; docs/lanes.md)",
    )
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


def _lane(name: str | None) -> common_pb2.Lane:
    """The Lane of a ``--lane`` choice; unspecified (the server's default) without one."""
    return common_pb2.LANE_UNSPECIFIED if name is None else lane_value(name)


def _task_template(args: argparse.Namespace) -> tasks_pb2.SubmitRequest:
    """The SubmitRequest every document of a batch gets (the text is filled per document)."""
    if args.kind == "classification" and not args.labels.strip():
        raise UsageError("--labels is required for classification")
    kind_args = argparse.Namespace(**vars(args), text="", file=None)
    template = tasks_pb2.SubmitRequest(lane=_lane(args.lane), deadline_ms=int(args.deadline * 1000))
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
            batch_id=args.batch_id,
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
        print_message(status, args.json, batch_status_text)
        return 0
    request = tasks_pb2.StreamBatchResultsRequest(
        batch_id=args.batch_id, cursor=args.cursor, no_follow=args.no_follow
    )
    for item in tasks.StreamBatchResults(request):
        line = bulk.result_line(item.result)
        line["cursor"] = item.cursor
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


def _task_command(channel: grpc.Channel, args: argparse.Namespace) -> int:
    tasks = tasks_pb2_grpc.TasksStub(channel)
    command, task_id, timeout = args.task_command, getattr(args, "task_id", ""), args.timeout
    if command == "submit":
        request = tasks_pb2.SubmitRequest(
            lane=_lane(args.lane),
            deadline_ms=int(args.deadline * 1000),
            reply=tasks_pb2.ReplyOptions(
                publish_result=args.publish, correlation_id=args.correlation_id
            ),
            idempotency_key=args.idempotency_key,
        )
        getattr(request, args.kind).CopyFrom(KINDS[args.kind].request(args))
        print_message(tasks.Submit(request, timeout=timeout), args.json, lambda s: s.task_id)
    elif command == "get":
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=timeout)
        print_message(result, args.json, human_result)
    elif command == "wait":
        request_wait = tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=int(args.wait * 1000))
        print_message(tasks.Wait(request_wait, timeout=args.wait + 10), args.json, human_result)
    elif command == "stream":
        call = generation_pb2_grpc.GenerationStub(channel).StreamTask(
            generation_pb2.StreamTaskRequest(task_id=task_id), timeout=timeout
        )
        # Cancelling StreamTask leaves the task running (unlike GenerateStream).
        interrupted = f"interrupted; task {task_id} goes on (nlp task cancel {task_id})"
        return follow_generation(call, args.json, interrupted)
    else:
        cancel = tasks_pb2.CancelTaskRequest(task_id=task_id)
        print_message(tasks.Cancel(cancel, timeout=timeout), args.json, cancel_text)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "top":  # reads /metrics, not the gateway
        try:
            urls = top.endpoints(args.state, args.metrics)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.interval <= 0:
            raise UsageError("--interval must be above 0")
        try:
            return top.run(urls, args.interval, args.once, args.json)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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
        if args.command in BY_COMMAND:
            kind = KINDS[BY_COMMAND[args.command]]
            response = kind.call(channel, kind.request(args), args.timeout)
            print_message(response, args.json, kind.human)
        elif args.command == "models":
            stub = models_pb2_grpc.ModelsStub(channel)
            listing = stub.List(models_pb2.ListModelsRequest(), timeout=args.timeout)
            print_message(listing, args.json, models_text)
        elif args.command == "health":
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
            print_message(health, args.json, health_text)
        elif args.command == "batch":
            return _batch_command(channel, args)
        elif args.command == "dlq":
            return deadletters.run(channel, args)
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
