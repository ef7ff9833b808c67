"""The compiled sidecar config: the one contract between operator and sidecar.

The compiler (:mod:`tokenomy_api.compiler`) produces it, the operator ships
it over xDS, the sidecar validates and applies it. Everything is resolved:
defaults filled, tier references checked, backends filtered and ordered by
the policy's placement, ``service`` addresses expanded, durations turned into
seconds. The sidecar never has to look at a CostPolicy or ModelRoute.

These are the contract's own types, not the CRD's: renaming a field of a
CostPolicy changes the compiler, never what travels. Only what a sidecar
reads is here; operator-only parts (alerts, warning thresholds, status
bookkeeping) stay in the operator, so changing them pushes nothing. A change
that old sidecars could not read gets a new :data:`CONTRACT`, and with it a
new xDS type URL (:data:`tokenomy_api.names.SIDECAR_CONFIG_TYPE_URL`).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field

from tokenomy_api.meta import WIRE, DnsLabel, Fraction, Money, ResourceName

CONTRACT: Final = "v1"
"""Version of this contract's schema; part of the xDS type URL."""

Seconds = Annotated[float, Field(ge=0)]
"""A duration in seconds."""

Capacity = Literal["spot", "on-demand", "reserved"]
"""How the capacity behind an endpoint is bought."""


class Section(BaseModel):
    """Base of every contract type: camelCase on the wire, frozen, unknown fields refused."""

    model_config = WIRE


class PolicyRef(Section):
    """The CostPolicy a config was compiled from."""

    namespace: ResourceName
    """Namespace of the policy."""
    name: ResourceName
    """Name of the policy."""

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


class SecretKey(Section):
    """A key of a Secret in the policy's namespace, mounted into the sidecar."""

    name: ResourceName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key within the Secret."""


class Price(Section):
    """List price in USD per million tokens."""

    input: Money
    """Per million input (prompt) tokens."""
    output: Money
    """Per million output (completion) tokens."""
    cached_input: Money | None = None
    """Per million input tokens read from the provider's prompt cache; ``input`` if unset."""
    batch_input: Money | None = None
    """Per million input tokens through the provider's Batch API; none: it has none."""
    batch_output: Money | None = None
    """Per million output tokens through the provider's Batch API."""

    def batch(self) -> Price | None:
        """The price of a line sent through the Batch API, or None without one."""
        if self.batch_input is None or self.batch_output is None:
            return None
        return Price(input=self.batch_input, output=self.batch_output)


# --- routes --------------------------------------------------------------------


class CompiledEndpoint(Section):
    """One address a backend's requests can be sent to."""

    url: str
    """Base URL of the OpenAI-compatible API."""
    region: str | None = None
    """Region, from the ModelRoute or the node's labels."""
    zone: str | None = None
    """Zone, from the ModelRoute or the node's labels."""
    capacity: Capacity = "on-demand"
    """How the capacity is bought."""
    priority: Annotated[int, Field(ge=0)] = 0
    """Preference from the policy's placement: 0 first, higher only when lower ones fail."""


class CompiledBackend(Section):
    """A backend of a tier, with its endpoints."""

    name: DnsLabel
    """Name of the backend in the ModelRoute."""
    cluster: str
    """Name unique across the config: ``namespace/route/tier/backend`` (the Envoy cluster)."""
    provider: Literal["openai"]
    """API dialect."""
    model: str
    """The provider's model name sent upstream."""
    endpoints: list[CompiledEndpoint]
    """Addresses, in priority order; empty while a Service has no ready endpoint."""
    credentials: SecretKey | None = None
    """The Secret key with the API key, if any."""
    price: Price
    """List price per million tokens; ``cachedInput`` filled in."""
    weight: Annotated[int, Field(ge=0)]
    """Share of traffic among equally preferred backends."""
    prompt_cache_key: bool = False
    """Set ``prompt_cache_key`` per cache partition where the client set none."""


