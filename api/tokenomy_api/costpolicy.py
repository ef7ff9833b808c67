"""``CostPolicy``: how the pods a policy selects may spend on model calls.

Every section validates now, even where the sidecar's behaviour for it lands
later, so users can write complete policies from the start.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from tokenomy_api.meta import (
    ApiModel,
    Condition,
    DnsLabel,
    Duration,
    Fraction,
    LabelSelector,
    Money,
    ObjectMeta,
    ResourceName,
    SecretKeyRef,
)
from tokenomy_api.names import COST_POLICY_KIND
from tokenomy_api.rules import Rule

HeaderName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")]
"""An HTTP header name."""

Percent = Annotated[int, Field(ge=1, le=1000)]
"""A whole percentage."""


# --- cache -----------------------------------------------------------------


class ExactCache(ApiModel):
    """Serve a byte-identical (normalised) request from a stored answer."""

    enabled: bool = True
    """Whether the exact cache is on."""
    ttl: Duration = "1h"
    """How long an answer stays servable."""


class WrongHitBudget(ApiModel):
    """Serve near matches as far as observed outcomes allow, instead of a fixed threshold.

    Each sidecar learns, per route, the similarity and margin (how much closer the
    nearest stored question is than the nearest one with another answer) at which
    wrong hits stay under ``maxWrongShare`` with 99 % confidence, from the
    candidates that went to the model, explored ones and reported wrong answers.
    """

    max_wrong_share: Annotated[float, Field(ge=0.001, le=0.5)]
    """Acceptable share of served near matches that answer another question, e.g. 0.02."""
    min_similarity: Fraction = 0.6
    """Nearest questions less similar than this are neither served nor learnt from."""
    explore: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Share of servable near matches sent to the model anyway, its answer compared with
    the stored one, so the bound keeps measuring what is served."""


class SemanticCache(ApiModel):
    """Serve a request whose meaning matches a stored one closely enough."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(has(self.threshold) && has(self.wrongHitBudget))",
            message="threshold has no effect with a wrongHitBudget (which learns its own "
            "cuts): set one of them",
            check=lambda s: s.threshold is None or s.wrong_hit_budget is None,
        ),
    )

    enabled: bool = False
    """Whether the semantic cache is on; it needs ``spec.embedding`` on the routes."""
    threshold: Fraction | None = None
    """Cosine similarity at or above which a stored answer is served; 0.95 when neither
    this nor ``wrongHitBudget`` is set."""
    wrong_hit_budget: WrongHitBudget | None = None
    """Serve by a wrong-hit budget learnt from outcomes, instead of a threshold."""
    ttl: Duration = "1h"
    """How long an answer stays servable."""


class CacheScope(ApiModel):
    """The hard partition of the cache: entries are never shared across it."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.type == 'header') == has(self.header)",
            message="scope.header is required when scope.type is header, and only then",
            check=lambda s: (s.type == "header") == (s.header is not None),
        ),
    )

    type: Literal["policy", "namespace", "header"] = "policy"
    """``policy``: pods of this policy share; ``namespace``: all policies of the namespace
    share; ``header``: one partition per value of ``header`` within the policy."""
    header: HeaderName | None = None
    """Request header whose value partitions the cache, e.g. ``x-tenant-id``; requests
    without it are not cached."""


class RedisStore(ApiModel):
    """A Redis shared by the sidecars of a policy."""

    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^rediss?://.+$")]
    """``redis://host:port/db`` or ``rediss://`` for TLS."""
    password_secret_ref: SecretKeyRef | None = None
    """Secret key holding the password, if the server needs one."""


class CacheStore(ApiModel):
    """Where cache entries live."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.type == 'redis') == has(self.redis)",
            message="store.redis is required when store.type is redis, and only then",
            check=lambda s: (s.type == "redis") == (s.redis is not None),
        ),
    )

    type: Literal["memory", "redis"] = "memory"
    """``memory``: per sidecar, least recently used entries evicted; ``redis``: shared."""
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    """Entries kept per partition in memory."""
    max_memory_mib: Annotated[int, Field(ge=1, le=1_048_576)] = 256
    """Memory one sidecar gives its in-process cache entries, exact and semantic together
    (answers, vectors, indexes); past it the least recently used entry goes, whatever its
    partition. A Redis store's own entries are bounded by the Redis server."""
    redis: RedisStore | None = None
    """The Redis server, when ``type`` is ``redis``."""


class NeverCache(ApiModel):
    """Requests that are never served from or stored into the cache."""

    with_tools: bool = True
    """Requests that offer tools, whose calls may have side effects."""
    temperature_above: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    """Requests asking for more randomness than this."""
    headers: list[HeaderName] = Field(default_factory=list, max_length=16)
    """Requests carrying any of these headers."""


