"""Transport: how bytes move between processes, one home per wire format.

Kafka producers, topics and records (``kafka``) and the task consumer
(``kafka_consumer``), the Celery bundle message (``bundle``), the Redis result store and
its done notice (``results``) and the gateway's wait on it (``waiter``), token streams
(``streams``), the model catalog hash (``catalog``), the Celery app (``celery_app``) and
outage handling for Redis and Kafka (``outages``).
Imports ``shared.contracts`` and ``shared.observability``; used by the runtime, the
gateway and the tools, never by the client.
"""
