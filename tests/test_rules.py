"""Each cross-field rule gives the same verdict as CEL (API server) and in Python (compiler)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tokenomy_api.costpolicy import (
    CacheScope,
    CacheStore,
    Confidence,
    CostPolicySpec,
    DomainRoute,
    McpServer,
    RegionPlacement,
    Routing,
    SemanticCache,
    Tools,
    ToolUpstream,
)
from tokenomy_api.crd import structural_schema
from tokenomy_api.meta import ApiModel, LabelSelectorRequirement
from tokenomy_api.modelroute import Backend, Embedding, ModelRouteSpec, Price, Tier

from helpers import cel_failures, with_defaults

PRICE = {"input": "1", "output": "2"}
B_URL = {"name": "a", "model": "m", "url": "https://x/v1", "price": PRICE}
B_SVC = {"name": "b", "model": "m", "service": {"name": "s", "port": 80}, "price": PRICE}
REDIS = {"url": "redis://r:6379/0"}
TOOL = {"name": "t", "url": "https://tool/api"}

CASES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (Backend, B_URL, True),
    (Price, PRICE, True),
    (Price, {**PRICE, "batchInput": "0.5", "batchOutput": "1"}, True),
    (Price, {**PRICE, "batchInput": "0.5"}, False),
    (Backend, B_SVC, True),
    (Backend, {**B_URL, "service": {"name": "s", "port": 80}}, False),
    (Backend, {"name": "a", "model": "m"}, False),
    (Tier, {"name": "t", "backends": [B_URL, B_SVC]}, True),
    (Tier, {"name": "t", "backends": [B_URL, B_URL]}, False),
    (Embedding, {}, True),
    (Embedding, {"provider": "local", "url": "https://e/v1"}, False),
    (Embedding, {"provider": "openai", "url": "https://e/v1"}, True),
    (Embedding, {"provider": "openai"}, False),
    (ModelRouteSpec, {"model": "m", "tiers": [{"name": "a", "backends": [B_URL]}]}, True),
    (
        ModelRouteSpec,
        {
            "model": "m",
            "tiers": [{"name": "a", "backends": [B_URL]}, {"name": "a", "backends": [B_URL]}],
        },
        False,
    ),
    (
        ModelRouteSpec,
        {"model": "m", "defaultTier": "a", "tiers": [{"name": "a", "backends": [B_URL]}]},
        True,
    ),
    (
        ModelRouteSpec,
        {"model": "m", "defaultTier": "z", "tiers": [{"name": "a", "backends": [B_URL]}]},
        False,
    ),
    (CacheScope, {}, True),
    (CacheScope, {"type": "header", "header": "x-tenant"}, True),
    (CacheScope, {"type": "header"}, False),
    (CacheScope, {"type": "policy", "header": "x-tenant"}, False),
    (SemanticCache, {"threshold": 0.9}, True),
    (SemanticCache, {"wrongHitBudget": {"maxWrongShare": 0.02}}, True),
    (SemanticCache, {"threshold": 0.9, "wrongHitBudget": {"maxWrongShare": 0.02}}, False),
    (CacheStore, {}, True),
    (CacheStore, {"type": "redis", "redis": REDIS}, True),
    (CacheStore, {"type": "redis"}, False),
    (CacheStore, {"type": "memory", "redis": REDIS}, False),
    (Confidence, {"method": "scorer", "scorer": "cm"}, True),
    (Confidence, {"method": "scorer"}, False),
    (Confidence, {"method": "logprobs"}, True),
    (DomainRoute, {"name": "d", "tier": "t", "keywords": ["k"]}, True),
    (DomainRoute, {"name": "d", "tier": "t", "examples": ["e"]}, True),
    (DomainRoute, {"name": "d", "tier": "t"}, False),
    (DomainRoute, {"name": "d", "tier": "t", "keywords": [], "examples": []}, False),
    (Routing, {}, True),
    (Routing, {"domains": [{"name": "d", "tier": "t", "keywords": ["k"]}] * 2}, False),
    (RegionPlacement, {}, True),
    (RegionPlacement, {"strategy": "pinned", "pinned": "eu"}, True),
    (RegionPlacement, {"strategy": "pinned"}, False),
    (RegionPlacement, {"strategy": "cheapest", "pinned": "eu"}, False),
    (RegionPlacement, {"strategy": "pinned", "pinned": "eu", "allowed": ["eu", "us"]}, True),
    (RegionPlacement, {"strategy": "pinned", "pinned": "eu", "allowed": ["us"]}, False),
    (Tools, {}, True),
    (Tools, {"upstreams": [TOOL, {**TOOL, "name": "u"}]}, True),
    (Tools, {"upstreams": [TOOL, TOOL]}, False),
    (Tools, {"mcpServers": [TOOL, {**TOOL, "name": "u"}]}, True),
    (Tools, {"mcpServers": [TOOL, TOOL]}, False),
    (ToolUpstream, TOOL, True),
    (ToolUpstream, {**TOOL, "timeout": "2s"}, True),
    (ToolUpstream, {**TOOL, "timeout": "0"}, False),
    (McpServer, TOOL, True),
    (McpServer, {**TOOL, "timeout": "0"}, False),
    (CostPolicySpec, {"selector": {}, "routes": ["a", "b"]}, True),
    (CostPolicySpec, {"selector": {}, "routes": ["a", "a"]}, False),
    (LabelSelectorRequirement, {"key": "k", "operator": "In", "values": ["v"]}, True),
    (LabelSelectorRequirement, {"key": "k", "operator": "In"}, False),
    (LabelSelectorRequirement, {"key": "k", "operator": "Exists"}, True),
    (LabelSelectorRequirement, {"key": "k", "operator": "Exists", "values": ["v"]}, False),
]


@pytest.mark.parametrize(("model", "value", "valid"), CASES)
def test_cel_and_python_agree(model: type[BaseModel], value: dict[str, Any], valid: bool) -> None:
    schema = structural_schema(model)
    cel_messages = [m for _, m in cel_failures(schema, with_defaults(schema, value))]
    try:
        model.model_validate(value)
        python_messages: list[str] = []
    except ValidationError as error:
        python_messages = [e["msg"] for e in error.errors()]
    assert (cel_messages == []) is valid
    assert python_messages == cel_messages


def _subclasses(cls: type[ApiModel]) -> set[type[ApiModel]]:
    return {sub for direct in cls.__subclasses__() for sub in {direct} | _subclasses(direct)}


def test_every_rule_has_a_failing_and_a_passing_case() -> None:
    declared = {c for c in _subclasses(ApiModel) if "rules" in c.__dict__ and c.rules}
    assert declared == {m for m, _, _ in CASES}
    for cls in declared:
        verdicts = {ok for m, _, ok in CASES if m is cls}
        assert verdicts == {True, False}, cls.__name__