class CompiledTier(Section):
    """A tier with its resolved thresholds."""

    name: DnsLabel
    """Name of the tier."""
    backends: list[CompiledBackend]
    """Backends the placement allows, at least one."""
    cascade_threshold: Fraction | None = None
    """Confidence below which the cascade escalates past this tier."""
    routing_threshold: Fraction | None = None
    """Complexity score at or above which a request skips this tier; the model's own cut
    when unset."""


class CompiledRetry(Section):
    """How hard a route's calls are tried."""

    attempts: Annotated[int, Field(ge=1)]
    """Tries per call across a tier's backends, the first included."""
    timeout_seconds: Seconds
    """Time allowed for one try, until the response's first byte."""


class CompiledEmbedding(Section):
    """Where a route's vectors come from."""

    provider: Literal["openai", "local"]
    """``local``: a model inside the sidecar; ``openai``: an embeddings API."""
    model: str
    """The embedding model's name."""
    url: str | None = None
    """Base URL of the embeddings API (a Service resolved to its cluster DNS name)."""
    credentials: SecretKey | None = None
    """The API key to send, if any."""
    price: Price | None = None
    """List price of embedding calls (only ``input`` is used)."""


class CompiledRoute(Section):
    """A ModelRoute as the sidecar needs it."""

    name: ResourceName
    """Name of the ModelRoute."""
    model: str
    """The name applications call."""
    tiers: list[CompiledTier]
    """Tiers, cheapest first."""
    default_tier: DnsLabel
    """Tier for requests no decision applies to, and for fail-open."""
    reference_tier: DnsLabel
    """Tier savings are measured against (the last, strongest one)."""
    cascade_tiers: list[DnsLabel]
    """Tiers the cascade walks, cheapest first; empty when the cascade is off."""
    retry: CompiledRetry
    """Retry budget."""
    embedding: CompiledEmbedding | None = None
    """Embedding model, when the route has one."""

    def tier(self, name: str) -> CompiledTier:
        """The tier called ``name`` (the compiler checked every reference)."""
        return next(t for t in self.tiers if t.name == name)

    @property
    def reference_price(self) -> Price:
        """The price savings are measured against: the reference tier's first backend."""
        return self.tier(self.reference_tier).backends[0].price


# --- one section per stage ------------------------------------------------------


class CompiledExactCache(Section):
    """The exact cache."""

    enabled: bool
    """Whether it is on."""
    ttl_seconds: Seconds
    """How long an answer stays servable."""


class CompiledSemanticCache(Section):
    """The semantic cache."""

    enabled: bool
    """Whether it is on."""
    threshold: Fraction
    """Cosine similarity at or above which a stored answer is served (no budget)."""
    ttl_seconds: Seconds
    """How long an answer stays servable."""
    budget: CompiledWrongHitBudget | None = None
    """Serve by a wrong-hit budget learnt from outcomes instead of ``threshold``."""


class CompiledWrongHitBudget(Section):
    """The semantic cache's wrong-hit budget (:mod:`tokenomy_sidecar.semantic_budget`)."""

    max_wrong_share: Annotated[float, Field(ge=0.001, le=0.5)]
    """Acceptable share of served near matches that answer another question."""
    min_similarity: Fraction
    """Below this similarity a nearest question is neither served nor learnt from."""
    explore: Fraction
    """Share of servable near matches sent to the model anyway, to keep measuring."""


class CompiledScope(Section):
    """The cache's hard partition."""

    type: Literal["policy", "namespace", "header"]
    """What entries are shared across."""
    header: str | None = None
    """The partitioning request header, for ``header``."""


class CompiledRedis(Section):
    """A Redis shared by the policy's sidecars."""

    url: str
    """``redis://`` or ``rediss://`` URL."""
    password: SecretKey | None = None
    """The Secret key holding the password, if any."""


class CompiledStore(Section):
    """Where cache entries live."""

    type: Literal["memory", "redis"]
    """Per sidecar, or shared."""
    max_entries: Annotated[int, Field(ge=1)]
    """Entries kept per partition in memory."""
    max_memory_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024
    """Memory for the in-process entries of both caches together."""
    redis: CompiledRedis | None = None
    """The Redis server, for ``redis``."""


