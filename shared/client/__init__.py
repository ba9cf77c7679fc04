"""The ``nlp`` client: the command line (``cli``), bulk files (``bulk``) and the gRPC
connection built from settings (``connection``). It talks to the gateway only, so it
imports ``shared.contracts``, ``shared.observability`` and generated code, never
transport or runtime.
"""
