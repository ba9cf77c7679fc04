"""Idempotency keys as clients send them: what a key may be, and what makes two
requests the same (shared by the gateway's claims and the intake's)."""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message

MAX_KEY_CHARS = 256


def key_problems(key: str) -> list[str]:
    """What is wrong with a client's idempotency key (empty: nothing)."""
    problems = []
    if len(key) > MAX_KEY_CHARS:
        problems.append(f"idempotency_key is over {MAX_KEY_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        problems.append("idempotency_key has control characters")
    return problems


def fingerprint(kind: str, request: Message) -> str:
    """A digest of what a request asks for (deterministic protobuf bytes)."""
    digest = hashlib.sha256(kind.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def batch_item_key(batch_id: str, item_id: str) -> str:
    """The idempotency key of an item of a batch its client named. It has control
    characters, so that no client's own key can be one of these."""
    return f"\0batch\0{batch_id}\0{item_id}"