class CompiledNever(Section):
    """Requests never served from or stored into the cache."""

    with_tools: bool
    """Requests that offer tools."""
    temperature_above: float | None = None
    """Requests asking for more randomness than this."""
    headers: list[str] = Field(default_factory=list)
    """Requests carrying any of these headers."""


class CompiledCache(Section):
    """Caching stages: identify (partition), exact and semantic cache."""

    exact: CompiledExactCache
    """The exact cache."""
    semantic: CompiledSemanticCache
    """The semantic cache."""
    scope: CompiledScope
    """The partition entries are confined to."""
    store: CompiledStore
    """Where entries live."""
    never: CompiledNever
    """What is never cached."""

    @classmethod
    def off(cls) -> CompiledCache:
        """No caching at all."""
        return cls(
            exact=CompiledExactCache(enabled=False, ttl_seconds=0),
            semantic=CompiledSemanticCache(enabled=False, threshold=1.0, ttl_seconds=0),
            scope=CompiledScope(type="policy"),
            store=CompiledStore(type="memory", max_entries=1),
            never=CompiledNever(with_tools=True),
        )


class CompiledCascade(Section):
    """The cascade stage: how answers of cheaper tiers are judged."""

    method: Literal["logprobs", "agreement", "verifier", "scorer", "format"]
    """How confidence is measured."""
    samples: Annotated[int, Field(ge=2)]
    """Samples drawn for ``agreement``."""
    verifier_prompt: str | None = None
    """Prompt for ``verifier``; the built-in one when unset."""
    scorer: str | None = None
    """The learned scorer for ``scorer``: ``builtin`` or a mounted model's name."""
    format_checks: bool
    """Also escalate on a truncated answer, a refusal or a ``response_format`` mismatch."""


class CompiledDomain(Section):
    """A domain route resolved against the policy's routes."""

    name: DnsLabel
    """Name of the domain."""
    tier: DnsLabel
    """Tier its requests go to."""
    keywords: list[str]
    """Lower-cased keywords."""
    examples: list[str]
    """Example queries."""
    similarity: Fraction
    """Cosine similarity to an example that selects the domain."""


class CompiledRouting(Section):
    """The routing stage."""

    complexity: bool
    """Whether complexity routing is on."""
    complexity_model: str
    """``builtin`` or the name of a trained model in the sidecar's models directory."""
    cost_aware: bool = True
    """Whether complexity scores are divided by the request's relative cost."""
    domains: list[CompiledDomain]
    """Domain routes, checked in order."""


class CompiledQuality(Section):
    """What a trained model's cut is chosen for, where no threshold is set by hand."""

    target: float = 0.95
    """Share of the reference tier's quality kept on new requests."""
    confidence: float = 0.9
    """Probability that the target holds."""


class CompiledPlacement(Section):
    """Backend choice at request time (what the compiler could not decide)."""

    nearest: bool
    """Prefer endpoints in the pod's own region."""


class CompiledShadow(Section):
    """The shadow stage: which answers are compared with the reference tier's, and how."""

    sample: Annotated[float, Field(gt=0, le=1)]
    """Share of eligible answers compared."""
    max_spend_share: Annotated[float, Field(gt=0)]
    """Shadow spend stops above this share of the requests' own spend."""
    compare: Literal["auto", "exact", "similarity", "judge"]
    """How answers are compared."""
    similarity: Fraction
    """Cosine similarity at or above which two free-text answers agree."""
    judge_tier: DnsLabel | None = None
    """Tier that judges; the route's cheapest when None."""


