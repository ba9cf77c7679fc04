"""Write tasks straight to Kafka, as another internal system would (no gateway).

    python -m examples.kafka_producer --bootstrap 127.0.0.1:9092 --labels sports,politics \\
        --wait "The striker scored twice." "Parliament passed the budget."
    python -m examples.kafka_producer --input docs.jsonl --kind ner --wait

Each document becomes one ``nlp.v1.TaskEnvelope`` on ``nlp.tasks.<kind>.batch``, the
batch lane's topic, where every direct producer writes (see ``docs/kafka-producers.md``):
bulk work that yields to the gateway's interactive and standard tasks. The envelopes ask
for their results on ``nlp.results`` (``reply.publish_result``) with the document id as
``correlation_id``; ``--wait`` reads them back from there and prints one JSON line per
document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from nlp.v1 import classification_pb2, ner_pb2, summarization_pb2, tasks_pb2
from shared.contracts import protojson
from shared.contracts.envelope import AnyRequest, make_envelope
from shared.contracts.names import Names, lane_value
from shared.transport.kafka import task_headers

# Direct producers write to the batch lane; the topic is the lane (an envelope naming
# another lane is dead-lettered), so the envelopes say so too.
LANE = "batch"


def documents(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(id, text) pairs from --input (JSONL of {"id", "text"}) or the arguments."""
    if args.input:
        with Path(args.input).open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    yield str(record["id"]), str(record["text"])
    for number, text in enumerate(args.texts, 1):
        yield f"arg-{number}", text


def request_for(kind: str, text: str, labels: Sequence[str]) -> AnyRequest:
    if kind == "classification":
        return classification_pb2.ClassifyRequest(
            text=text, labels=[classification_pb2.Label(name=n) for n in labels]
        )
    if kind == "ner":
        return ner_pb2.NerRequest(text=text)
    return summarization_pb2.SummarizeRequest(text=text, max_sentences=2)


def produce(args: argparse.Namespace, names: Names) -> dict[str, str]:
    """Send every document; returns task id → document id."""
    # acks=all + idempotence: a send that returned is durable, and retries never duplicate.
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap.split(","), acks="all", enable_idempotence=True
    )
    labels = [n.strip() for n in args.labels.split(",") if n.strip()]
    sent: dict[str, str] = {}
    try:
        for doc_id, text in documents(args):
            # Without this project's package, fill the same fields by hand: task_id (a
            # unique [A-Za-z0-9._:-] string), kind, created_at, deadline (when it must
            # have started), the request in the field named after the kind, and reply
            # (lane may stay unset: the topic's lane is taken).
            envelope = make_envelope(
                args.kind,
                request_for(args.kind, text, labels),
                deadline_s=args.deadline,
                lane=lane_value(LANE),
                reply=tasks_pb2.ReplyOptions(publish_result=True, correlation_id=doc_id),
            )
            producer.send(
                names.task_topic(args.kind, LANE),
                value=envelope.SerializeToString(),
                headers=task_headers(envelope.task_id, args.kind),
            )
            sent[envelope.task_id] = doc_id
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return sent


def results(
    args: argparse.Namespace, names: Names, consumer: KafkaConsumer, sent: dict[str, str]
) -> int:
    """Print each sent task's result from the results topic; 1 if some never came."""
    waiting = set(sent)
    deadline = time.monotonic() + args.timeout
    while waiting and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                result = tasks_pb2.TaskResult.FromString(record.value)
                # At least once: a result may repeat after a crash; keep the first.
                if result.task_id in waiting:
                    waiting.discard(result.task_id)
                    line = protojson.to_dict(result)
                    print(json.dumps({"id": sent[result.task_id], **line}), flush=True)
    for task_id in sorted(waiting):
        print(f"no result for {sent[task_id]} (task {task_id})", file=sys.stderr)
    return 1 if waiting else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.kafka_producer", description=__doc__)
    parser.add_argument("texts", nargs="*", help="documents (ids arg-1, arg-2, …)")
    parser.add_argument("--input", help='JSONL file of {"id", "text"} lines')
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--namespace", default="")
    parser.add_argument(
        "--kind", default="classification", choices=["classification", "ner", "summarization"]
    )
    parser.add_argument("--labels", default="sports,politics,technology")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds to start")
    parser.add_argument("--wait", action="store_true", help="print results from nlp.results")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    args = parser.parse_args(argv)
    names = Names(args.namespace)
    consumer = None
    if args.wait:
        # Positioned at the end before producing, so no result can slip by unseen.
        consumer = KafkaConsumer(bootstrap_servers=args.bootstrap.split(","), group_id=None)
        partitions = [
            TopicPartition(names.results_topic, p)
            for p in consumer.partitions_for_topic(names.results_topic) or ()
        ]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for partition in partitions:
            consumer.position(partition)
    try:
        sent = produce(args, names)
        print(f"sent {len(sent)} tasks to {names.task_topic(args.kind, LANE)}", file=sys.stderr)
        return results(args, names, consumer, sent) if consumer is not None else 0
    finally:
        if consumer is not None:
            consumer.close()


if __name__ == "__main__":
    sys.exit(main())