class Cache(ApiModel):
    """Response caching."""

    exact: ExactCache = Field(default_factory=ExactCache)
    """The exact cache."""
    semantic: SemanticCache = Field(default_factory=SemanticCache)
    """The semantic cache."""
    scope: CacheScope = Field(default_factory=CacheScope)
    """The partition entries are confined to."""
    store: CacheStore = Field(default_factory=CacheStore)
    """Where entries live."""
    never: NeverCache = Field(default_factory=NeverCache)
    """What is never cached."""


# --- cascade and routing ---------------------------------------------------


class TierThreshold(ApiModel):
    """A threshold for one tier."""

    tier: DnsLabel
    """Name of the tier."""
    threshold: Fraction
    """The threshold for that tier."""


class Confidence(ApiModel):
    """How the cascade judges whether a tier's answer is good enough."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.method != 'scorer' || has(self.scorer)",
            message="confidence.scorer is required when confidence.method is scorer",
            check=lambda c: c.method != "scorer" or c.scorer is not None,
        ),
    )

    method: Literal["logprobs", "agreement", "verifier", "scorer", "format"] = "logprobs"
    """``logprobs``: mean token probability of the answer; ``agreement``: share of samples
    that agree; ``verifier``: the same model grades its answer; ``scorer``: a learned
    model on (prompt, answer); ``format``: only the format checks."""
    threshold: Fraction | None = None
    """Confidence below which the cascade escalates, unless a tier has its own. Unset:
    the scorer's cut for ``quality`` for ``scorer``, 0.7 for the other methods."""
    per_tier: list[TierThreshold] = Field(default_factory=list, max_length=8)
    """Thresholds for particular tiers."""
    samples: Annotated[int, Field(ge=2, le=10)] = 3
    """Samples drawn for ``agreement``."""
    verifier_prompt: Annotated[str, Field(max_length=8192)] | None = None
    """Prompt for ``verifier``; a built-in one when unset."""
    scorer: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """The learned scorer for ``scorer``: ``builtin`` (trained on GSM8K answers), or a
    ConfigMap holding one from ``tokenomy router train --scorer`` under the key
    ``model.npz``."""
    format_checks: bool = True
    """Also escalate on a truncated answer, a refusal or a ``response_format`` mismatch."""


class Cascade(ApiModel):
    """Model cascading: try a cheap tier first, escalate when unsure."""

    enabled: bool = False
    """Whether the cascade is on."""
    tiers: list[DnsLabel] = Field(default_factory=list, max_length=8)
    """Tiers to walk, cheapest first; all of the route's tiers when empty."""
    confidence: Confidence = Field(default_factory=Confidence)
    """How answers are judged."""


class ComplexityRouting(ApiModel):
    """Send a request to the cheapest tier predicted to answer it well."""

    enabled: bool = False
    """Whether complexity routing is on."""
    model: Annotated[str, Field(min_length=1, max_length=253)] = "builtin"
    """``builtin``, or a ConfigMap holding a model from ``tokenomy router train`` under the
    key ``model.npz``; injection mounts it into the sidecar (pods injected before the
    policy named it need a restart)."""
    threshold: Fraction | None = None
    """Score at or above which a request skips a cheaper tier, unless a tier has its own;
    the score is the predicted chance that the reference tier answers better (divided by
    the request's relative cost when ``costAware``). Unset: the cut calibrated into the
    model for ``quality`` (its target with its confidence)."""
    cost_aware: bool = True
    """Weigh the predicted gain against what this request costs compared with an average
    one, so long prompts stay on a cheaper tier more readily."""
    per_tier: list[TierThreshold] = Field(default_factory=list, max_length=8)
    """Thresholds for particular tiers."""


class DomainRoute(ApiModel):
    """Requests about one domain go straight to one tier."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(has(self.keywords) && size(self.keywords) > 0) "
            "|| (has(self.examples) && size(self.examples) > 0)",
            message="a domain route needs keywords or examples",
            check=lambda d: bool(d.keywords or d.examples),
        ),
    )

    name: DnsLabel
    """Name of the domain, shown in ``x-tokenomy-route-reason``."""
    tier: DnsLabel
    """Tier its requests go to."""
    keywords: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=256
    )
    """Words or phrases that, found in the last user message, select this domain."""
    examples: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=256
    )
    """Example queries; a request this similar to one of them selects the domain."""
    similarity: Fraction = 0.8
    """Cosine similarity to an example that selects the domain."""


class Routing(ApiModel):
    """Choosing a starting tier before any model is called."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.domains) "
            "|| self.domains.all(d, self.domains.exists_one(e, e.name == d.name))",
            message="domain names must be unique",
            check=lambda r: len({d.name for d in r.domains}) == len(r.domains),
        ),
    )

    complexity: ComplexityRouting = Field(default_factory=ComplexityRouting)
    """Complexity routing."""
    domains: list[DomainRoute] = Field(default_factory=list, max_length=64)
    """Domain routes, checked in order before complexity routing."""


