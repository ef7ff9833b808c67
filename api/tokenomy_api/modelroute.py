"""``ModelRoute``: what an application may call, and where that call can go."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from tokenomy_api.meta import (
    ApiModel,
    Condition,
    DnsLabel,
    Duration,
    Money,
    ObjectMeta,
    ResourceName,
    SecretKeyRef,
)
from tokenomy_api.names import MODEL_ROUTE_KIND
from tokenomy_api.rules import Rule

Provider = Literal["openai"]
"""The API dialect a backend speaks; ``openai`` covers every OpenAI-compatible server."""

Capacity = Literal["spot", "on-demand", "reserved"]
"""How the capacity behind a backend is bought; spot is cheapest and can vanish."""

_URL_PATTERN = r"^https?://[^\s/$.?#][^\s]*$"


class ServiceRef(ApiModel):
    """An in-cluster Service in the route's namespace; endpoints come from EndpointSlices."""

    name: ResourceName
    """Name of the Service."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """Port number of the Service to call."""
    path: Annotated[str, Field(max_length=256, pattern=r"^/[^\s]*$")] = "/v1"
    """Path of the OpenAI-compatible API on that port."""


class Credentials(ApiModel):
    """Where the sidecar finds the provider key; the application never sees it."""

    secret_ref: SecretKeyRef
    """The Secret key holding the API key, mounted only into the sidecar."""


class Price(ApiModel):
    """List price of a backend in USD per million tokens."""

    input: Money
    """USD per million input (prompt) tokens."""
    output: Money
    """USD per million output (completion) tokens."""
    cached_input: Money | None = None
    """USD per million input tokens read from the provider's prompt cache; ``input`` if unset."""
    batch_input: Money | None = None
    """USD per million input tokens through the provider's Batch API. Set (with
    ``batchOutput``) when the backend offers the OpenAI Batch API: batch jobs sent to the
    sidecar then go to it; without, their lines are sent live."""
    batch_output: Money | None = None
    """USD per million output tokens through the provider's Batch API."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.batchInput) == has(self.batchOutput)",
            message="batchInput and batchOutput are set together",
            check=lambda p: (p.batch_input is None) == (p.batch_output is None),
        ),
    )


class Backend(ApiModel):
    """One place a tier's requests can be sent."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.url) != has(self.service)",
            message="a backend needs exactly one of url or service",
            check=lambda b: (b.url is None) != (b.service is None),
        ),
    )

    name: DnsLabel
    """Name of the backend, unique within its tier."""
    provider: Provider = "openai"
    """API dialect of the backend."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """The provider's name for the model, sent upstream in the request's ``model`` field."""
    url: Annotated[str, Field(max_length=2048, pattern=_URL_PATTERN)] | None = None
    """Base URL of the OpenAI-compatible API, e.g. ``https://api.openai.com/v1``."""
    service: ServiceRef | None = None
    """An in-cluster model server instead of ``url``."""
    region: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    """Region of the backend, e.g. ``us-east-1``; for ``service`` backends nodes' labels win."""
    zone: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    """Zone of the backend, when known."""
    capacity: Capacity = "on-demand"
    """How the capacity is bought; for ``service`` backends nodes' labels win."""
    credentials: Credentials | None = None
    """The API key to send; none for servers that need no key."""
    price: Price | None = None
    """List price; required for every backend a CostPolicy uses, since metering needs it."""
    weight: Annotated[int, Field(ge=0, le=1000)] = 1
    """Share of traffic among equally preferred backends; 0 drains the backend."""
    prompt_cache_key: bool = False
    """Send OpenAI's ``prompt_cache_key`` (a hash of the request's cache partition and
    route) when the client sets none, so the provider keeps one partition's requests on
    the same prompt cache. For APIs that accept it (OpenAI's); off by default, since some
    OpenAI-compatible servers refuse fields they do not know."""


class Tier(ApiModel):
    """A group of interchangeable backends serving models of similar strength."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.backends.all(b, self.backends.exists_one(c, c.name == b.name))",
            message="backend names must be unique within a tier",
            check=lambda t: len({b.name for b in t.backends}) == len(t.backends),
        ),
    )

    name: DnsLabel
    """Name of the tier, e.g. ``small``; CostPolicies refer to tiers by this name."""
    backends: Annotated[list[Backend], Field(min_length=1, max_length=32)]
    """Where this tier's requests can go, at least one."""