class CompiledTuning(Section):
    """How far shadow comparison has tightened the cheaper levers (``shadow.autoTune``)."""

    cascade: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Added to every cascade threshold (a kept answer needs more confidence)."""
    semantic: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Added to the semantic cache's threshold (a hit must be closer)."""
    routing: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Taken off every complexity cut (more requests skip the cheaper tiers)."""


class CompiledSummary(Section):
    """Summaries of dropped turns, from the route's cheapest tier."""

    max_tokens: Annotated[int, Field(ge=1)]
    """Longest summary, in tokens."""
    ttl_seconds: Seconds
    """How long a summary is kept for the conversation's later requests."""
    timeout_seconds: Seconds
    """Longest a request waits for its summary."""


class CompiledPrompt(Section):
    """The trim stage's input side."""

    history_window: Annotated[int, Field(ge=1)] | None = None
    """Most recent messages kept (system messages always kept); all when unset."""
    history_tokens: Annotated[int, Field(ge=1)] | None = None
    """Most recent turns kept within this many estimated tokens; tool calls stay with
    their results."""
    deduplicate: bool = False
    """Drop messages that repeat an earlier one word for word."""
    max_input_tokens: Annotated[int, Field(ge=1)] | None = None
    """Requests estimated above this many input tokens (after trimming) get a 400."""
    trim_to_fit: bool = False
    """Over ``max_input_tokens``: drop the oldest turns until it fits, before refusing."""
    summary: CompiledSummary | None = None
    """Summarise the turns the window drops; off when None."""


class CompiledOutput(Section):
    """The trim stage's output side."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Upper bound on ``max_tokens``."""
    brevity: str | None = None
    """An instruction added to the system prompt."""


class CompiledToolPruning(Section):
    """The tool-pruning stage."""

    min_tools: Annotated[int, Field(ge=1)] = 16
    """Requests offering this many definitions or fewer keep them all; others at least
    this many."""
    keep_share: float = 0.2
    """Share of the offered definitions kept, the most relevant first."""


class CompiledToolUpstream(Section):
    """One HTTP tool API behind ``/tools/<name>/``."""

    name: DnsLabel
    """The path prefix."""
    url: str
    """Base URL the rest of the path is appended to."""
    ttl_seconds: Seconds
    """How long a successful GET response is reused; 0 never."""
    timeout_seconds: Annotated[float, Field(gt=0)]
    """Longest a call may take."""
    fields: list[str] = []
    """Dotted JSON paths kept in responses; all when empty."""
    price_per_call: Money = Decimal(0)
    """USD a call costs."""


class CompiledMcpServer(Section):
    """One MCP server behind ``/mcp/<name>``."""

    name: DnsLabel
    """The path."""
    url: str
    """The server's MCP endpoint."""
    ttl_seconds: Seconds
    """How long a read-only or idempotent tool's result is reused; 0 never."""
    timeout_seconds: Annotated[float, Field(gt=0)]
    """Longest a call may take."""
    allow: list[str] = []
    """Tools the agent may list and call; all when empty."""
    results: dict[str, list[str]] = {}
    """Dotted JSON paths kept in each named tool's results."""
    price_per_call: Money = Decimal(0)
    """USD a tool call costs."""


class CompiledTools(Section):
    """The tool proxy."""

    upstreams: list[CompiledToolUpstream] = []
    """HTTP tool APIs, by name."""
    mcp_servers: list[CompiledMcpServer] = []
    """MCP servers, by name."""

    def uncached(self) -> CompiledTools:
        """The same proxy without caching or trimming: calls reach the tools as sent."""
        return CompiledTools(
            upstreams=[u.model_copy(update={"ttl_seconds": 0, "fields": []})
                       for u in self.upstreams],
            mcp_servers=[m.model_copy(update={"ttl_seconds": 0, "results": {}})
                         for m in self.mcp_servers],
        )  # fmt: skip


class CompiledPacking(Section):
    """The packing stage."""

    max_batch_size: Annotated[int, Field(ge=2)]
    """Requests per packed call at most."""
    max_wait_seconds: Seconds
    """Longest a request waits for others."""
    routes: list[str] = []
    """Routes packed; all when empty."""