class Quality(ApiModel):
    """The quality the routing and cascade cuts keep, and how sure that must be."""

    target: Annotated[float, Field(ge=0.5, le=1.0)] = 0.95
    """Share of the reference tier's quality to keep (0.95: 95 %), on new requests."""
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.9
    """Probability that ``target`` holds on new requests. A trained model's cut is
    chosen for both from the calibration queries it carries (Learn then Test); when
    they support no saving, every request goes to the reference tier and the
    ``FieldsInEffect`` condition says so. Thresholds set by hand are used as set."""


class AutoTune(ApiModel):
    """Thresholds that follow measured quality: tightened below the floor, loosened well
    above it, one step at a time, within ``maxOffset``."""

    enabled: bool = False
    """Let shadow comparison move the cascade's threshold, the semantic cache's threshold
    and the complexity router's cut (one Event per change, with the evidence)."""
    step: Annotated[float, Field(ge=0.005, le=0.5)] = 0.05
    """How far one change moves a threshold."""
    max_offset: Annotated[float, Field(ge=0.005, le=1.0)] = 0.3
    """How far from the policy's own thresholds tuning may go."""
    min_samples: Annotated[int, Field(ge=10, le=100_000)] = 100
    """Comparisons since the last change a loosening needs (a tightening needs only
    that the interval lies below the floor, and at least 10)."""


class Shadow(ApiModel):
    """Quality measured on live traffic: a sample of the answers a cheaper lever gave,
    compared off the request path with the reference tier's answer to the same request."""

    enabled: bool = False
    """Compare a sample of eligible answers: those of a tier cheaper than the reference
    (default tier, routing, cascade) and semantic cache hits."""
    sample: Annotated[float, Field(ge=0.001, le=1.0)] = 0.05
    """Share of eligible answers compared (0.05: one in twenty)."""
    max_spend_share: Annotated[float, Field(ge=0.001, le=10.0)] = 0.1
    """Shadow calls stop while they have cost more than this share of what the policy's
    requests cost (above 1 for a short, thorough measurement: a comparison calls the
    reference tier, and a judge or embedder too). Each sidecar holds its own spend to
    it, so the policy's total does; the shadow spend also counts against ``budget`` and
    stops when the budget is spent."""
    compare: Literal["auto", "exact", "similarity", "judge"] = "auto"
    """How two answers are compared: ``exact`` (JSON by value; a final number by value;
    other text by its last number, else word for word), ``similarity`` (embeddings of
    the two answers, the route's embedder), ``judge`` (a prompt asking ``judgeTier``
    whether they say the same), ``auto`` (``exact`` where the reference is structured —
    JSON, a final number, a short label — else ``similarity`` with an embedder, ``judge``
    without one)."""
    similarity: Fraction = 0.85
    """Cosine similarity of the two answers at or above which they agree."""
    judge_tier: DnsLabel | None = None
    """Tier that judges free text for ``judge``; the route's cheapest when unset."""
    auto_tune: AutoTune = Field(default_factory=AutoTune)
    """Thresholds that tune themselves from the comparisons (opt-in)."""


# --- placement, prompt, output ---------------------------------------------


class RegionPlacement(ApiModel):
    """Which regions requests may go to."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.strategy == 'pinned') == has(self.pinned)",
            message="region.pinned is required when region.strategy is pinned, and only then",
            check=lambda r: (r.strategy == "pinned") == (r.pinned is not None),
        ),
        Rule(
            cel="!has(self.pinned) || !has(self.allowed) || size(self.allowed) == 0 "
            "|| self.pinned in self.allowed",
            message="region.pinned must be one of region.allowed",
            check=lambda r: r.pinned is None or not r.allowed or r.pinned in r.allowed,
        ),
    )

    strategy: Literal["cheapest", "nearest", "pinned"] = "cheapest"
    """``cheapest`` price first, ``nearest`` the pod's own region first, or one ``pinned``."""
    pinned: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    """The region for ``pinned``."""
    allowed: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list, max_length=64
    )
    """Regions requests may go to at all (data residency); any when empty."""


class Placement(ApiModel):
    """Where, among a tier's backends, requests go."""

    spot: Literal["prefer", "avoid", "only"] = "prefer"
    """Spot capacity: ``prefer`` it, ``avoid`` it unless nothing else is up, or ``only``."""
    region: RegionPlacement = Field(default_factory=RegionPlacement)
    """Region choice."""


class HistorySummary(ApiModel):
    """A short summary from the route's cheapest tier in place of the turns the history
    window drops (the "summary + recent turns" window)."""

    enabled: bool = False
    """Whether dropped turns are summarised; without it they are only dropped."""
    max_tokens: Annotated[int, Field(ge=16, le=4096)] = 256
    """Longest summary, in tokens; never more than half of what it replaces."""
    ttl: Duration = "1h"
    """How long a summary is kept for the same conversation's later requests (in the
    cache store, inside the request's cache partition)."""
    timeout: Duration = "10s"
    """Longest a request waits for its summary; past it the turns are only dropped."""


