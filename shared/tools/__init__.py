"""Operator tools run as ``python -m shared.tools.<name>``: ``protogen`` regenerates
``gen/`` from ``protos/``; ``topics`` creates the Kafka topics. The top layer: it may
import any other subpackage and nothing imports it.
"""
