"""The model catalog's wire format: a Redis hash per kind, model name → JSON descriptor.

Workers write it (:func:`advertise`) when they start; the gateway reads it
(:class:`ModelCatalog`) to list models and to reject unknown names before publishing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from shared.contracts.envelope import classification_model_problems
from shared.contracts.errors import InvalidRequestError
from shared.contracts.names import Names


def advertise(client: redis.Redis, key: str, descriptors: Sequence[Mapping[str, Any]]) -> None:
    """Replace the hash at ``key`` with these descriptors, atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping={d["name"]: json.dumps(d) for d in descriptors})
    pipe.execute()


def parse_advertised(raw: Mapping[Any, Any]) -> list[dict[str, Any]]:
    """Decode the hash written by :func:`advertise`, sorted by model name."""
    return [json.loads(v) for _, v in sorted(raw.items())]


class ModelCatalog:
    """The gateway's view of advertised models, cached for ``ttl_s`` seconds."""

    def __init__(self, client: Any, names: Names, ttl_s: float = 5.0) -> None:
        self.client = client  # redis.asyncio.Redis
        self.names = names
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def models(self, kind: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        cached = self._cache.get(kind)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        models = parse_advertised(await self.client.hgetall(self.names.models_key(kind)))
        self._cache[kind] = (now, models)
        return models

    async def check(self, kind: str, request: Any) -> None:
        """Reject a model name the kind's workers do not serve, and a classification the
        model cannot do (labels it lacks, or none for a zero-shot one), when the workers
        said what they serve."""
        served = {m["name"]: m for m in await self.models(kind)}
        if not served:
            return  # nothing advertised yet: the worker checks
        model = request.model
        if model and model not in served:
            raise InvalidRequestError(
                [f"unknown {kind} model {model!r}; available: {', '.join(sorted(served))}"]
            )
        if kind == "classification":
            chosen = served.get(model) or next((m for m in served.values() if m["default"]), None)
            if chosen is not None:
                problems = classification_model_problems(
                    request,
                    chosen["name"],
                    chosen.get("labels", ()),
                    bool(chosen.get("multi_label", False)),
                )
                if problems:
                    raise InvalidRequestError(problems)