class Prompt(ApiModel):
    """Trimming what is sent."""

    history_window: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """Most recent messages kept (system messages always kept); all when unset."""
    history_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Most recent turns kept within this many estimated tokens (system messages always
    kept, the last turn always); a tool call and its results are kept or dropped together."""
    deduplicate: bool = False
    """Drop messages that repeat an earlier one word for word."""
    max_input_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Requests estimated above this many input tokens (after the window) are refused with a
    400, or trimmed to fit (``overLimit``)."""
    over_limit: Literal["reject", "trim"] = "reject"
    """A request over ``maxInputTokens``: refuse it (400 naming the limit), or drop its oldest
    turns until it fits (system messages and the question always kept; a tool call stays with
    its results) and refuse it only if it still does not."""
    summary: HistorySummary = Field(default_factory=HistorySummary)
    """Summarise the turns ``historyWindow`` or ``historyTokens`` drop (not those dropped to
    fit ``maxInputTokens``)."""


class Output(ApiModel):
    """Capping what comes back."""

    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Upper bound on ``max_tokens``; requests asking for more, or for nothing, get this."""
    brevity: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """An instruction added to the system prompt, e.g. ``Answer in at most 3 sentences.``"""


# --- batching and tools ----------------------------------------------------


class Batching(ApiModel):
    """Request packing: concurrent small requests that share everything but their last
    question are sent as one call and its answer split back. Opt-in: a model answering
    several questions at once can answer each a little differently than alone."""

    enabled: bool = False
    """Whether packing is on."""
    max_batch_size: Annotated[int, Field(ge=2, le=1024)] = 16
    """Requests per packed call at most."""
    max_wait: Duration = "20ms"
    """Longest a request waits for others to share its call."""
    routes: list[DnsLabel] = Field(default_factory=list, max_length=64)
    """Routes whose requests are packed; all of the policy's when empty."""


ToolUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s/$.?#][^\s]*$")]
POSITIVE_TIMEOUT = Rule(
    cel="!has(self.timeout) || self.timeout != '0'",
    message="timeout must be longer than 0",
    check=lambda t: t.timeout != "0",
)
FieldPaths = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=256)
]


class ToolUpstream(ApiModel):
    """One HTTP tool API the agent calls through the sidecar, at ``/tools/<name>/…``."""

    rules: ClassVar[tuple[Rule, ...]] = (POSITIVE_TIMEOUT,)

    name: DnsLabel
    """Name of the tool, the path prefix on the sidecar's tool proxy."""
    url: ToolUrl
    """Base URL of the tool's API; the path after ``/tools/<name>`` is appended to it."""
    ttl: Duration = "5m"
    """How long a successful GET response is reused (``0``: never cached)."""
    timeout: Duration = "30s"
    """Longest a call may take; then the agent gets a 504."""
    fields: FieldPaths = Field(default_factory=list)
    """JSON fields kept in answers to GET (dotted paths; a list's items are trimmed alike);
    all when empty. Answers to other methods reach the agent untouched."""
    price_per_call: Money = Decimal(0)
    """USD one call costs (a paid search API, say): counted in spend and in the task's cost;
    a cache hit saves it."""


class ToolResultFields(ApiModel):
    """The fields of one MCP tool's results that reach the agent."""

    tool: Annotated[str, Field(min_length=1, max_length=128)]
    """The tool's name as the server lists it."""
    fields: FieldPaths
    """JSON fields kept in its structured result and in text results that are JSON
    (dotted paths)."""


class McpServer(ApiModel):
    """One MCP server (streamable HTTP) the agent reaches through the sidecar, at
    ``/mcp/<name>``."""

    rules: ClassVar[tuple[Rule, ...]] = (POSITIVE_TIMEOUT,)

    name: DnsLabel
    """Name of the server, the path on the sidecar's MCP proxy."""
    url: ToolUrl
    """The server's MCP endpoint, e.g. ``http://search.tools:8000/mcp``."""
    ttl: Duration = "5m"
    """How long a read-only or idempotent tool's result is reused (``0``: never cached).
    Tools whose annotations do not say so are never cached, and errors never."""
    timeout: Duration = "60s"
    """Longest a call may take; then the agent gets a JSON-RPC error."""
    allow: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=1024
    )
    """Tools the agent may list and call; all when empty. Others are left out of
    ``tools/list`` and their calls refused."""
    results: list[ToolResultFields] = Field(default_factory=list, max_length=256)
    """Results trimmed to the listed fields, per tool."""
    price_per_call: Money = Decimal(0)
    """USD one tool call costs: counted in spend and in the task's cost; a hit saves it."""


class ToolPruning(ApiModel):
    """Send only the tool definitions relevant to the conversation."""

    enabled: bool = False
    """Whether chat requests' ``tools`` are pruned."""
    min_tools: Annotated[int, Field(ge=1, le=1024)] = 16
    """Requests offering this many definitions or fewer keep them all; others keep at
    least this many."""
    keep_share: Annotated[float, Field(ge=0.01, le=1.0)] = 0.2
    """Share of the offered definitions kept (the most relevant; at least ``minTools``),
    beside every tool the conversation already called and any ``tool_choice`` names."""


