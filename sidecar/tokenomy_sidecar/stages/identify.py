"""Stage 1: which cache partition a request belongs to, and whether caching applies.

Partitions are hard walls: an entry stored under one is never served under
another. A request that should be partitioned by a header but lacks it is
not cached at all rather than shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenomy_api.compiled import SidecarConfig
from tokenomy_sidecar.pipeline import Answer, CacheDecision, CacheRecord, Exchange, Quiet


def partition_of(config: SidecarConfig, headers: Mapping[str, str]) -> str | None:
    """The partition of a request, or None when its partition header is missing."""
    scope = config.cache.scope
    policy = config.policy
    if scope.type == "namespace":
        return f"namespace/{policy.namespace}"
    if scope.type == "header":
        assert scope.header is not None  # CacheScope's rule
        value = headers.get(scope.header)
        return f"policy/{policy.key}/header/{value}" if value else None
    return f"policy/{policy.key}"


def _cache_control(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Cache-Control") or headers.get("cache-control") or ""
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def may_keep(config: SidecarConfig, headers: Mapping[str, str]) -> bool:
    """Whether anything derived from the request may be stored at all, cache on or off: not
    for a client that said ``no-store``, nor one that sent a never-cache header."""
    if "no-store" in _cache_control(headers):
        return False
    return not any(h in headers for h in config.cache.never.headers)


def decide(
    config: SidecarConfig, body: Mapping[str, Any], headers: Mapping[str, str]
) -> CacheDecision:
    """Decide caching for one request (pure: config, body and headers in, decision out)."""
    cache = config.cache
    partition = partition_of(config, headers) or ""

    def off(reason: str) -> CacheDecision:
        return CacheDecision(partition, lookup=False, store=False, reason=reason)

    if not (cache.exact.enabled or cache.semantic.enabled):
        return off("disabled")
    if not partition:
        return off("no-partition-header")
    directives = _cache_control(headers)
    if "no-store" in directives:
        return off("no-store")
    never = cache.never
    if never.with_tools and (body.get("tools") or body.get("functions")):
        return off("tools")
    temperature = body.get("temperature")
    if (
        never.temperature_above is not None
        and isinstance(temperature, (int, float))
        and temperature > never.temperature_above
    ):
        return off("temperature")
    if any(h in headers for h in never.headers):
        return off("header")
    if "no-cache" in directives:
        return CacheDecision(partition, lookup=False, store=True, reason="no-cache")
    return CacheDecision(partition, lookup=True, store=True, reason="")


class Identify(Quiet):
    """Puts the request's partition and caching decision in its cache record."""

    name = "identify"
    optional = True

    async def request(self, x: Exchange) -> Answer | None:
        """Decide; never answers."""
        x.cache = CacheRecord(decide(x.runtime.config, x.chat.body, x.client_headers))
        return None
