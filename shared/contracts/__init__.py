"""Contracts: what every process agrees on, and nothing else.

Names of topics, queues, headers and keys (``names``), the task envelope and its codec
(``envelope``), the error taxonomy (``errors``), typed settings (``settings``) and the
JSON form of protobuf messages (``protojson``). The bottom layer: it imports only the
generated code under ``gen/`` and third-party libraries; every other subpackage may
import it.
"""