class Tools(ApiModel):
    """A caching, field-trimming proxy for the agent's tool APIs, and tool pruning."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.upstreams) "
            "|| self.upstreams.all(u, self.upstreams.exists_one(v, v.name == u.name))",
            message="tool names must be unique",
            check=lambda t: len({u.name for u in t.upstreams}) == len(t.upstreams),
        ),
        Rule(
            cel="!has(self.mcpServers) "
            "|| self.mcpServers.all(u, self.mcpServers.exists_one(v, v.name == u.name))",
            message="MCP server names must be unique",
            check=lambda t: len({u.name for u in t.mcp_servers}) == len(t.mcp_servers),
        ),
    )

    enabled: bool = False
    """Whether the tool proxy is on (``upstreams`` and ``mcpServers``)."""
    upstreams: list[ToolUpstream] = Field(default_factory=list, max_length=64)
    """HTTP tool APIs."""
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=64)
    """MCP servers."""
    pruning: ToolPruning = Field(default_factory=ToolPruning)
    """Tool definitions sent with a chat request, pruned to the relevant ones."""


# --- budget, alerts, attribution -------------------------------------------


class Budget(ApiModel):
    """How much the selected pods may spend per period, and what happens after."""

    amount: Money
    """USD per period."""
    period: Literal["daily", "weekly", "monthly"] = "monthly"
    """Calendar period the amount applies to."""
    time_zone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    """IANA time zone periods start in, e.g. ``Europe/Berlin``."""
    on_exceeded: Literal["alert", "downgrade", "reject"] = "alert"
    """``alert``: keep serving and raise ``BudgetExceeded``; ``downgrade``: cheapest tier
    only, no escalation; ``reject``: answer 429."""
    warn_at: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default_factory=lambda: [80], max_length=8
    )
    """Percentages of the budget at which Events warn first."""
    fail_mode: Literal["lease", "stop"] = "lease"
    """When the operator is unreachable: spend what the current lease allows, or stop."""


class Alert(ApiModel):
    """One alert against a baseline."""

    enabled: bool = True
    """Whether the alert is on."""
    threshold: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Change that fires it, in percent or percentage points; a per-alert default if unset."""
    baseline: Literal["previousPeriod", "movingAverage"] = "movingAverage"
    """What the current value is compared with."""


class Alerts(ApiModel):
    """Alerts raised as conditions, Events and Prometheus rules."""

    cost_spike: Alert = Field(default_factory=Alert)
    """Spend rate up by more than ``threshold`` percent (default 50)."""
    tokens_per_request: Alert = Field(default_factory=Alert)
    """Tokens per request up by more than ``threshold`` percent (default 20)."""
    cache_hit_drop: Alert = Field(default_factory=Alert)
    """Cache hit rate down by more than ``threshold`` points (default 10)."""
    large_tier_shift: Alert = Field(default_factory=Alert)
    """Share of requests on the largest tier up by more than ``threshold`` points (default 10)."""
    tokens_per_task: Alert = Field(default_factory=Alert)
    """Tokens per task that ended (reported an outcome) up by more than ``threshold``
    percent (default 20); ``previousPeriod`` has no per-task baseline, so it always
    compares with the previous day."""

    def resolved(self) -> Alerts:
        """These alerts with every unset threshold replaced by its default."""
        return self.model_copy(
            update={
                name: alert.model_copy(update={"threshold": ALERT_DEFAULT_THRESHOLDS[name]})
                for name in type(self).model_fields
                if (alert := getattr(self, name)).threshold is None
            }
        )


ALERT_DEFAULT_THRESHOLDS: dict[str, int] = {
    "cost_spike": 50,
    "tokens_per_request": 20,
    "cache_hit_drop": 10,
    "large_tier_shift": 10,
    "tokens_per_task": 20,
}
"""Default threshold of each alert: percent for the first two, percentage points after."""


class Attribution(ApiModel):
    """Who spend is charged to."""

    pod_labels: list[Annotated[str, Field(min_length=1, max_length=317)]] = Field(
        default_factory=lambda: ["team", "feature"], max_length=8
    )
    """Pod labels copied onto metrics and usage reports."""
    header: HeaderName | None = None
    """Request header that overrides the pod's ``feature`` label, e.g. ``x-tokenomy-feature``."""


# --- the resource ----------------------------------------------------------


