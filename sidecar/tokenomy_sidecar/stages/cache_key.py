"""The exact-cache key: a hash of the normalised request within its partition."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
"""Fields that do not change the answer; every other field, known or not, is in the key."""


def exact_key(partition: str, body: Mapping[str, Any]) -> str:
    """A key equal for requests that must get the same answer, and only for those.

    Keys are sorted, so field order does not matter; a stream and a non-stream
    request share a key, since the cache replays either form.
    """
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    digest = hashlib.sha256(partition.encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()
