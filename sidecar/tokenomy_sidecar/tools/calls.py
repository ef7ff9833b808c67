"""What both tool proxies share: the cache partition, the store, and metering a call.

A tool call is cached inside the same hard partition as the response cache
(:func:`~tokenomy_sidecar.stages.identify.partition_of`): a request lacking
the partition header is never cached. Each call is counted per tool, its
result tokens before and after trimming, and reported on the usage stream
with its price, so tool calls count in spend and in a task's cost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
from aiohttp import web

from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.errors import error_response
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.runtime import ConfigHolder, Runtime
from tokenomy_sidecar.stages.budget import Keepers
from tokenomy_sidecar.stages.identify import partition_of
from tokenomy_sidecar.stages.metering import LabelBound, attribution
from tokenomy_sidecar.tasks import TASK_HEADER, TASK_MAX
from tokenomy_sidecar.wallet import Reservation

log = logging.getLogger(__name__)

TOOL_LEVER = "tool_cache"
"""The savings lever of tool results served from cache."""


def cache_partition(runtime: Runtime, headers: Mapping[str, str]) -> str | None:
    """The partition a tool call is cached in, or None when it must not be cached."""
    partition = partition_of(runtime.config, headers)
    if partition is None:
        return None
    control = (headers.get("cache-control") or "").lower()
    if "no-store" in control or "no-cache" in control:
        return None
    return f"tools/{partition}"


@dataclass(frozen=True)
class ToolCall:
    """One call's outcome, as metered."""

    tool: str
    """``server/tool`` for MCP, the upstream's name for HTTP."""
    result: str
    """``hit``, ``miss`` (called, cacheable), ``bypass`` (called, not cacheable), ``error``
    (the tool failed or could not be reached), ``refused`` (not allowed by the policy)."""
    price: Decimal = Decimal(0)
    """USD a call of this tool costs."""
    tokens_before: int = 0
    """Estimated tokens of the result as the tool answered."""
    tokens_after: int = 0
    """... and as the agent got it, after trimming."""


class ToolMeter:
    """Counts tool calls into metrics and the usage stream."""

    def __init__(
        self, metrics: Metrics, keepers: Keepers | None, pod_labels: Mapping[str, str]
    ) -> None:
        self.metrics = metrics
        self.keepers = keepers
        self.pod_labels = dict(pod_labels)
        self.bound = LabelBound()
        """Tool names a server lists are its own: bounded like attribution values."""

    async def lookup(self, runtime: Runtime, partition: str, key: str) -> bytes | None:
        """A stored result, or None; a store that is down is a miss."""
        try:
            return await runtime.store.get(partition, key)
        except Exception:
            log.warning("tool cache lookup failed", exc_info=True)
            return None

    async def keep(
        self, runtime: Runtime, partition: str, key: str, value: bytes, ttl: float
    ) -> None:
        """Store a result for ``ttl`` seconds; a failing store is logged, nothing else."""
        try:
            await runtime.store.put(partition, key, value, ttl)
        except Exception:
            log.warning("tool cache store failed", exc_info=True)

    def count(self, runtime: Runtime, call: ToolCall, headers: Mapping[str, str]) -> None:
        """Metrics and the usage report of one call."""
        policy = runtime.config.policy
        m = self.metrics
        tool = self.bound.shown(policy.namespace, policy.name, "tool", call.tool)
        labels = (policy.namespace, policy.name, tool)
        m.tool_calls.labels(*labels, call.result).inc()
        if call.tokens_before:
            m.tool_result_tokens.labels(*labels, "upstream").inc(call.tokens_before)
            m.tool_result_tokens.labels(*labels, "sent").inc(call.tokens_after)
        if call.result == "refused":
            return
        hit = call.result == "hit"
        # A call is paid for when the tool answered it; a hit saves that.
        paid = call.price if call.result in ("miss", "bypass") else Decimal(0)
        saved = call.price if hit else Decimal(0)
        m.money(m.tool_cost, paid, *labels)
        m.money(m.savings, saved, policy.namespace, policy.name, "", TOOL_LEVER)
        config = runtime.config
        header = config.attribution.header
        feature = headers.get(header) if header else None
        labels_of = attribution(self.pod_labels, config.attribution.pod_labels, feature)
        task = headers.get(TASK_HEADER, "")[:TASK_MAX]
        if task and paid:
            m.money(m.task_cost, paid, policy.namespace, policy.name)
        if self.keepers is None:
            return
        keeper = self.keepers.get(policy.key, config.budget, runtime.notices, config.version)
        if keeper is None:
            return
        usage = RequestUsage(
            cost=paid,
            saved=saved,
            cache="hit" if hit else "miss",
            labels=tuple(sorted(labels_of.items())),
            task=task,
            tool=call.tool,
        )
        keeper.settle(Reservation(Decimal(0)), usage)


class ToolProxy:
    """What both proxies hold: the config, the upstream session, the meter, the body limit."""

    def __init__(
        self,
        holder: ConfigHolder,
        session: aiohttp.ClientSession,
        meter: ToolMeter,
        max_body_bytes: int,
    ) -> None:
        self.holder = holder
        self.session = session
        self.meter = meter
        self.max_body_bytes = max_body_bytes

    async def body(self, request: web.Request) -> bytes | web.Response:
        """The request's body, or the 413 that refuses it."""
        body = await request.read() if request.can_read_body else b""
        if len(body) > self.max_body_bytes:
            return error_response(413, f"request body is larger than {self.max_body_bytes} bytes")
        return body

    @staticmethod
    def unknown(kind: str, name: str, served: list[str]) -> web.Response:
        """The 404 for a name the policy does not serve."""
        listed = ", ".join(served) or "none"
        return error_response(404, f"no {kind} `{name}` here (served: {listed})", code="not_found")
