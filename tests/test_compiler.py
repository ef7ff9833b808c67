"""The compiler: resolution, placement, semantic errors and deterministic versions."""

from __future__ import annotations

import ast
import inspect
import random
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tokenomy_api import compiled
from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import ServiceEndpoint, compile_configs
from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.meta import dump
from tokenomy_api.modelroute import ModelRoute

from helpers import backend, policy, route


def compile_one(p: CostPolicy, *routes: ModelRoute, **kwargs: Any) -> SidecarConfig:
    result = compile_configs([p], routes or [route()], **kwargs)
    assert [str(x) for x in result.problems] == []
    return result.configs[f"{p.metadata.namespace}/{p.metadata.name}"]


def problems_of(policies: list[CostPolicy], routes: list[ModelRoute]) -> list[str]:
    return [str(p) for p in compile_configs(policies, routes).problems]


# --- resolution -------------------------------------------------------------


def test_defaults_are_resolved_into_the_config() -> None:
    config = compile_one(policy())
    chat = config.route_for("chat")
    assert chat is not None
    assert [t.name for t in chat.tiers] == ["small", "large"]
    assert chat.default_tier == "large"  # unset: the strongest, so failures never degrade
    assert chat.reference_tier == "large"
    assert chat.cascade_tiers == []  # cascade off
    assert config.cascade is None
    assert chat.retry.timeout_seconds == 60.0  # durations travel as numbers
    assert config.cache.exact.ttl_seconds == 3600.0
    small = chat.tiers[0].backends[0]
    assert small.cluster == "ns/chat/small/s1"
    assert small.price.cached_input == small.price.input  # unset: full input price
    assert config.route_for("unknown") is None


def test_alert_thresholds_resolve_in_the_spec_and_never_reach_the_sidecar() -> None:
    spec = policy(alerts={"costSpike": {"threshold": 200}}).spec
    assert spec.alerts.resolved().cost_spike.threshold == 200
    assert spec.alerts.resolved().cache_hit_drop.threshold == 10
    assert spec.alerts.resolved().tokens_per_request.threshold == 20
    quiet = compile_one(policy(alerts={"costSpike": {"threshold": 200}}))
    assert quiet.to_json() == compile_one(policy()).to_json()
    assert "alerts" not in quiet.dump()


def test_the_contract_imports_no_crd_type() -> None:
    tree = ast.parse(inspect.getsource(compiled))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported & {"tokenomy_api.costpolicy", "tokenomy_api.modelroute"} == set()
    assert set(SidecarConfig.model_fields) == {
        "version", "policy", "routes", "cache", "cascade", "routing", "quality", "tool_pruning",
        "placement", "prompt", "output", "budget", "tools", "packing", "attribution", "shadow",
        "tuning",
    }  # fmt: skip


def test_explicit_default_tier() -> None:
    config = compile_one(policy(), route(defaultTier="small"))
    assert config.routes[0].default_tier == "small"


@pytest.mark.parametrize(
    ("cascade", "expected_tiers", "thresholds"),
    [
        ({"enabled": True}, ["small", "large"], [None, None]),
        ({"enabled": True, "tiers": ["small", "large"]}, ["small", "large"], [None, None]),
        (
            {
                "enabled": True,
                "confidence": {"threshold": 0.6, "perTier": [{"tier": "small", "threshold": 0.9}]},
            },
            ["small", "large"],
            [0.9, 0.6],
        ),
        ({"enabled": False, "tiers": ["small"]}, [], [None, None]),
    ],
)
def test_cascade_resolution(
    cascade: dict[str, Any], expected_tiers: list[str], thresholds: list[float]
) -> None:
    config = compile_one(policy(cascade=cascade))
    chat = config.routes[0]
    assert chat.cascade_tiers == expected_tiers
    assert [t.cascade_threshold for t in chat.tiers] == thresholds
    assert (config.cascade is not None) == cascade["enabled"]


def test_routing_resolution() -> None:
    config = compile_one(
        policy(
            routing={
                "complexity": {"enabled": True, "perTier": [{"tier": "small", "threshold": 0.8}]},
                "domains": [
                    {"name": "refunds", "tier": "large", "keywords": ["Refund", "CHARGEBACK"]}
                ],
            }
        )
    )
    assert config.routing.complexity is True
    assert [t.routing_threshold for t in config.routes[0].tiers] == [0.8, None]
    assert config.routing.domains[0].keywords == ["refund", "chargeback"]


# --- placement --------------------------------------------------------------

CAPACITY_TIER = {
    "tiers": [
        {
            "name": "small",
            "backends": [
                backend("od", capacity="on-demand"),
                backend("spot", capacity="spot"),
                backend("res", capacity="reserved"),
            ],
        }
    ]
}


