"""The Celery bundle message: the tasks one Celery message carries from the intake to a
worker (and from a worker to its own retry).

On the wire, the task's kwargs hold the base64 envelopes (``CELERY_KWARG_ENVELOPES``)
and the hand-off time (``CELERY_KWARG_HANDED_AT``); the ``nlp_trace`` header
(``CELERY_HEADER_TRACE``) holds one W3C trace context per envelope, in the same order.
Written by :func:`encode_bundle`, read by :func:`decode_bundle`, nowhere else.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nlp.v1 import tasks_pb2
from shared.contracts.envelope import decode_b64, encode_b64
from shared.contracts.names import (
    CELERY_HEADER_TRACE,
    CELERY_KWARG_ENVELOPES,
    CELERY_KWARG_HANDED_AT,
)

Carrier = Mapping[str, str]


class MalformedBundleError(ValueError):
    """A Celery message that is not a bundle (missing or mistyped fields)."""


@dataclass(frozen=True)
class Bundle:
    """The tasks of one Celery message, as sent.

    The envelopes stay encoded: the worker decodes them one by one
    (:meth:`envelope`), so that a corrupted one is dead-lettered alone.
    """

    envelopes: tuple[str, ...]
    # Epoch seconds the intake handed the bundle to Celery (kept across retries).
    handed_at: float
    traces: tuple[Carrier, ...] = field(default=())

    @classmethod
    def of(
        cls,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        handed_at: float,
        traces: Sequence[Carrier] = (),
    ) -> Bundle:
        """The bundle of ``envelopes``, each with its trace context (same order)."""
        return cls(tuple(encode_b64(e) for e in envelopes), handed_at, tuple(traces))

    def trace(self, index: int) -> Carrier:
        """The trace context of the ``index``-th envelope (empty when it has none)."""
        return self.traces[index] if index < len(self.traces) else {}

    @staticmethod
    def envelope(encoded: str) -> tasks_pb2.TaskEnvelope:
        """One of :attr:`envelopes`, decoded; raises on a corrupted one."""
        return decode_b64(encoded)

    @staticmethod
    def raw(encoded: str) -> bytes:
        """The bytes of an envelope that would not decode, as best they can be had (for
        its dead letter)."""
        try:
            return base64.b64decode(encoded)
        except Exception:
            return str(encoded).encode("utf-8", "replace")


def encode_bundle(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Celery task kwargs and headers that carry ``bundle``.

    The headers are typed loosely: Celery's stubs say str -> str, ours carry one context
    per task. Callers may add their own (the intake adds the publish span's context).
    """
    kwargs: dict[str, Any] = {
        CELERY_KWARG_ENVELOPES: list(bundle.envelopes),
        CELERY_KWARG_HANDED_AT: bundle.handed_at,
    }
    headers: dict[str, Any] = {CELERY_HEADER_TRACE: [dict(t) for t in bundle.traces]}
    return kwargs, headers


def decode_bundle(kwargs: Mapping[str, Any], traces: Any = None) -> Bundle:
    """The bundle in a Celery task's kwargs and its ``nlp_trace`` header value (None when
    the message has none); :class:`MalformedBundleError` when it is not one."""
    envelopes = kwargs.get(CELERY_KWARG_ENVELOPES)
    if not isinstance(envelopes, list | tuple) or not all(isinstance(e, str) for e in envelopes):
        raise MalformedBundleError(f"{CELERY_KWARG_ENVELOPES}: expected a list of base64 strings")
    try:
        handed_at = float(kwargs[CELERY_KWARG_HANDED_AT])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedBundleError(f"{CELERY_KWARG_HANDED_AT}: {exc!r}") from None
    traces = traces or ()
    if not isinstance(traces, list | tuple) or not all(isinstance(t, Mapping) for t in traces):
        raise MalformedBundleError(f"{CELERY_HEADER_TRACE}: expected a list of mappings")
    return Bundle(tuple(envelopes), handed_at, tuple(traces))


def decode_delivered(kwargs: Mapping[str, Any], request: object) -> Bundle:
    """The bundle of the Celery message being run: its kwargs, and the ``nlp_trace``
    header, which Celery hands over as an attribute of the task's ``request``."""
    return decode_bundle(kwargs, getattr(request, CELERY_HEADER_TRACE, None))