class CostPolicySpec(ApiModel):
    """What a CostPolicy declares."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.routes.all(r, self.routes.exists_one(s, s == r))",
            message="routes must not repeat",
            check=lambda s: len(set(s.routes)) == len(s.routes),
        ),
    )

    selector: LabelSelector
    """Pods of the namespace this policy governs; ``{}`` selects all of them."""
    routes: Annotated[list[ResourceName], Field(min_length=1, max_length=32)]
    """ModelRoutes (same namespace) these pods may call."""
    cache: Cache = Field(default_factory=Cache)
    """Response caching."""
    cascade: Cascade = Field(default_factory=Cascade)
    """Model cascading."""
    routing: Routing = Field(default_factory=Routing)
    """Complexity and domain routing."""
    quality: Quality = Field(default_factory=Quality)
    """The quality complexity routing and the ``scorer`` cascade keep; ``target`` is
    also the floor shadow comparison judges measured quality against."""
    shadow: Shadow = Field(default_factory=Shadow)
    """Shadow comparison against the reference tier."""
    placement: Placement = Field(default_factory=Placement)
    """Backend choice within a tier."""
    prompt: Prompt = Field(default_factory=Prompt)
    """Prompt trimming."""
    output: Output = Field(default_factory=Output)
    """Output caps."""
    batching: Batching = Field(default_factory=Batching)
    """Request batching."""
    tools: Tools = Field(default_factory=Tools)
    """Tool API proxy."""
    budget: Budget | None = None
    """Spend limit; none means unlimited (spend is still metered)."""
    alerts: Alerts = Field(default_factory=Alerts)
    """Alerts."""
    attribution: Attribution = Field(default_factory=Attribution)
    """Cost attribution."""


class Sidecars(ApiModel):
    """Sidecars of the selected pods and how they took the current config."""

    matched: Annotated[int, Field(ge=0)] = 0
    """Pods selected by the policy."""
    acknowledged: Annotated[int, Field(ge=0)] = 0
    """Sidecars serving the current config version."""
    rejecting: Annotated[int, Field(ge=0)] = 0
    """Sidecars that rejected (NACKed) the current version."""
    unmanaged: Annotated[int, Field(ge=0)] = 0
    """Selected pods running without a sidecar (admitted before the policy existed or
    while the webhook was unreachable); condition ``SidecarsInjected`` names them."""


class ReportMark(ApiModel):
    """The last usage report counted from one sidecar."""

    holder: Annotated[str, Field(min_length=1, max_length=300)]
    """The sidecar's name on the usage stream (pod and start)."""
    number: Annotated[int, Field(ge=0)]
    """The number of its last report counted."""


class Spend(ApiModel):
    """Spend in the current budget period."""

    amount: Money = Decimal(0)
    """USD spent so far this period."""
    period_start: str = ""
    """When the period began (RFC 3339)."""
    period_end: str = ""
    """When it ends and the budget resets (RFC 3339)."""
    projected: Money | None = None
    """USD expected by the end of the period at the current rate."""
    budget_used: Annotated[str, Field(max_length=16)] = ""
    """Share of the budget spent, e.g. ``42%``."""
    reports: list[ReportMark] = Field(default_factory=list, max_length=10_000)
    """Last report counted per sidecar this period: a restarted operator resumes from
    ``amount`` and these, so a report sent again after the restart is counted once."""


class TierShare(ApiModel):
    """Share of requests one tier answered."""

    tier: DnsLabel
    """Name of the tier."""
    share: Annotated[str, Field(max_length=16)]
    """Share of requests, e.g. ``61%``."""