class CompiledBudget(Section):
    """The budget stage."""

    amount: Money
    """USD per period."""
    period: Literal["daily", "weekly", "monthly"]
    """Calendar period the amount applies to."""
    time_zone: str
    """IANA time zone periods start in."""
    on_exceeded: Literal["alert", "downgrade", "reject"]
    """What happens once it is spent."""
    fail_mode: Literal["lease", "stop"]
    """When the operator is unreachable: spend the current lease, or stop."""


class CompiledAttribution(Section):
    """The metering stage's labels."""

    pod_labels: list[str]
    """Pod labels copied onto metrics and usage reports."""
    header: str | None = None
    """Request header that overrides the pod's ``feature`` label."""


class SidecarConfig(Section):
    """Everything a sidecar needs to serve one CostPolicy's pods."""

    version: str
    """Content hash of everything below; equal configs have equal versions."""
    policy: PolicyRef
    """The policy compiled."""
    routes: list[CompiledRoute]
    """Routes by model name, sorted."""
    cache: CompiledCache
    """Caching."""
    cascade: CompiledCascade | None = None
    """How the cascade judges answers; none when the cascade is off."""
    routing: CompiledRouting
    """Routing."""
    quality: CompiledQuality = CompiledQuality()
    """The quality trained cuts keep."""
    shadow: CompiledShadow | None = None
    """Shadow comparison; none when it is off."""
    tuning: CompiledTuning = CompiledTuning()
    """What shadow comparison has tightened; nothing unless ``shadow.autoTune`` is on."""
    tool_pruning: CompiledToolPruning | None = None
    """How tool definitions are pruned; none when pruning is off."""
    tools: CompiledTools | None = None
    """The tool proxy; none when it is off (its paths answer 404)."""
    packing: CompiledPacking | None = None
    """Request packing; none when it is off."""
    placement: CompiledPlacement
    """Request-time placement."""
    prompt: CompiledPrompt
    """Prompt trimming."""
    output: CompiledOutput
    """Output caps."""
    budget: CompiledBudget | None = None
    """Budget, if any."""
    attribution: CompiledAttribution
    """Attribution."""

    def route_for(self, model: str) -> CompiledRoute | None:
        """The route applications reach by calling ``model``."""
        return next((r for r in self.routes if r.model == model), None)

    def pass_through(self) -> SidecarConfig:
        """This config with every optimisation off: the same routes, each to its default tier.

        What a sidecar serves when its policy is deleted: requests keep flowing
        exactly as the app sent them, to the backends they went to before.
        """
        return self.model_copy(
            update={
                "routes": [r.model_copy(update={"cascade_tiers": []}) for r in self.routes],
                "cache": CompiledCache.off(),
                "cascade": None,
                "routing": CompiledRouting(
                    complexity=False, complexity_model="builtin", domains=[]
                ),
                "prompt": CompiledPrompt(),
                "output": CompiledOutput(),
                "budget": None,
                "tool_pruning": None,
                "packing": None,
                "shadow": None,
                "tuning": CompiledTuning(),
                "tools": self.tools.uncached() if self.tools is not None else None,
            }
        ).versioned()

    def versioned(self) -> SidecarConfig:
        """This config with its version set to the hash of its content."""
        return self.model_copy(update={"version": content_version(self.dump())})

    def dump(self) -> dict[str, Any]:
        """The config as JSON data (camelCase, no ``None``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> bytes:
        """The canonical bytes of this config: what travels and what is hashed."""
        return canonical_json(self.dump())

    @classmethod
    def from_json(cls, data: bytes | str) -> SidecarConfig:
        """Parse and verify a config; a version that does not match its content is refused."""
        config = cls.model_validate_json(data)
        expected = content_version(config.dump())
        if config.version != expected:
            raise ValueError(
                f"config version {config.version} does not match its content ({expected})"
            )
        return config


def canonical_json(data: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal data, equal bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_version(data: dict[str, Any]) -> str:
    """The version of dumped content: a hash of everything but a ``version`` field.

    The one notion of version: configs, and the xDS snapshots that carry
    them, are versioned by this hash of their content.
    """
    body = {k: v for k, v in data.items() if k != "version"}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:16]
