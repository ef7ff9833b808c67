"""The compiled sidecar config: the one contract between operator and sidecar.

The compiler (:mod:`tokenomy_api.compiler`) produces it, the operator ships
it over xDS, the sidecar validates and applies it. Everything is resolved:
defaults filled, tier references checked, backends filtered and ordered by
the policy's placement, ``service`` backends expanded to endpoints. The
sidecar never has to look at a CostPolicy or ModelRoute.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import Field

from tokenomy_api.costpolicy import (
    Alerts,
    Attribution,
    Batching,
    Budget,
    Cache,
    Confidence,
    Output,
    Placement,
    Prompt,
    Tools,
)
from tokenomy_api.meta import ApiModel, DnsLabel, Fraction, ResourceName, SecretKeyRef, dump
from tokenomy_api.modelroute import Capacity, Embedding, Price, Provider, Retry


class PolicyRef(ApiModel):
    """The CostPolicy a config was compiled from."""

    namespace: ResourceName
    """Namespace of the policy."""
    name: ResourceName
    """Name of the policy."""

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


class CompiledEndpoint(ApiModel):
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


class CompiledBackend(ApiModel):
    """A backend of a tier, with its endpoints."""

    name: DnsLabel
    """Name of the backend in the ModelRoute."""
    cluster: str
    """Name unique across the config: ``namespace/route/tier/backend`` (the Envoy cluster)."""
    provider: Provider
    """API dialect."""
    model: str
    """The provider's model name sent upstream."""
    endpoints: list[CompiledEndpoint]
    """Addresses, in priority order; empty while a Service has no ready endpoint."""
    credentials: SecretKeyRef | None = None
    """The Secret key with the API key, if any."""
    price: Price
    """List price per million tokens."""
    weight: Annotated[int, Field(ge=0)]
    """Share of traffic among equally preferred backends."""


class CompiledTier(ApiModel):
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


class CompiledDomain(ApiModel):
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


class CompiledRoute(ApiModel):
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
    retry: Retry
    """Retry budget."""
    embedding: Embedding | None = None
    """Embedding model, when the route has one."""


class CompiledRouting(ApiModel):
    """Routing resolved for the sidecar."""

    complexity: bool
    """Whether complexity routing is on."""
    complexity_model: str
    """``builtin`` or the name of a trained model in the sidecar's models directory."""
    cost_aware: bool = True
    """Whether complexity scores are divided by the request's relative cost."""
    domains: list[CompiledDomain]
    """Domain routes, checked in order."""


class SidecarConfig(ApiModel):
    """Everything a sidecar needs to serve one CostPolicy's pods."""

    version: str
    """Content hash of everything below; equal configs have equal versions."""
    policy: PolicyRef
    """The policy compiled."""
    routes: list[CompiledRoute]
    """Routes by model name, sorted."""
    cache: Cache
    """Caching, defaults filled."""
    cascade_confidence: Confidence | None = None
    """How the cascade judges answers; none when the cascade is off."""
    routing: CompiledRouting
    """Routing."""
    placement: Placement
    """Placement (region and spot preference) for dynamic decisions."""
    prompt: Prompt
    """Prompt trimming."""
    output: Output
    """Output caps."""
    batching: Batching
    """Batching."""
    tools: Tools
    """Tool proxy."""
    budget: Budget | None = None
    """Budget, if any."""
    alerts: Alerts
    """Alerts."""
    attribution: Attribution
    """Attribution."""

    def route_for(self, model: str) -> CompiledRoute | None:
        """The route applications reach by calling ``model``."""
        return next((r for r in self.routes if r.model == model), None)

    def pass_through(self) -> SidecarConfig:
        """This config with every optimisation off: the same routes, each to its default tier.

        What a sidecar serves when its policy is deleted: requests keep flowing
        exactly as the app sent them, to the backends they went to before.
        """
        body = self.model_copy(
            update={
                "routes": [r.model_copy(update={"cascade_tiers": []}) for r in self.routes],
                "cache": Cache.model_validate(
                    {"exact": {"enabled": False}, "semantic": {"enabled": False}}
                ),
                "cascade_confidence": None,
                "routing": CompiledRouting(
                    complexity=False, complexity_model="builtin", domains=[]
                ),
                "prompt": Prompt(),
                "output": Output(),
                "batching": Batching(),
                "tools": Tools(),
                "budget": None,
            }
        )
        return body.model_copy(update={"version": content_version(dump(body))})

    def to_json(self) -> bytes:
        """The canonical bytes of this config: what travels and what is hashed."""
        return canonical_json(dump(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> SidecarConfig:
        """Parse and verify a config; a version that does not match its content is refused."""
        config = cls.model_validate_json(data)
        expected = content_version(dump(config))
        if config.version != expected:
            raise ValueError(
                f"config version {config.version} does not match its content ({expected})"
            )
        return config


def canonical_json(data: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal data, equal bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_version(data: dict[str, Any]) -> str:
    """The version of a dumped config: a hash of everything but the version field."""
    body = {k: v for k, v in data.items() if k != "version"}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:16]