@pytest.mark.parametrize(
    ("spot", "expected"),
    [
        ("prefer", {"res": 0, "spot": 1, "od": 2}),
        ("avoid", {"res": 0, "od": 1, "spot": 2}),
        ("only", {"spot": 0}),
    ],
)
def test_capacity_priorities(spot: str, expected: dict[str, int]) -> None:
    config = compile_one(policy(placement={"spot": spot}), route(**CAPACITY_TIER))
    backends = config.routes[0].tiers[0].backends
    assert {b.name: b.endpoints[0].priority for b in backends} == expected


def test_priorities_have_no_gaps() -> None:
    config = compile_one(
        policy(),
        route(tiers=[{"name": "small", "backends": [backend("a", capacity="spot"), backend("b")]}]),
    )
    assert [b.endpoints[0].priority for b in config.routes[0].tiers[0].backends] == [0, 1]


REGION_TIER = {
    "tiers": [
        {
            "name": "small",
            "backends": [
                backend("us", region="us-east-1"),
                backend("eu", region="eu-west-1"),
                backend("nowhere"),
            ],
        }
    ]
}


@pytest.mark.parametrize(
    ("region", "kept"),
    [
        ({"strategy": "cheapest"}, ["us", "eu", "nowhere"]),
        ({"strategy": "nearest"}, ["us", "eu", "nowhere"]),
        ({"strategy": "cheapest", "allowed": ["eu-west-1"]}, ["eu"]),
        ({"strategy": "pinned", "pinned": "us-east-1"}, ["us"]),
        (
            {"strategy": "pinned", "pinned": "us-east-1", "allowed": ["us-east-1", "eu-west-1"]},
            ["us"],
        ),
    ],
)
def test_region_filters(region: dict[str, Any], kept: list[str]) -> None:
    config = compile_one(policy(placement={"region": region}), route(**REGION_TIER))
    assert [b.name for b in config.routes[0].tiers[0].backends] == kept


SERVICE_TIER = {
    "tiers": [
        {
            "name": "small",
            "backends": [
                {
                    "name": "vllm",
                    "model": "llama",
                    "service": {"name": "vllm", "port": 8000},
                    "region": "declared",
                    "price": {"input": "0.05", "output": "0.08"},
                }
            ],
        }
    ]
}


def test_service_without_known_endpoints_uses_cluster_dns() -> None:
    config = compile_one(policy(), route(**SERVICE_TIER))
    [endpoint] = config.routes[0].tiers[0].backends[0].endpoints
    assert endpoint.url == "http://vllm.ns.svc.cluster.local:8000/v1"
    assert endpoint.region == "declared"


def test_service_endpoints_expand_with_node_locality() -> None:
    endpoints = {
        ("ns", "vllm", 8000): [
            ServiceEndpoint("10.0.0.2", 8080, "us-east-1", "us-east-1a", "on-demand"),
            ServiceEndpoint("10.0.0.1", 8080, "us-east-1", "us-east-1b", "spot"),
            ServiceEndpoint("fd00::1", 8080, "eu-west-1", None, "spot"),
        ]
    }
    config = compile_one(policy(), route(**SERVICE_TIER), endpoints=endpoints)
    got = [(e.url, e.zone, e.priority) for e in config.routes[0].tiers[0].backends[0].endpoints]
    assert got == [
        ("http://10.0.0.1:8080/v1", "us-east-1b", 0),
        ("http://[fd00::1]:8080/v1", None, 0),
        ("http://10.0.0.2:8080/v1", "us-east-1a", 1),
    ]
    eu_only = compile_one(
        policy(placement={"region": {"allowed": ["eu-west-1"]}}),
        route(**SERVICE_TIER),
        endpoints=endpoints,
    )
    assert [e.url for e in eu_only.routes[0].tiers[0].backends[0].endpoints] == [
        "http://[fd00::1]:8080/v1"
    ]


def test_service_with_no_ready_endpoint_keeps_its_backend() -> None:
    config = compile_one(policy(), route(**SERVICE_TIER), endpoints={("ns", "vllm", 8000): []})
    assert config.routes[0].tiers[0].backends[0].endpoints == []


