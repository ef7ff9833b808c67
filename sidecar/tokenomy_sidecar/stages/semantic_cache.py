"""Stage 3b: what the semantic cache compares, and within which context.

Only the last user message is embedded. Everything else — system prompt,
earlier turns, parameters — must match exactly, so it goes into the
partition key: a paraphrase is served the answer to its twin only when the
conversation around it is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenomy_sidecar.request import message_text
from tokenomy_sidecar.stages.cache_key import exact_key


def question(body: Mapping[str, Any]) -> str | None:
    """The text to embed: the last message if a user wrote it, else None (no semantic match)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = message_text(last).strip()
    return text or None


def context_partition(partition: str, body: Mapping[str, Any]) -> str:
    """The partition plus a hash of everything but the question itself."""
    messages = list(body.get("messages") or [])
    context = {**body, "messages": [*messages[:-1], {"role": "user"}]}
    return f"{partition}/{exact_key(partition, context)[:32]}"