class Embedding(ApiModel):
    """Where the semantic cache and the routers get vectors."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.provider == 'local' ? !has(self.url) && !has(self.service) "
            ": has(self.url) != has(self.service)",
            message="a local embedder takes neither url nor service; an openai embedder "
            "needs exactly one of them",
            check=lambda e: (
                e.url is None and e.service is None
                if e.provider == "local"
                else (e.url is None) != (e.service is None)
            ),
        ),
    )

    provider: Literal["openai", "local"] = "local"
    """``local`` runs a small model inside the sidecar; ``openai`` calls ``/v1/embeddings``."""
    model: Annotated[str, Field(min_length=1, max_length=256)] = "all-MiniLM-L6-v2"
    """The embedding model's name."""
    url: Annotated[str, Field(max_length=2048, pattern=_URL_PATTERN)] | None = None
    """Base URL of an OpenAI-compatible embeddings API."""
    service: ServiceRef | None = None
    """An in-cluster embeddings server instead of ``url``."""
    credentials: Credentials | None = None
    """The API key to send, if the server needs one."""
    price: Price | None = None
    """List price of embedding calls (only ``input`` is used)."""


class Retry(ApiModel):
    """How hard the sidecar tries before a request fails."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    """Tries per request across backends of a tier, the first included."""
    timeout: Duration = "60s"
    """Time allowed for one try, until the response's first byte."""


class ModelRouteSpec(ApiModel):
    """What a ModelRoute declares."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
            message="tier names must be unique",
            check=lambda s: len({t.name for t in s.tiers}) == len(s.tiers),
        ),
        Rule(
            cel="!has(self.defaultTier) || self.tiers.exists(t, t.name == self.defaultTier)",
            message="defaultTier must name one of the tiers",
            check=lambda s: s.default_tier is None or s.default_tier in {t.name for t in s.tiers},
        ),
    )

    model: Annotated[str, Field(min_length=1, max_length=256)]
    """The name applications put in a request's ``model`` field to use this route."""
    tiers: Annotated[list[Tier], Field(min_length=1, max_length=8)]
    """Tiers from cheapest to strongest; the last is the reference for savings."""
    default_tier: DnsLabel | None = None
    """Tier used when no routing decision applies or a pipeline stage fails; the last tier
    when unset, so a failure never makes answers worse."""
    retry: Retry = Field(default_factory=Retry)
    """Retry budget for calls on this route."""
    embedding: Embedding | None = None
    """Embedding model for the semantic cache and example-based routing."""


class BackendStatus(ApiModel):
    """What the operator observed of one backend."""

    tier: DnsLabel
    """Tier of the backend."""
    name: DnsLabel
    """Name of the backend."""
    endpoints: Annotated[int, Field(ge=0)] = 0
    """Ready endpoints (1 for a ``url`` backend)."""


class RouteDisplay(ApiModel):
    """What ``kubectl get`` shows."""

    tiers: Annotated[str, Field(max_length=4096)] = ""
    """Every tier, cheapest first, comma-separated."""


class ModelRouteStatus(ApiModel):
    """What the operator observed of a ModelRoute."""

    observed_generation: Annotated[int, Field(ge=0)] = 0
    """The ``metadata.generation`` this status describes."""
    conditions: list[Condition] = Field(default_factory=list)
    """``Ready`` (the spec is valid) and ``ResolvedRefs`` (Services and Secrets exist)."""
    backends: list[BackendStatus] = Field(default_factory=list)
    """Endpoint counts per backend."""
    display: RouteDisplay | None = None
    """The same, readable: what the printer columns show."""


class ModelRoute(ApiModel):
    """A model name applications call, and the tiers and backends behind it."""

    api_version: Literal["tokenomy.dev/v1alpha1"] = "tokenomy.dev/v1alpha1"
    """Always ``tokenomy.dev/v1alpha1``."""
    kind: Literal["ModelRoute"] = MODEL_ROUTE_KIND
    """Always ``ModelRoute``."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: ModelRouteSpec
    """What the route declares."""
    status: ModelRouteStatus | None = None
    """What the operator observed."""
