"""``nlp``: the command-line client of the gateway.

    nlp classify --labels sports,politics,technology "The striker scored twice."
    nlp task submit classification --labels a,b "some text"
    nlp task get|wait|cancel TASK_ID
    nlp health

``--json`` prints results as JSON; ``--target`` (or ``NLP_TARGET``) picks the gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)


class ClientSettings(BaseSettings):
    """Where the CLI finds the gateway (``NLP_TARGET``)."""

    model_config = SettingsConfigDict(env_prefix="NLP_", extra="ignore")

    target: str = "127.0.0.1:50051"
    timeout_s: float = 60.0


def _as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _print(message: Message, as_json: bool, human: Callable[[Any], str]) -> None:
    print(json.dumps(_as_dict(message), indent=2) if as_json else human(message))


def _read_text(args: argparse.Namespace) -> str:
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if args.text == "-" or args.text is None:
        return sys.stdin.read()
    return str(args.text)


def _labels(spec: str, descriptions: Iterable[str] = ()) -> list[classification_pb2.Label]:
    """``a,b,c`` plus optional ``name=description`` pairs."""
    described = dict(d.split("=", 1) for d in descriptions)
    return [
        classification_pb2.Label(name=name.strip(), description=described.get(name.strip(), ""))
        for name in spec.split(",")
        if name.strip()
    ]


def classify_request(args: argparse.Namespace) -> classification_pb2.ClassifyRequest:
    return classification_pb2.ClassifyRequest(
        text=_read_text(args),
        labels=_labels(args.labels, args.describe),
        multi_label=args.multi_label,
        model=args.model or "",
    )


def _human_classification(response: classification_pb2.ClassifyResponse) -> str:
    width = max(len(s.label) for s in response.scores)
    lines = [f"{s.label:<{width}}  {s.score:.3f}" for s in response.scores]
    return "\n".join([f"top: {response.top_label}", *lines, f"model: {response.model.name}"])


def _human_result(result: tasks_pb2.TaskResult) -> str:
    from nlp.v1 import common_pb2

    status = common_pb2.TaskStatus.Name(result.status).removeprefix("TASK_STATUS_")
    lines = [f"task {result.task_id}: {status}"]
    if result.HasField("error") and result.error.message:
        lines.append(f"error: {result.error.message}")
    output = result.WhichOneof("output")
    if output:
        lines.append(json.dumps(_as_dict(getattr(result, output)), indent=2))
    return "\n".join(lines)


def _add_classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="text to classify ('-' or omitted: stdin)")
    p.add_argument("--file", help="read the text from this file")
    p.add_argument("--labels", required=True, help="comma-separated candidate labels")
    p.add_argument(
        "--describe",
        action="append",
        default=[],
        metavar="LABEL=DESCRIPTION",
        help="what a label means (repeatable)",
    )
    p.add_argument("--multi-label", action="store_true", help="score labels independently")
    p.add_argument("--model", help="model name (default: the kind's default)")


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
    # The same options after the command (`nlp classify --json ...`); SUPPRESS keeps
    # the top-level value unless they are given there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_classify_args(
        sub.add_parser("classify", parents=[common], help="zero-shot classification")
    )
    sub.add_parser("health", parents=[common], help="gateway health")

    task = sub.add_parser("task", help="asynchronous tasks").add_subparsers(
        dest="task_command", required=True
    )
    submit = task.add_parser("submit", help="submit a task; prints its id").add_subparsers(
        dest="kind", required=True
    )
    classify = submit.add_parser("classification", parents=[common])
    _add_classify_args(classify)
    for p in submit.choices.values():
        p.add_argument("--priority", type=int, default=0)
        p.add_argument("--deadline", type=float, default=0, help="seconds it may wait to start")
        p.add_argument("--publish", action="store_true", help="also publish to the results topic")
        p.add_argument("--correlation-id", default="")
    for name in ("get", "wait", "cancel"):
        p = task.add_parser(name, parents=[common])
        p.add_argument("task_id")
        if name == "wait":
            p.add_argument("--wait", type=float, default=30.0, help="seconds to wait at most")
    return parser


def _cancel_text(response: tasks_pb2.CancelTaskResponse) -> str:
    verdict = "cancelled" if response.cancelled else "not cancelled"
    return f"{verdict}\n{_human_result(response.result)}"


def _health_text(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _task_command(channel: grpc.Channel, args: argparse.Namespace) -> None:
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
        request.classification.CopyFrom(classify_request(args))
        _print(tasks.Submit(request, timeout=timeout), args.json, lambda s: s.task_id)
    elif command == "get":
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=timeout)
        _print(result, args.json, _human_result)
    elif command == "wait":
        request_wait = tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=int(args.wait * 1000))
        _print(tasks.Wait(request_wait, timeout=args.wait + 10), args.json, _human_result)
    else:
        cancel = tasks_pb2.CancelTaskRequest(task_id=task_id)
        _print(tasks.Cancel(cancel, timeout=timeout), args.json, _cancel_text)


def run(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.target) as channel:
        if args.command == "classify":
            stub = classification_pb2_grpc.ClassificationStub(channel)
            response = stub.Classify(classify_request(args), timeout=args.timeout)
            _print(response, args.json, _human_classification)
        elif args.command == "health":
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
            _print(health, args.json, _health_text)
        else:
            _task_command(channel, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"error: {code.name}: {details}", file=sys.stderr)
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# Demo requests `make run` sends, one per kind that has a worker.
DEMOS: dict[str, list[str]] = {
    "classification": [
        "classify",
        "--labels",
        "sports,politics,technology",
        "The striker scored twice in the final.",
    ],
}


def demo(target: str, kinds: Iterable[str]) -> None:
    """Send each available kind's demo request and print the command and its result."""
    for kind in kinds:
        argv = DEMOS.get(kind)
        if argv is None:
            continue
        print(
            f"\n$ nlp --target {target} --json {' '.join(repr(a) if ' ' in a else a for a in argv)}"
        )
        main(["--target", target, "--json", *argv])
    print()


if __name__ == "__main__":
    sys.exit(main())