# --- semantic errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("policies", "routes", "expected"),
    [
        (
            [policy(routes=("nope",))],
            [route()],
            ['CostPolicy ns/agent: spec.routes[0]: no ModelRoute "nope" in namespace ns'],
        ),
        (
            [policy(namespace="other")],
            [route()],
            ['CostPolicy other/agent: spec.routes[0]: no ModelRoute "chat" in namespace other'],
        ),
        (
            [policy()],
            [route(tiers=[{"name": "small", "backends": [backend("a", price=None)]}])],
            [
                'CostPolicy ns/agent: spec.routes[0]: ModelRoute "chat" has problems of its own',
                "ModelRoute ns/chat: spec.tiers[0].backends[0].price: missing price; metering "
                'and savings need input and output prices (write "0" for a free backend)',
            ],
        ),
        (
            [policy(routing={"domains": [{"name": "d", "tier": "huge", "keywords": ["x"]}]})],
            [route()],
            [
                "CostPolicy ns/agent: spec.routing.domains[0].tier: "
                'ModelRoute "chat" has no tier "huge" (it has small, large)'
            ],
        ),
        (
            [policy(cascade={"enabled": True, "tiers": ["large", "small"]})],
            [route()],
            [
                "CostPolicy ns/agent: spec.cascade.tiers: must list tiers cheapest first, "
                'in the order of ModelRoute "chat" (small, large)'
            ],
        ),
        (
            [policy(routing={"complexity": {"perTier": [{"tier": "x", "threshold": 0.1}]}})],
            [route()],
            [
                "CostPolicy ns/agent: spec.routing.complexity.perTier[0].tier: "
                'ModelRoute "chat" has no tier "x" (it has small, large)'
            ],
        ),
        (
            [policy(routing={"domains": [{"name": "d", "tier": "small", "examples": ["hi"]}]})],
            [route()],
            [
                "CostPolicy ns/agent: spec.routing.domains[0].examples: "
                'needs spec.embedding on ModelRoute "chat"'
            ],
        ),
        (
            [policy(budget={"amount": "10", "timeZone": "Not/AZone"})],
            [route()],
            ['CostPolicy ns/agent: spec.budget.timeZone: unknown time zone "Not/AZone"'],
        ),
    ],
)
def test_semantic_errors(
    policies: list[CostPolicy], routes: list[ModelRoute], expected: list[str]
) -> None:
    assert problems_of(policies, routes) == expected


def test_one_bad_policy_does_not_block_another() -> None:
    result = compile_configs([policy("good"), policy("bad", routes=("nope",))], [route()])
    assert list(result.configs) == ["ns/good"]
    assert len(result.problems) == 1


def test_semantic_cache_with_embedding_compiles() -> None:
    config = compile_one(
        policy(cache={"semantic": {"enabled": True}}), route(embedding={"provider": "local"})
    )
    assert config.routes[0].embedding is not None


# --- determinism ------------------------------------------------------------


def _many() -> tuple[list[CostPolicy], list[ModelRoute]]:
    routes = [route("chat"), route("code", defaultTier="small"), route("chat", namespace="b")]
    policies = [policy("p1", routes=("chat", "code")), policy("p2"), policy("p3", namespace="b")]
    return policies, routes


def test_same_input_same_bytes_and_versions_whatever_the_order() -> None:
    policies, routes = _many()
    first = compile_configs(policies, routes)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(policies)
        rng.shuffle(routes)
        again = compile_configs(policies, routes)
        assert {k: c.to_json() for k, c in again.configs.items()} == {
            k: c.to_json() for k, c in first.configs.items()
        }


def test_version_is_a_content_hash() -> None:
    policies, routes = _many()
    configs = compile_configs(policies, routes).configs
    # p2 and p3 differ only in namespace: the policy reference makes them differ.
    assert len({c.version for c in configs.values()}) == len(configs)
    changed = compile_configs([policy("p2", cache={"exact": {"ttl": "2h"}})], routes).configs
    assert changed["ns/p2"].version != configs["ns/p2"].version
    unchanged = compile_configs([policy("p2")], routes).configs
    assert unchanged["ns/p2"].version == configs["ns/p2"].version


def test_config_round_trips_and_refuses_a_tampered_version() -> None:
    config = compile_one(policy())
    data = config.to_json()
    assert SidecarConfig.from_json(data) == config
    assert SidecarConfig.from_json(data).to_json() == data
    tampered = data.replace(b'"maxEntries":10000', b'"maxEntries":1')
    assert tampered != data
    with pytest.raises(ValueError, match="does not match its content"):
        SidecarConfig.from_json(tampered)


def test_money_survives_the_round_trip_exactly() -> None:
    config = compile_one(policy(budget={"amount": "1234.567890123"}))
    assert dump(SidecarConfig.from_json(config.to_json()))["budget"]["amount"] == "1234.567890123"


