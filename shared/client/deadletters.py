"""``nlp dlq``: the dead letters, through the gateway's DeadLetters service (an admin key).

nlp dlq list [--since 2h] [--kind ner] [--stage intake] [--reason "model not served"]
nlp dlq show 0:1234
nlp dlq replay 0:1234 0:1240 [--dry-run]
nlp dlq replay --since 2h --reason "model not served" [--dry-run]
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from typing import Any

import grpc

from nlp.v1 import deadletters_pb2, deadletters_pb2_grpc
from shared.client.commands import UsageError, print_message
from shared.contracts import protojson
from shared.contracts.envelope import seconds, timestamp
from shared.contracts.names import ALL_KINDS, KIND_NAMES, kind_value

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an ISO
    8601 time (UTC when it names no zone); the Unix time it means."""
    match = _DURATION_RE.match(text.strip())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected a duration such as 30m, 2h, 7d or an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    dlq = sub.add_parser("dlq", help="dead letters (an admin key)").add_subparsers(
        dest="dlq_command", required=True
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", help="written since: 30m, 2h, 7d or an ISO 8601 time")
    filters.add_argument("--kind", choices=ALL_KINDS)
    filters.add_argument("--stage", choices=("intake", "worker"))
    filters.add_argument("--reason", default="", help="reasons containing this text")
    listing = dlq.add_parser(
        "list", parents=[common, filters], help="counts by kind, stage and reason; the newest"
    )
    listing.add_argument("--newest", type=int, default=20, help="newest records shown (≤1000)")
    show = dlq.add_parser("show", parents=[common], help="one record, decoded")
    show.add_argument("id", help="<partition>:<offset>, from `nlp dlq list`")
    replay = dlq.add_parser(
        "replay",
        parents=[common, filters],
        help="send records back to their task topics (by id, or all the filter matches)",
    )
    replay.add_argument("ids", nargs="*", help="<partition>:<offset> ids")
    replay.add_argument("--dry-run", action="store_true", help="check only; send nothing")


def _filter(args: argparse.Namespace) -> deadletters_pb2.DeadLetterFilter:
    message = deadletters_pb2.DeadLetterFilter(stage=args.stage or "", reason=args.reason)
    if args.kind:
        message.kind = kind_value(args.kind)
    if args.since:
        message.since.CopyFrom(timestamp(parse_since(args.since)))
    return message


def run(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = deadletters_pb2_grpc.DeadLettersStub(channel)
    if args.dlq_command == "list":
        listing = stub.List(
            deadletters_pb2.ListDeadLettersRequest(filter=_filter(args), newest=args.newest),
            timeout=args.timeout,
        )
        print_message(listing, args.json, list_text)
        return 0
    if args.dlq_command == "show":
        letter = stub.Get(deadletters_pb2.GetDeadLetterRequest(id=args.id), timeout=args.timeout)
        print_message(letter, args.json, show_text)
        return 0
    request = deadletters_pb2.ReplayDeadLettersRequest(ids=args.ids, dry_run=args.dry_run)
    if not args.ids:
        request.filter.CopyFrom(_filter(args))
        if request.filter == deadletters_pb2.DeadLetterFilter():
            raise UsageError("name records to replay: ids, or --since/--kind/--stage/--reason")
    response = stub.Replay(request, timeout=args.timeout)
    print_message(response, args.json, lambda r: replay_text(r, args.dry_run))
    return 0 if not response.refused else 1


def _when(ts: Any) -> str:
    return datetime.fromtimestamp(seconds(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind(kind: int) -> str:
    return KIND_NAMES.get(kind, "?")


def list_text(listing: deadletters_pb2.ListDeadLettersResponse) -> str:
    lines = [f"{listing.matched} dead letters" + (" (scan truncated)" if listing.truncated else "")]
    if listing.counts:
        lines.append(f"{'count':>6}  {'kind':<14}  {'stage':<6}  reason")
        for group in listing.counts:
            lines.append(
                f"{group.count:>6}  {_kind(group.kind):<14}  {group.stage:<6}  {group.reason}"
                f"  (last {group.last_id} at {_when(group.last_at)})"
            )
    if listing.newest:
        lines += ["", f"newest {len(listing.newest)}:"]
        for letter in listing.newest:
            lines.append(
                f"{letter.id:<10}  {_when(letter.written_at)}  {_kind(letter.kind):<14}  "
                f"{letter.stage:<6}  {letter.task_id or '-':<32}  {letter.reason[:100]}"
            )
    return "\n".join(lines)


def show_text(letter: deadletters_pb2.DeadLetter) -> str:
    lines = [
        f"id        {letter.id} (written {_when(letter.written_at)})",
        f"reason    {letter.reason}",
        f"stage     {letter.stage}, from {letter.source_topic or '?'}"
        + (
            f" partition {letter.source_partition} offset {letter.source_offset}"
            if letter.source_partition >= 0
            else ""
        ),
        f"kind      {_kind(letter.kind)}",
        f"task      {letter.task_id or '-'} (tenant {letter.tenant or '-'}, "
        f"replayed {letter.replays} times)",
        f"value     {letter.value_bytes} bytes",
        "headers",
    ]
    lines += [f"  {h.name}: {h.value.decode('utf-8', 'replace')}" for h in letter.headers]
    if letter.HasField("envelope"):
        lines += ["envelope", protojson.dumps(letter.envelope, indent=2)]
    else:
        lines.append(f"envelope  does not decode: {letter.undecodable}")
        shown = letter.value[:400]
        more = (
            " …" if len(letter.value) > len(shown) or letter.value_bytes > len(letter.value) else ""
        )
        lines.append(f"value     {shown!r}{more}")
    return "\n".join(lines)


def replay_text(response: deadletters_pb2.ReplayDeadLettersResponse, dry_run: bool) -> str:
    verb = "would replay" if dry_run else "replayed"
    lines = [f"{verb} {response.replayed}, refused {response.refused}"]
    for outcome in response.outcomes:
        if outcome.replayed:
            lines.append(f"  {outcome.id:<10}  {verb} task {outcome.task_id} to {outcome.topic}")
        else:
            lines.append(f"  {outcome.id:<10}  refused: {outcome.refused}")
    return "\n".join(lines)
