"""Worker runtime: what every worker kind runs on. The intake (Kafka to Celery, with
back-pressure), the worker (Celery task to result, retries, dead letters), and
micro-batching and engines. Imports contracts, observability, transport and models;
imported by ``services/<kind>/`` only, never by the gateway or the client.
"""