def test_pass_through_keeps_routes_and_drops_every_optimisation() -> None:
    config = compile_one(
        policy(
            cache={"semantic": {"enabled": True}},
            cascade={"enabled": True},
            output={"maxTokens": 10},
            budget={"amount": "5"},
            routing={"complexity": {"enabled": True}},
        ),
        route(embedding={"provider": "local"}),
    )
    plain = config.pass_through()
    assert [r.model_dump() for r in plain.routes] == [
        r.model_copy(update={"cascade_tiers": []}).model_dump() for r in config.routes
    ]
    assert (plain.cache.exact.enabled, plain.cache.semantic.enabled) == (False, False)
    assert plain.cascade is None
    assert plain.routing.complexity is False
    assert plain.output.max_tokens is None
    assert plain.budget is None
    assert plain.version != config.version
    assert SidecarConfig.from_json(plain.to_json()) == plain  # a valid, self-consistent config


# --- fields without effect ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "notices"),
    [
        ({}, []),
        ({"batching": {"enabled": False, "maxBatchSize": 8}}, []),  # off: nothing claimed
        ({"batching": {"enabled": True}}, []),  # acted on: the pack stage
        (
            {"tools": {"upstreams": [{"name": "weather", "url": "http://weather"}]}},
            ["spec.tools.enabled: is false: the tool proxy is off and its paths answer 404"],
        ),
        (  # on: acted on by the tool proxy
            {"tools": {"enabled": True, "upstreams": [{"name": "w", "url": "http://weather"}]}},
            [],
        ),
        ({"prompt": {"maxInputTokens": 10}}, []),  # acted on: the trim stage refuses
        ({"tools": {"pruning": {"enabled": True}}}, []),  # acted on: the prune-tools stage
    ],
)
def test_fields_without_effect_are_noticed_and_the_policy_still_compiles(
    spec: dict[str, Any], notices: list[str]
) -> None:
    result = compile_configs([policy(**spec)], [route(embedding={"provider": "local"})])
    assert result.problems == []
    assert "ns/agent" in result.configs
    assert [f"{n.field}: {n.reason}" for n in result.notices] == notices
    assert all(str(n).startswith("CostPolicy ns/agent: ") for n in result.notices)


def test_tool_pruning_compiles_and_needs_the_routes_embedder() -> None:
    spec = {"tools": {"pruning": {"enabled": True, "minTools": 8, "keepShare": 0.3}}}
    local = route(embedding={"provider": "local"})
    config = compile_configs([policy(**spec)], [local]).configs["ns/agent"]
    assert config.tool_pruning is not None
    assert (config.tool_pruning.min_tools, config.tool_pruning.keep_share) == (8, 0.3)
    assert compile_one(policy(), route()).tool_pruning is None
    result = compile_configs([policy(**spec)], [route()])
    assert [p.field for p in result.problems] == ["spec.tools.pruning.enabled"]


def test_the_tool_proxy_compiles_durations_fields_and_prices() -> None:
    tools = {
        "enabled": True,
        "upstreams": [{"name": "weather", "url": "http://weather/api/", "ttl": "90s",
                       "fields": ["city"], "pricePerCall": "0.002"}],
        "mcpServers": [{"name": "orders", "url": "http://orders:8000/mcp", "ttl": "0",
                        "timeout": "2s", "allow": ["b", "a", "a"],
                        "results": [{"tool": "a", "fields": ["id", "items.sku"]}]}],
    }  # fmt: skip
    config = compile_one(policy(tools=tools), route())
    assert config.tools is not None
    (weather,) = config.tools.upstreams
    assert (weather.url, weather.ttl_seconds, weather.timeout_seconds) == (
        "http://weather/api",
        90,
        30,
    )
    assert weather.price_per_call == Decimal("0.002")
    (orders,) = config.tools.mcp_servers
    assert (orders.ttl_seconds, orders.timeout_seconds, orders.allow) == (0, 2, ["a", "b"])
    assert orders.results == {"a": ["id", "items.sku"]}
    # A deleted policy's pass-through keeps the tools reachable, uncached and untrimmed.
    plain = config.pass_through()
    assert plain.tools is not None
    assert plain.tools.upstreams[0].ttl_seconds == 0
    assert plain.tools.upstreams[0].fields == []
    assert plain.tools.mcp_servers[0].results == {}
    assert compile_one(policy(tools={**tools, "enabled": False}), route()).tools is None


@pytest.mark.parametrize(
    "tools",
    [
        {"upstreams": [{"name": "w", "url": "http://a"}, {"name": "w", "url": "http://b"}]},
        {"mcpServers": [{"name": "m", "url": "http://a"}, {"name": "m", "url": "http://b"}]},
        {"mcpServers": [{"name": "m", "url": "http://a", "timeout": "0"}]},
        {"upstreams": [{"name": "w", "url": "ftp://a"}]},
    ],
)
def test_bad_tool_proxies_are_refused(tools: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        policy(tools={"enabled": True, **tools})
