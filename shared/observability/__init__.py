"""Observability and process lifecycle: traces (``telemetry``, with the messaging-span
helpers every producer and consumer uses), structured logs (``logs``), Prometheus
metrics and the /readyz endpoint (``metrics``), readiness signalling (``readiness``)
and heap settling once startup is done (``heap``). Imports only ``shared.contracts``;
any layer above may import it.
"""
