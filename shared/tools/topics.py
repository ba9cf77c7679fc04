"""Create the platform's Kafka topics, then exit: ``python -m shared.tools.topics``.

Containers run this before the gateway and the intakes start, since the brokers
do not auto-create topics. Idempotent: existing topics are left as they are.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from kafka.errors import KafkaError

from shared.contracts.settings import ServiceSettings
from shared.observability.logs import configure_logging
from shared.transport.kafka import TASK_TOPIC_PARTITIONS, ensure_topics

log = logging.getLogger("shared.tools.topics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.tools.topics", description=__doc__)
    parser.add_argument("--partitions", type=int, default=TASK_TOPIC_PARTITIONS)
    parser.add_argument(
        "--replication", type=int, default=1, help="replication factor of new topics"
    )
    parser.add_argument(
        "--min-insync-replicas",
        type=int,
        default=None,
        help="min.insync.replicas of new topics (default: the replication factor minus one)",
    )
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to keep retrying an unreachable broker"
    )
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    configure_logging("topics", settings.log_level)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            topics = ensure_topics(
                settings,
                partitions=args.partitions,
                replication=args.replication,
                min_insync=args.min_insync_replicas,
            )
        except KafkaError as exc:
            # A broker that has just started may refuse clients for a few seconds.
            if time.monotonic() >= deadline:
                log.error("could not create topics", extra={"error": repr(exc)})
                return 1
            log.warning("broker not ready; retrying", extra={"error": repr(exc)})
            time.sleep(2)
            continue
        log.info("topics ready", extra={"topics": topics})
        return 0


if __name__ == "__main__":
    sys.exit(main())
