"""Prometheus metrics of the sidecar.

Names follow Prometheus rules (base units, ``_total`` counters, ``_seconds``
durations, ``_usd`` money). Where OpenTelemetry's GenAI conventions have a
name, the help text gives it: ``tokenomy_tokens_total`` is
``gen_ai.client.token.usage`` by ``gen_ai.token.type``, and
``tokenomy_request_duration_seconds`` is ``gen_ai.client.operation.duration``.
Money is exact ``Decimal`` everywhere else and becomes a float only here.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTE_LABELS = ("namespace", "policy", "route")
TIER_LABELS = (*ROUTE_LABELS, "tier", "backend")

# Spans a cached answer (sub-millisecond) to a long generation (minutes).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip


class Metrics:
    """Every metric of one sidecar, in its own registry (tests run several per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tokenomy_requests",
            "Requests answered, by where the answer came from and HTTP status.",
            [*TIER_LABELS, "cache", "code"],
            registry=r,
        )
        self.tokens = Counter(
            "tokenomy_tokens",
            "Tokens billed by backends (OTel gen_ai.client.token.usage), by direction: "
            "input, cached_input (part of input), output.",
            [*TIER_LABELS, "direction"],
            registry=r,
        )
        self.cost = Counter(
            "tokenomy_cost_usd", "USD spent at list prices.", TIER_LABELS, registry=r
        )
        self.savings = Counter(
            "tokenomy_savings_usd",
            "USD saved against sending the same request to the route's reference tier; "
            "cache hits save the whole reference cost.",
            [*ROUTE_LABELS, "lever"],
            registry=r,
        )
        self.attributed_cost = Counter(
            "tokenomy_attributed_cost_usd",
            "USD spent, by attribution: key is a pod label named in spec.attribution.podLabels "
            "(team, feature...) or the attribution header's (feature), value its value; past "
            "100 distinct values of a key, further ones are counted as `other` (usage reports "
            "and CostPolicy status keep them all).",
            ["namespace", "policy", "key", "value"],
            registry=r,
        )
        self.attributed_tokens = Counter(
            "tokenomy_attributed_tokens",
            "Input and output tokens of every model call, by attribution (as the cost above).",
            ["namespace", "policy", "key", "value"],
            registry=r,
        )
        self.task_outcomes = Counter(
            "tokenomy_task_outcomes",
            "Task outcomes reported (x-tokenomy-task-outcome, or POST "
            "/v1/tokenomy/tasks/{task}/outcome), by outcome: success or failure.",
            ["namespace", "policy", "outcome"],
            registry=r,
        )
        self.task_requests = Counter(
            "tokenomy_task_requests",
            "Requests that named their task (header x-tokenomy-task); the operator's "
            "tokenomy_policy_tasks counts the distinct tasks.",
            ["namespace", "policy"],
            registry=r,
        )
        self.task_cost = Counter(
            "tokenomy_task_cost_usd",
            "USD spent by requests that named their task.",
            ["namespace", "policy"],
            registry=r,
        )
        self.task_tokens = Counter(
            "tokenomy_task_tokens",
            "Input and output tokens of requests that named their task.",
            ["namespace", "policy"],
            registry=r,
        )
        self.overspend = Counter(
            "tokenomy_overspend_usd",
            "USD requests cost beyond what the reference tier would have charged for the same "
            "answer (a cascade that tried a cheaper tier, then escalated), by lever.",
            [*ROUTE_LABELS, "lever"],
            registry=r,
        )
        self.summaries = Counter(
            "tokenomy_summaries",
            "Summaries of the turns the history window dropped (prompt.summary), by result: "
            "cached (found whole), extended (a shorter one found and extended), made (new), "
            "failed (the turns only dropped), skipped (too little dropped to be worth one).",
            [*ROUTE_LABELS, "result"],
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "tokenomy_shadow_comparisons",
            "Answers of a cheaper lever compared with the reference tier's answer to the same "
            "request (spec.shadow), by lever (semantic_cache, routing, cascade, tier) and "
            "result (agree, disagree, failed).",
            [*ROUTE_LABELS, "lever", "result"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "tokenomy_shadow_skipped",
            "Sampled answers not compared, by reason: spend_share (shadow spend at its share "
            "of the requests'), budget (the policy's budget is spent), busy (comparisons in "
            "flight at their limit).",
            [*ROUTE_LABELS, "reason"],
            registry=r,
        )
        self.shadow_cost = Counter(
            "tokenomy_shadow_cost_usd",
            "USD shadow comparisons cost (reference and judge calls, embeddings): a line of "
            "its own, not in tokenomy_cost_usd_total.",
            ROUTE_LABELS,
            registry=r,
        )
        self.route_decisions = Counter(
            "tokenomy_route_decisions",
            "Starting tier chosen for requests that missed the cache, by how: domain, "
            "complexity, default.",
            [*ROUTE_LABELS, "tier", "kind"],
            registry=r,
        )
        self.escalations = Counter(
            "tokenomy_escalations",
            "Cascade answers passed over, by the tier that gave them and why: low_confidence, "
            "truncated, refusal, format, unjudged, error.",
            [*ROUTE_LABELS, "tier", "reason"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "tokenomy_cache_lookups",
            "Cache lookups by kind (exact, semantic) and result (hit, miss, bypass, error).",
            [*ROUTE_LABELS, "kind", "result"],
            registry=r,
        )
        self.cache_stores = Counter(
            "tokenomy_cache_stores",
            "Answers stored by cache kind (exact, semantic), and answers not stored with the "
            "reason (not_cacheable, error).",
            [*ROUTE_LABELS, "kind", "result"],
            registry=r,
        )
        self.semantic_outcomes = Counter(
            "tokenomy_semantic_outcomes",
            "Semantic near matches whose answer became known, by source (miss: not served, "
            "the model answered; explore: servable, sent to the model to measure; feedback: "
            "reported by a user) and result (correct, wrong).",
            [*ROUTE_LABELS, "source", "result"],
            registry=r,
        )
        self.semantic_bound = Gauge(
            "tokenomy_semantic_wrong_hit_bound",
            "Upper bound (99 %) of the share of wrong answers among the near matches the "
            "wrong-hit budget serves now, from the outcomes seen; 1 while it serves none.",
            ROUTE_LABELS,
            registry=r,
        )
        self.semantic_cut = Gauge(
            "tokenomy_semantic_cut",
            "The wrong-hit budget's cuts: serve at or above this similarity or margin "
            "(+Inf: not yet).",
            [*ROUTE_LABELS, "signal"],
            registry=r,
        )
        self.cache_memory = Gauge(
            "tokenomy_cache_memory_bytes",
            "Memory held by in-process cache entries (answers, vectors, indexes), by cache "
            "(exact, semantic); together at most the policy's store.maxMemoryMib.",
            ["cache"],
            registry=r,
        )
        self.cache_memory_limit = Gauge(
            "tokenomy_cache_memory_limit_bytes",
            "The in-process cache's memory budget (store.maxMemoryMib).",
            registry=r,
        )
        self.upstream_errors = Counter(
            "tokenomy_upstream_errors",
            "Failed tries to a backend, by reason (connect, timeout, status_5xx, status_429, "
            "stream_cut).",
            [*TIER_LABELS, "reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "tokenomy_client_disconnects",
            "Streams the client left before the end; the answer is still read to its end "
            "and metered, since the provider bills it (not a backend error).",
            ROUTE_LABELS,
            registry=r,
        )
        self.retries = Counter(
            "tokenomy_upstream_retries",
            "Tries beyond the first for one request.",
            [*ROUTE_LABELS, "tier"],
            registry=r,
        )
        self.tool_pruning = Counter(
            "tokenomy_tool_pruning",
            "Chat requests whose tool definitions were pruned (pruned), or kept whole because "
            "not every definition had its vector yet (cold; they are being embedded).",
            [*ROUTE_LABELS, "result"],
            registry=r,
        )
        self.tool_definitions = Counter(
            "tokenomy_tool_definitions",
            "Tool definitions of pruned requests: offered by the client, sent upstream.",
            [*ROUTE_LABELS, "stage"],
            registry=r,
        )
        tool_labels = ["namespace", "policy", "tool"]
        self.tool_calls = Counter(
            "tokenomy_tool_calls",
            "Calls through the tool proxy (tool is server/tool for MCP, the upstream's name for "
            "HTTP; past 100 distinct tools of a policy, other), by result: hit (from cache), "
            "miss (called, cacheable), bypass (called, not cacheable), error, refused (not "
            "allowed by the policy).",
            [*tool_labels, "result"],
            registry=r,
        )
        self.tool_result_tokens = Counter(
            "tokenomy_tool_result_tokens",
            "Estimated tokens of tool results the tools answered (upstream) and the agent got "
            "after trimming (sent); the difference stays out of the agent's next prompt.",
            [*tool_labels, "stage"],
            registry=r,
        )
        self.tool_cost = Counter(
            "tokenomy_tool_cost_usd",
            "USD tool calls cost at their pricePerCall.",
            tool_labels,
            registry=r,
        )
        self.prefix_affinity = Counter(
            "tokenomy_prefix_affinity",
            "Chat calls answered, by whether their conversation went where its earlier turns "
            "went (kept), went elsewhere (moved: that endpoint failed, was ejected or lost its "
            "preference to placement), or was new; kept turns find the server's prefix cache "
            "warm.",
            [*ROUTE_LABELS, "result"],
            registry=r,
        )
        self.packing_items = Counter(
            "tokenomy_packing_items",
            "Requests that waited to share a packed call, by result: packed (answered from "
            "it) or resent (its answer could not be matched: sent alone).",
            [*ROUTE_LABELS, "result"],
            registry=r,
        )
        self.packing_saved_tokens = Counter(
            "tokenomy_packing_input_tokens_saved",
            "Input tokens packed requests did not pay: each one's own prompt estimate minus "
            "its share of the packed call's prompt.",
            ROUTE_LABELS,
            registry=r,
        )
        self.fail_open = Counter(
            "tokenomy_fail_open",
            "Requests sent to the default tier because a pipeline stage failed unexpectedly.",
            [*ROUTE_LABELS, "stage"],
            registry=r,
        )
        self.invalid_requests = Counter(
            "tokenomy_invalid_requests",
            "Requests refused with a 4xx before reaching a backend, by status.",
            ["code"],
            registry=r,
        )
        self.duration = Histogram(
            "tokenomy_request_duration_seconds",
            "Time from request to the end of the answer (OTel gen_ai.client.operation.duration).",
            [*ROUTE_LABELS, "cache"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_byte = Histogram(
            "tokenomy_time_to_first_byte_seconds",
            "Time from request to the first byte of the answer sent to the client.",
            [*ROUTE_LABELS, "cache"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.config_info = Gauge(
            "tokenomy_config_info",
            "The config version in force (value 1).",
            ["namespace", "policy", "version"],
            registry=r,
        )
        self.config_updates = Counter(
            "tokenomy_config_updates",
            "Configs offered to the sidecar, by result (applied, rejected).",
            ["result"],
            registry=r,
        )
        self.budget_exceeded = Counter(
            "tokenomy_budget_exceeded",
            "Requests that found the budget spent, by what happened (onExceeded: alert served "
            "them, downgrade served them from the cheapest tier, reject answered 429).",
            ["namespace", "policy", "mode"],
            registry=r,
        )
        self.reference_tier = Gauge(
            "tokenomy_reference_tier_info",
            "The reference (strongest) tier of each route in force (value 1).",
            [*ROUTE_LABELS, "tier"],
            registry=r,
        )
        self.budget = Gauge(
            "tokenomy_budget_usd",
            "The policy's budget per period, when it has one.",
            ["namespace", "policy", "period"],
            registry=r,
        )
        self.in_flight = Gauge("tokenomy_requests_in_flight", "Requests being served.", registry=r)

    def money(self, counter: Counter, amount: Decimal, *labels: str) -> None:
        """Add an amount of USD to a counter; negative savings are not counted down."""
        if amount > 0:
            counter.labels(*labels).inc(float(amount))
