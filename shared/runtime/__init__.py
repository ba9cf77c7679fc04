"""Worker runtime: what every worker kind runs on. The intake (Kafka to Celery, with
back-pressure), the worker (Celery task to result, retries, dead letters; one
``delivery`` per Celery message; the process in ``worker_process``), micro-batching and
engines, and the Protocols of their clients (``ports``). Imports contracts, observability, transport and models;
imported by ``services/<kind>/`` only, never by the gateway or the client.
"""