SignedAmount = Annotated[str, Field(max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$")]
"""USD as a decimal string that may be negative (net savings)."""
Count = Annotated[int, Field(ge=0)]


class TierCount(ApiModel):
    """Requests one tier answered."""

    tier: DnsLabel
    """Name of the tier."""
    requests: Count
    """Requests its answer was served for (cache hits not included)."""


class UsageCounts(ApiModel):
    """What the policy's sidecars reported in a period, as counts a restarted operator resumes."""

    requests: Count = 0
    """Requests reported, cache hits included."""
    cache_hits: Count = 0
    """Requests answered from the exact or the semantic cache."""
    input_tokens: Count = 0
    """Input tokens of every model call."""
    output_tokens: Count = 0
    """Output tokens of every model call."""
    cached_input_tokens: Count = 0
    """Of the input tokens, the ones providers read from their prompt caches (priced at
    ``cachedInput``)."""
    reference_requests: Count = 0
    """Requests answered by their route's reference (largest) tier."""
    tiers: list[TierCount] = Field(default_factory=list, max_length=64)
    """Requests per answering tier."""
    saved: SignedAmount = "0"
    """Net USD saved against the reference tier (negative if escalations cost more)."""
    tool_calls: Count = 0
    """Calls through the tool proxy (HTTP tools and MCP ``tools/call``)."""
    tool_cache_hits: Count = 0
    """Of those, the ones answered from the tool proxy's cache."""
    saved_by_lever: list[LeverSaving] = Field(default_factory=list, max_length=16)
    """``saved`` by the lever that answered each request."""


class LeverSaving(ApiModel):
    """Net savings of the requests one lever answered."""

    lever: Annotated[str, Field(max_length=64)]
    """``exact_cache``, ``semantic_cache``, ``routing``, ``cascade`` or ``tier``."""
    saved: SignedAmount = "0"
    """Net USD saved against the reference tier (the requests' trimming and tool pruning
    savings included)."""


class Spender(ApiModel):
    """Spend charged to one attribution label."""

    key: Annotated[str, Field(max_length=317)]
    """The label: a pod label named in ``attribution.podLabels``, or ``feature``."""
    value: Annotated[str, Field(max_length=256)]
    """Its value."""
    cost: Money
    """USD this period."""
    tokens: Count = 0
    """Input and output tokens this period."""
    requests: Count = 0
    """Requests this period."""


class TaskSpend(ApiModel):
    """Spend of one task (requests sharing an ``x-tokenomy-task`` header)."""

    task: Annotated[str, Field(max_length=256)]
    """The task id."""
    cost: Money
    """USD this period."""
    tokens: Count = 0
    """Input and output tokens."""
    requests: Count = 0
    """Requests."""


class OutcomeShare(ApiModel):
    """Ended tasks one tier or lever answered a request of, and how many succeeded."""

    name: Annotated[str, Field(max_length=64)]
    """The tier or lever."""
    tasks: Count = 0
    """Ended tasks it answered in."""
    succeeded: Count = 0
    """Of those, the ones that succeeded."""
    success_rate: Annotated[str, Field(max_length=16)] = ""
    """``succeeded`` of ``tasks``, e.g. ``88%``."""


class Tasks(ApiModel):
    """Cost and tokens per task, for requests that named their task."""

    count: Count = 0
    """Distinct tasks this period."""
    cost: Money = Decimal(0)
    """USD of all their requests."""
    tokens: Count = 0
    """Tokens of all their requests."""
    requests: Count = 0
    """Requests that named a task."""
    cost_per_task: Money = Decimal(0)
    """Average USD per task."""
    tokens_per_task: Count = 0
    """Average tokens per task."""
    top: list[TaskSpend] = Field(default_factory=list, max_length=10)
    """The most expensive tasks."""
    succeeded: Count = 0
    """Tasks whose app reported success (``x-tokenomy-task-outcome``, or the outcome
    endpoint); the last report of a task counts."""
    failed: Count = 0
    """Tasks reported as failed."""
    success_rate: Annotated[str, Field(max_length=16)] = ""
    """Share of tasks with an outcome that succeeded, e.g. ``92%``."""
    cost_per_successful_task: Money | None = None
    """USD of all tasks' requests per task that succeeded: what a success costs, failures
    included."""
    tokens_per_successful_task: Count | None = None
    """Tokens of all tasks' requests per task that succeeded."""
    scored: Count = 0
    """Outcomes that came with a score."""
    mean_score: Annotated[str, Field(max_length=16)] = ""
    """Their average score, 0 to 1."""
    by_tier: list[OutcomeShare] = Field(default_factory=list, max_length=64)
    """Success rate of the ended tasks each tier answered a request of."""
    by_lever: list[OutcomeShare] = Field(default_factory=list, max_length=16)
    """The same per lever (``exact_cache``, ``semantic_cache``, ``routing``, ``cascade``,
    ``tier``)."""


class SemanticChecks(ApiModel):
    """Servable semantic near matches sent to the model to check them (the wrong-hit
    budget's exploration): a random sample of what the semantic cache serves."""

    checked: Count = 0
    """Near matches checked this period."""
    wrong: Count = 0
    """Of those, the ones the model's answer contradicted."""
    wrong_hit_bound: Annotated[str, Field(max_length=16)] = ""
    """Upper bound (99 %) of the share of wrong answers among semantic hits, e.g. ``1.8%``."""


class LeverComparisons(ApiModel):
    """Shadow comparisons of one lever."""

    lever: Annotated[str, Field(max_length=64)]
    """``semantic_cache``, ``routing``, ``cascade`` or ``tier`` (the route's default tier)."""
    compared: Count = 0
    """Answers compared this period."""
    agreed: Count = 0
    """Of those, the ones the reference tier's answer agreed with."""


class LeverTuning(ApiModel):
    """How far ``shadow.autoTune`` has tightened one lever, and what it learnt."""

    lever: Literal["cascade", "semantic_cache", "routing"]
    """The lever."""
    offset: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Tightening in force (cascade and semantic thresholds up, the complexity cut down)."""
    known_bad: Annotated[float, Field(ge=-1, le=1)] = -1.0
    """The largest offset measured below the floor; never loosened back to (-1: none).
    This is the hysteresis: a lever never goes back to where it failed."""
    base_compared: Count = 0
    """``shadow`` comparisons of this lever counted at the last change: the evidence for
    the next one starts after them."""
    base_agreed: Count = 0
    """Of those, the ones that agreed."""
    changed: Annotated[str, Field(max_length=32)] = ""
    """When it last changed (RFC 3339)."""


class ShadowCounts(ApiModel):
    """What shadow comparisons counted this period: what a restarted operator resumes."""

    cost: Money = Decimal(0)
    """USD they cost (part of ``spend.amount``)."""
    comparisons: list[LeverComparisons] = Field(default_factory=list, max_length=16)
    """Per lever."""


ShownShare = Annotated[str, Field(max_length=16)]
"""A share for reading, e.g. ``97.3%``."""


class LeverQuality(ApiModel):
    """One lever's agreement with the reference tier, and its interval."""

    lever: Annotated[str, Field(max_length=64)]
    """The lever."""
    compared: Count = 0
    """Answers compared this period."""
    agreement: ShownShare = ""
    """Share the reference agreed with."""
    lower: ShownShare = ""
    """Lower end of the interval at ``confidence``."""
    upper: ShownShare = ""
    """Upper end; below ``floor``, condition ``QualityBelowFloor`` is True."""


class QualityRetained(ApiModel):
    """Quality retained as shadow comparisons measure it this period (``spec.shadow``)."""

    floor: ShownShare = ""
    """``spec.quality.target``."""
    confidence: ShownShare = ""
    """``spec.quality.confidence``: the intervals' coverage."""
    compared: Count = 0
    """Answers compared, all levers."""
    agreement: ShownShare = ""
    """Share the reference agreed with, all levers."""
    lower: ShownShare = ""
    """Lower end of its interval."""
    upper: ShownShare = ""
    """Upper end of its interval."""
    levers: list[LeverQuality] = Field(default_factory=list, max_length=16)
    """Per lever."""
    shadow_cost: Money = Decimal(0)
    """USD the comparisons cost this period."""
    shadow_share: ShownShare = ""
    """That cost as a share of the period's spend."""


class PreviousPeriod(ApiModel):
    """The last period's totals: the ``previousPeriod`` baseline of alerts."""

    start: Annotated[str, Field(max_length=32)]
    """When it began (RFC 3339)."""
    end: Annotated[str, Field(max_length=32)]
    """When it ended (RFC 3339)."""
    amount: Money = Decimal(0)
    """USD spent in it."""
    usage: UsageCounts = Field(default_factory=UsageCounts)
    """What was reported in it."""


class PolicyDisplay(ApiModel):
    """What ``kubectl get`` shows: rounded and joined for reading (exact values stay in
    the fields above)."""

    routes: Annotated[str, Field(max_length=4096)] = ""
    """Every route the policy uses, comma-separated."""
    budget: Annotated[str, Field(max_length=64)] = ""
    """The budget with its currency and period, e.g. ``100 USD/month``."""
    spend: Annotated[str, Field(max_length=32)] = ""
    """Spend this period, to the cent, e.g. ``$12.35``."""
    saved: Annotated[str, Field(max_length=32)] = ""
    """Savings this period, to the cent."""


class CostPolicyStatus(ApiModel):
    """What the operator observed of a CostPolicy."""

    observed_generation: Annotated[int, Field(ge=0)] = 0
    """The ``metadata.generation`` this status describes."""
    conditions: list[Condition] = Field(default_factory=list)
    """``Ready``, ``Applied``, ``SidecarsInjected``, ``FieldsInEffect``, ``BudgetExceeded``,
    ``QualityBelowFloor`` and alert conditions."""
    config_version: Annotated[str, Field(max_length=64)] = ""
    """Version (content hash) of the compiled config in force."""
    sidecars: Sidecars = Field(default_factory=Sidecars)
    """Sidecars and their acknowledgements."""
    spend: Spend | None = None
    """Spend this period."""
    savings: SignedAmount | None = None
    """USD saved this period against sending everything to the reference tier."""
    cache_hit_rate: Annotated[str, Field(max_length=16)] = ""
    """Share of requests served from cache this period, e.g. ``37%``."""
    cached_input_share: Annotated[str, Field(max_length=16)] = ""
    """Share of input tokens providers read from their prompt caches this period."""
    tier_shares: list[TierShare] = Field(default_factory=list, max_length=64)
    """Share of model-answered requests per tier this period."""
    usage: UsageCounts | None = None
    """Counts behind the shares above."""
    spenders: list[Spender] = Field(default_factory=list, max_length=50)
    """Spend by attribution label this period, largest first."""
    tasks: Tasks | None = None
    """Cost and tokens per task this period."""
    semantic_checks: SemanticChecks | None = None
    """How often semantic hits answer another question, measured this period."""
    shadow: ShadowCounts | None = None
    """Shadow comparisons counted this period."""
    quality: QualityRetained | None = None
    """Quality retained, from the shadow comparisons."""
    tuning: list[LeverTuning] = Field(default_factory=list, max_length=8)
    """What ``shadow.autoTune`` changed; the compiler puts it in the sidecars' config."""
    previous_period: PreviousPeriod | None = None
    """Totals of the last period."""
    display: PolicyDisplay | None = None
    """The same, readable: what the printer columns show."""


class CostPolicy(ApiModel):
    """How the pods a policy selects may spend on model calls."""

    api_version: Literal["tokenomy.dev/v1alpha1"] = "tokenomy.dev/v1alpha1"
    """Always ``tokenomy.dev/v1alpha1``."""
    kind: Literal["CostPolicy"] = COST_POLICY_KIND
    """Always ``CostPolicy``."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: CostPolicySpec
    """What the policy declares."""
    status: CostPolicyStatus | None = None
    """What the operator observed."""
